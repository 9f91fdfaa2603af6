"""`/prsm/pex/1.0.0`: peer exchange, the way B and C find each other through A until the DHT.

Request: `{"addrs": [our listen multiaddrs with /p2p]}`; answer: `{"addrs": [...], "peers":
[addresses of the peers the answerer is connected to]}`. Both sides learn the other's listen
addresses this way (an inbound connection shows only an ephemeral port). Every address is
checked: at most `addrs_max` per answer, each a string that ends in the sender's or a third
peer's /p2p id and is at most ADDRESS_BYTES_MAX long; anything else is the peer's fault.
"""

from __future__ import annotations

from typing import Any

from prsm_node.errors import PeerProtocolError
from prsm_node.net.peerbook import peer_id_of_address

PEX_PROTOCOL = "/prsm/pex/1.0.0"
ADDRESS_BYTES_MAX = 256


def checked_addresses(peer: str, value: Any, addrs_max: int, *, own: bool) -> list[str]:
    """The addresses in `value`, or PeerProtocolError; `own` ones must name `peer` itself."""
    if not isinstance(value, list) or len(value) > addrs_max:
        raise PeerProtocolError(peer, f"pex: expected a list of at most {addrs_max} addresses")
    addresses = []
    for address in value:
        if not isinstance(address, str) or len(address) > ADDRESS_BYTES_MAX:
            raise PeerProtocolError(peer, "pex: address is not a short string")
        try:
            owner = peer_id_of_address(address)
        except ValueError as error:
            raise PeerProtocolError(peer, f"pex: {error}") from None
        if own and owner != peer:
            raise PeerProtocolError(peer, "pex: announced an address of another peer as its own")
        if not address.startswith(("/ip4/", "/ip6/", "/dns")):
            raise PeerProtocolError(peer, f"pex: unsupported address {address!r}")
        addresses.append(address)
    return addresses


def parse_request(peer: str, payload: Any, addrs_max: int) -> list[str]:
    if not isinstance(payload, dict) or set(payload) != {"addrs"}:
        raise PeerProtocolError(peer, "pex: request must be {'addrs': [...]}")
    return checked_addresses(peer, payload["addrs"], addrs_max, own=True)


def parse_answer(peer: str, payload: Any, addrs_max: int) -> tuple[list[str], list[str]]:
    if not isinstance(payload, dict) or set(payload) != {"addrs", "peers"}:
        raise PeerProtocolError(peer, "pex: answer must be {'addrs': [...], 'peers': [...]}")
    own = checked_addresses(peer, payload["addrs"], addrs_max, own=True)
    return own, checked_addresses(peer, payload["peers"], addrs_max, own=False)
