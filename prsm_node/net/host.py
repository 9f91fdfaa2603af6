"""Building the libp2p host: TCP, Noise, Yamux, our Ed25519 key, an explicit connection limit.

Why these settings (DESIGN.md, measured on py-libp2p 0.8.1):
- `sec_opt` names Noise alone. The library's default also offers secio and *plaintext*,
  which a node must never accept.
- `muxer_opt` names Yamux alone, and every connection gets `WholeFrameYamux`
  (`prsm_node.net.muxer`): the library's Yamux lets a cancelled caller burn a Noise nonce
  or send half a frame, which kills the connection. Mplex (the library's fallback) is
  not offered.
- `max_connections_per_peer=1`, or every `connect()` waits ~250 ms.
- every dial goes through `dial()`, which first clears the swarm's negative cache for the
  peer: after one failed dial py-libp2p 0.8.1 refuses to dial that peer again for 60 s
  ("recently failed all addresses"), so a bootstrap peer that starts late, or restarts,
  would stay unreachable for a minute whatever our backoff says. The peer book owns
  retry timing.
- the library's auto-connector is switched off: from 0.8 it dials peerstore entries until
  half of `high_watermark` is reached, which would redial banned peers and every address
  the DHT ever saw. The peer book decides whom to dial; the pruner stays, at `peers_max`.
- yamux returns a stream's receive window once half of it has been read, as go-yamux
  does, not after every read (`network.yamux_window_update_every_read`, default off;
  `prsm_node/net/muxer.py` installs it per stream: py-libp2p 0.8.1's own switch,
  `PY_YAMUX_RELEASE_ON_READ=0`, still sent one after nearly every read). Every read
  otherwise sends a WINDOW_UPDATE, each one Noise-encrypted and written by both sides'
  event loops. Measured (BENCHMARKS.md): with the switch, one bulk stream's sender
  0.36-0.37 CPU s per 100 MB instead of 0.50-0.52, a 3-provider fetch of 100 MB 59 MB/s
  instead of 47-52 (storage, 2026-11-26); with the per-stream rule, a 200-byte message
  and its handling ~375 us of CPU instead of ~580 (session 6).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import structlog
import trio
from libp2p import new_host
from libp2p.abc import INotifee
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from multiaddr import Multiaddr

from prsm_node.config import NetworkConfig
from prsm_node.errors import ListenError
from prsm_node.identity import libp2p_key_pair
from prsm_node.net import muxer

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    peer_id: str
    connected: bool
    direction: str  # "inbound" | "outbound" | "unknown"
    connection: Any


class _ConnectionNotifee(INotifee):
    """Forwards connect/disconnect to a channel; never blocks the swarm."""

    def __init__(self, channel: trio.MemorySendChannel[ConnectionEvent]) -> None:
        self._channel = channel

    async def connected(self, network: Any, conn: Any) -> None:
        self._forward(conn, connected=True)

    async def disconnected(self, network: Any, conn: Any) -> None:
        self._forward(conn, connected=False)

    def _forward(self, conn: Any, *, connected: bool) -> None:
        direction = getattr(getattr(conn, "direction", None), "name", "unknown").lower()
        event = ConnectionEvent(conn.muxed_conn.peer_id.to_base58(), connected, direction, conn)
        # The channel holds 4x peers_max events and the node drains it continuously;
        # a full channel means the node is wedged, which is our bug: let it raise.
        self._channel.send_nowait(event)

    async def opened_stream(self, network: Any, stream: Any) -> None:
        pass

    async def closed_stream(self, network: Any, stream: Any) -> None:
        pass

    async def listen(self, network: Any, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        pass


def build_host(
    seed: bytes, config: NetworkConfig, events: trio.MemorySendChannel[ConnectionEvent]
) -> Any:
    key_pair = libp2p_key_pair(seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    connection_config = ConnectionConfig(
        max_connections=config.peers_max,
        high_watermark=config.peers_max,
        low_watermark=0,
        min_connections=0,
        max_connections_per_peer=1,
        dial_timeout=config.dial_timeout_ms / 1000,
    )
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
        connection_config=connection_config,
    )
    muxer.install(host, half_window_credit=not config.yamux_window_update_every_read)
    network = host.get_network()
    network.register_notifee(_ConnectionNotifee(events))
    network.auto_connector.maybe_connect = _never_auto_connect  # see the module header
    return host


async def _never_auto_connect() -> None:
    return None


async def dial(host: Any, address: str) -> str:
    """Connect to a full multiaddr (with /p2p/<id>); returns the peer id. Raises what
    libp2p raises for a failed dial; the caller bounds the time."""
    info = info_from_p2p_addr(Multiaddr(address))
    host.get_network().unblock_peer(info.peer_id)  # see the module header
    await host.connect(info)
    return info.peer_id.to_base58()


async def dial_first(host: Any, peer: str, addresses: Iterable[str], *,
                     timeout_s: float) -> str | None:
    """Dial `peer` through the first of `addresses` that works, each under `timeout_s`
    (`/p2p/<peer>` appended where it is missing); the address that worked, or None."""
    suffix = f"/p2p/{peer}"
    for address in addresses:
        if not address.endswith(suffix):
            address += suffix
        with trio.move_on_after(timeout_s):
            try:
                await dial(host, address)
            except Exception as error:  # libp2p raises many unrelated types on a dial
                log.debug("net.dial_failed", peer=peer, address=address, error=str(error))
                continue
            return address
    return None


async def listen(host: Any, addresses: list[str]) -> None:
    """Listen on every address of `network.listen`, or raise ListenError naming the first
    that failed: py-libp2p only logs a failed listener and runs on unreachable.

    The daemon calls this after its services have registered their protocols (a peer
    that connected earlier had its streams refused: a dialler's DHT bootstrap request got
    "protocol not supported" and the node stayed out of the other's table)."""
    network = host.get_network()
    for text in addresses:
        address = Multiaddr(text)
        if not await network.listen(address):
            raise ListenError(f"cannot listen on {text} (network.listen): "
                              f"{_bind_failure(address)}")


def _bind_failure(address: Multiaddr) -> str:
    """Why a TCP address cannot be bound, asked of the OS (libp2p gives only a bool)."""
    try:
        ip, port = address.value_for_protocol("ip4"), int(address.value_for_protocol("tcp"))
    except Exception:  # not /ip4/.../tcp/...: no probe for it
        return "the transport refused it"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError as error:
            return error.strerror or str(error)
    return "the transport refused it"
