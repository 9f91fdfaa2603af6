"""A synchronous control-API client over the node's Unix socket.

Rules of this file:
1. Standard library only (socket, json): `prsm-node status` imports it and must start in
   milliseconds, so no trio, no structlog, no libp2p.
2. Everything is bounded: each call has a deadline (`timeout_s`, over the whole exchange,
   not per read) and a reply may be at most `reply_size_max` bytes.
3. One request at a time on one connection, opened on first use and kept for the next call
   (a benchmark-grade round trip needs no new connect); after any connection trouble it is
   closed and the next call opens a new one. A call is never retried by itself: methods such
   as `peers_connect` are not idempotent.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from types import TracebackType

from prsm_node.control.protocol import JSONRPC_VERSION, encode, expects_reply

__all__ = [
    "REPLY_SIZE_MAX",
    "ControlClient",
    "ControlClientError",
    "ControlConnectionError",
    "NodeNotRunning",
    "RpcCallError",
]

# Replies such as a long peers list can be large; this bounds the client's memory all the same.
REPLY_SIZE_MAX = 64 * 1024 * 1024

_RECEIVE_CHUNK_BYTES = 256 * 1024


class ControlClientError(Exception):
    """Base of the client's errors: catch this to report any failed control call."""


class NodeNotRunning(ControlClientError):
    """No node answers at the socket: it is missing or nothing listens on it."""

    def __init__(self, socket_path: Path, reason: str = "not found") -> None:
        self.socket_path = Path(socket_path)
        self.data_dir = self.socket_path.parent
        self.reason = reason
        super().__init__(
            f"no node is running at {self.data_dir} (socket {self.socket_path} {reason})"
        )


class ControlConnectionError(ControlClientError):
    """The connection failed or the node's reply was unusable (timeout, too large, not JSON)."""


class RpcCallError(ControlClientError):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: object = None) -> None:
        self.code = code
        self.message = message
        self.data = data
        super().__init__(f"{message} (error {code})")


class ControlClient:
    """JSON-RPC calls to a node's control socket; use as a context manager or call close()."""

    def __init__(
        self,
        socket_path: Path | str,
        timeout_s: float = 10.0,
        *,
        reply_size_max: int = REPLY_SIZE_MAX,
    ) -> None:
        if timeout_s <= 0 or reply_size_max < 1:
            raise ValueError("timeout_s and reply_size_max must be positive")
        self.socket_path = Path(socket_path)
        self.timeout_s = timeout_s
        self.reply_size_max = reply_size_max
        self._sock: socket.socket | None = None
        self._pending = bytearray()  # bytes read past the last reply's newline
        self._next_id = 1

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._pending.clear()

    def call(self, method: str, params: dict[str, object] | list[object] | None = None) -> object:
        """The result of `method`; RpcCallError if the node answers with an error."""
        request_id = self._next_id
        self._next_id += 1
        request: dict[str, object] = {
            "jsonrpc": JSONRPC_VERSION,
            "id": request_id,
            "method": method,
        }
        if params is not None:
            request["params"] = params
        reply = self.call_raw(request)
        if not isinstance(reply, dict) or ("result" in reply) == ("error" in reply):
            raise ControlConnectionError(f"the node sent a malformed reply: {reply!r:.200}")
        if "error" in reply and reply.get("id") in (request_id, None):
            error = reply["error"]
            if not isinstance(error, dict):
                raise ControlConnectionError(f"the node sent a malformed error: {error!r:.200}")
            raise RpcCallError(
                error.get("code", 0), str(error.get("message", "")), error.get("data")
            )
        if reply.get("id") != request_id:
            self.close()
            raise ControlConnectionError(
                f"reply id {reply.get('id')!r} does not match request id {request_id}"
            )
        return reply["result"]

    def call_raw(self, payload: object) -> object:
        """Send any JSON value as one line; the decoded reply, or None when none is due.

        Whether a reply is due follows the spec (a valid notification, or a batch of only
        those, gets none), decided by the same rules as the server (protocol.py).
        Raises ValueError if `payload` cannot be encoded as JSON.
        """
        try:
            line = encode(payload)
        except (TypeError, ValueError, RecursionError) as error:
            raise ValueError(f"payload is not encodable as JSON: {error}") from None
        deadline = time.monotonic() + self.timeout_s
        try:
            sock = self._connected()
            self._send(sock, line + b"\n", deadline)
            if not expects_reply(json.loads(line)):
                return None
            reply_line = self._read_line(sock, deadline)
        except ControlClientError:
            self.close()
            raise
        try:
            reply = json.loads(reply_line)
        except ValueError:
            self.close()
            raise ControlConnectionError(
                f"the node sent a reply that is not JSON: {reply_line[:200]!r}"
            ) from None
        if isinstance(reply, dict) and reply.get("id", 0) is None:
            self.close()  # a connection-level error (busy, request too large): the node hangs up
        return reply

    def _connected(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(str(self.socket_path))
        except FileNotFoundError:
            sock.close()
            raise NodeNotRunning(self.socket_path, "not found") from None
        except ConnectionRefusedError:
            sock.close()
            raise NodeNotRunning(self.socket_path, "refused the connection") from None
        except PermissionError:
            sock.close()
            raise ControlConnectionError(
                f"permission denied on {self.socket_path}: the socket is mode 0600, "
                "so run this as the user that runs the node"
            ) from None
        except OSError as error:
            sock.close()
            raise ControlConnectionError(f"cannot connect to {self.socket_path}: {error}") from None
        self._sock = sock
        return sock

    def _send(self, sock: socket.socket, data: bytes, deadline: float) -> None:
        """Send all of `data`; if the node hangs up midway, its reply may still be readable.

        The node closes a connection whose request is over its size cap after writing an error
        line, so a broken pipe here is not final: the caller goes on to read that line.
        """
        try:
            sock.settimeout(_remaining(deadline, self.timeout_s))
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return
        except TimeoutError:
            raise ControlConnectionError(
                f"the node did not accept the request within {self.timeout_s} s"
            ) from None
        except OSError as error:
            raise ControlConnectionError(f"sending to {self.socket_path} failed: {error}") from None

    def _read_line(self, sock: socket.socket, deadline: float) -> bytes:
        """One reply line without its newline, at most reply_size_max bytes."""
        buffer = self._pending
        scanned = 0
        while True:
            newline = buffer.find(b"\n", scanned)
            if newline >= 0:
                line = bytes(buffer[:newline])
                del buffer[: newline + 1]
                return line
            scanned = len(buffer)
            if len(buffer) > self.reply_size_max:
                raise ControlConnectionError(f"reply over {self.reply_size_max} bytes")
            room = self.reply_size_max + 1 - len(buffer)
            chunk = self._receive(sock, min(_RECEIVE_CHUNK_BYTES, room), deadline)
            if not chunk:
                raise ControlConnectionError("the node closed the connection without replying")
            buffer += chunk

    def _receive(self, sock: socket.socket, size: int, deadline: float) -> bytes:
        try:
            sock.settimeout(_remaining(deadline, self.timeout_s))
            return sock.recv(size)
        except TimeoutError:
            raise ControlConnectionError(
                f"no reply from the node within {self.timeout_s} s"
            ) from None
        except ConnectionResetError:
            return b""
        except OSError as error:
            raise ControlConnectionError(
                f"reading from {self.socket_path} failed: {error}"
            ) from None


def _remaining(deadline: float, timeout_s: float) -> float:
    """Seconds left before `deadline`, raising the same timeout error once it has passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return min(remaining, timeout_s)
