"""A real libp2p host (TCP + Noise + Yamux on 127.0.0.1, from `build_host`) with a bound
Wire: what the network tests and the hostile-peer tests stand up instead of a node."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import trio
from multiaddr import Multiaddr
from nacl.signing import SigningKey

from prsm_node.config import NetworkConfig
from prsm_node.net.host import build_host
from prsm_node.net.scores import PeerScores
from prsm_node.net.wire import Wire

LISTEN = Multiaddr("/ip4/127.0.0.1/tcp/0")


@contextlib.asynccontextmanager
async def wired_host(network: NetworkConfig | None = None, *, frame_size_max: int = 1 << 20,
                     scores: PeerScores | None = None) -> AsyncIterator[tuple[Any, Wire]]:
    """(host, wire), the host listening on a free port; everything stops on exit."""
    network = replace(network or NetworkConfig(), listen=("/ip4/127.0.0.1/tcp/0",))
    host = build_host(bytes(SigningKey.generate()), network, trio.open_memory_channel(256)[0])
    async with host.run(listen_addrs=[LISTEN]), trio.open_nursery() as nursery:
        wire = Wire(host, frame_size_max=frame_size_max, request_timeout_s=10,
                    inbound_requests_max=8, scores=scores or PeerScores())
        wire.bind(nursery)
        yield host, wire
        nursery.cancel_scope.cancel()
