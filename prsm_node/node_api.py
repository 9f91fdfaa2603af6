"""The control methods of the node foundation: node_info, peers_list, peers_connect,
peers_ping, node_statistics, node_shutdown. Each is documented in docs/control-api.md.

Handlers only read the node context and call its services; every failure a user can act on
is an RpcError with a message that says what to do.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import trio

from prsm_node import __version__
from prsm_node.config import multiaddr_problem
from prsm_node.control import Dispatcher, ErrorCode, Param, RpcError
from prsm_node.net.wire import RequestFailed

if TYPE_CHECKING:
    from prsm_node.daemon import NodeContext


def register_node_methods(dispatcher: Dispatcher, context: NodeContext) -> None:
    async def node_info() -> dict[str, Any]:
        return {
            "peer_id": context.peer_id(),
            "listen_addrs": context.listen_addresses(),
            "version": __version__,
            "uptime_s": round(time.monotonic() - context.started_monotonic, 3),
            "data_dir": str(context.data_dir.root),
            "pid": os.getpid(),
        }

    async def peers_list() -> dict[str, Any]:
        return {"peers": [asdict(info) for info in context.peers.peers()]}

    async def peers_connect(multiaddr: str) -> dict[str, Any]:
        problem = multiaddr_problem(multiaddr, need_peer_id=True)
        if problem:
            raise RpcError(ErrorCode.INVALID_PARAMS, f"param 'multiaddr': {problem}")
        try:
            peer_id = await context.peers.connect(multiaddr)
        except trio.TooSlowError:
            raise RpcError(
                ErrorCode.PEER_CONNECT_FAILED,
                f"could not connect to {multiaddr}: no answer within "
                f"{context.config.network.dial_timeout_ms} ms",
            ) from None
        except Exception as error:  # libp2p raises many unrelated types for a failed dial
            raise RpcError(
                ErrorCode.PEER_CONNECT_FAILED, f"could not connect to {multiaddr}: {error}"
            ) from None
        return {"peer_id": peer_id, "connected": True}

    async def peers_ping(peer_id: str) -> dict[str, Any]:
        if peer_id not in {info.peer_id for info in context.peers.peers()}:
            raise RpcError(ErrorCode.NODE_ERROR, f"not connected to peer {peer_id}")
        try:
            rtt_ms = await context.peers.ping(peer_id)
        except RequestFailed as error:
            raise RpcError(ErrorCode.NODE_ERROR, str(error)) from None
        if rtt_ms is None:
            raise RpcError(ErrorCode.NODE_ERROR, f"peer {peer_id} did not answer the ping")
        return {"peer_id": peer_id, "rtt_ms": round(rtt_ms, 3)}

    async def node_statistics() -> dict[str, Any]:
        return {
            "peers_connected": len(context.peers.peers()),
            "peers_known": len(context.peers.book),
            "connections_refused": context.peers.connections_refused,
            "dials_failed": context.peers.dials_failed,
            "churn": {
                "dials": context.peers.dials,
                "connections_opened": context.peers.connections_opened,
                "connections_closed": context.peers.connections_closed,
                "peers_lost": context.peers.peers_lost,
            },
            "scores": asdict(context.scores.statistics()),
            "wire": context.wire.statistics(),
            "ledger": context.ledger.statistics(),
            "jobs": context.jobs.statistics(),
            "event_loop": (context.loop_monitor.statistics()
                           if context.loop_monitor is not None else None),
        }

    async def node_shutdown() -> dict[str, Any]:
        context.shutdown_requested.set()
        return {"stopping": True}

    dispatcher.register("node_info", node_info)
    dispatcher.register("node_statistics", node_statistics)
    dispatcher.register("node_shutdown", node_shutdown)
    dispatcher.register("peers_list", peers_list)
    dispatcher.register("peers_connect", peers_connect, [Param("multiaddr", str)])
    dispatcher.register("peers_ping", peers_ping, [Param("peer_id", str)])
