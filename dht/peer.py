"""Peer descriptors shared by the routing table, lookups and messages.

Rules:
1. A peer is named by its libp2p peer id bytes; its DHT key is ``sha256(peer_id)``,
   computed once when the descriptor is built.
2. Addresses are opaque strings (multiaddrs in the node, ``sim://N`` in the simulator);
   the core never dials them, it only passes them on.
3. Sizes are bounded when built, so every ``PeerInfo`` in memory obeys the wire limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dht.keys import key_from_bytes

PEER_ID_SIZE_MAX = 64
"""Bytes. A libp2p Ed25519 peer id is 38 bytes (identity multihash of the protobuf key);
64 leaves room for other key types while keeping tables small."""

ADDRS_MAX = 8
"""Addresses kept per peer; go-libp2p's peerstore caps addresses similarly per peer."""

ADDR_SIZE_MAX = 256
"""Characters per multiaddr string; real ones are under 100."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerInfo:
    """A peer id with the addresses it can be reached at."""

    peer_id: bytes
    addrs: tuple[str, ...] = ()
    key: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < len(self.peer_id) <= PEER_ID_SIZE_MAX:
            raise ValueError("peer id size out of range")
        if len(self.addrs) > ADDRS_MAX:
            raise ValueError("too many addresses")
        for addr in self.addrs:
            if not isinstance(addr, str) or len(addr) > ADDR_SIZE_MAX:
                raise ValueError("bad address")
        object.__setattr__(self, "key", key_from_bytes(self.peer_id))

    def to_wire(self) -> list[object]:
        """``[peer_id, [addr, ...]]``: compact and msgpack-able."""
        return [self.peer_id, list(self.addrs)]
