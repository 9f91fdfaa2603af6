"""The node's control API: JSON-RPC 2.0 over `<data_dir>/node.sock` (docs/control-api.md).

- `protocol`: message rules and error codes shared by both sides (stdlib only);
- `jsonrpc`: `Dispatcher`, method registration and dispatch, no sockets;
- `server`: `serve_control`, the trio Unix-socket server;
- `client`: `ControlClient`, the synchronous client the CLI uses (stdlib only).

The client and protocol names are imported eagerly; the server side (trio, structlog) only
when first used (PEP 562 `__getattr__`), because importing `prsm_node.control.client` runs
this file first and the CLI must not pay for trio to print `prsm-node status`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from prsm_node.control.client import (
    ControlClient,
    ControlClientError,
    ControlConnectionError,
    NodeNotRunning,
    RpcCallError,
)
from prsm_node.control.protocol import BATCH_SIZE_MAX, ErrorCode, RpcError

if TYPE_CHECKING:
    from prsm_node.control.jsonrpc import REQUIRED, Dispatcher, Handler, Param
    from prsm_node.control.server import ControlSocketError, serve_control

_LAZY = {
    "REQUIRED": "prsm_node.control.jsonrpc",
    "Dispatcher": "prsm_node.control.jsonrpc",
    "Handler": "prsm_node.control.jsonrpc",
    "Param": "prsm_node.control.jsonrpc",
    "ControlSocketError": "prsm_node.control.server",
    "serve_control": "prsm_node.control.server",
}

__all__ = [
    "BATCH_SIZE_MAX",
    "REQUIRED",
    "ControlClient",
    "ControlClientError",
    "ControlConnectionError",
    "ControlSocketError",
    "Dispatcher",
    "ErrorCode",
    "Handler",
    "NodeNotRunning",
    "Param",
    "RpcCallError",
    "RpcError",
    "serve_control",
]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
