"""Control methods of the DHT: dht_find_peer, dht_put, dht_get, dht_provide, dht_providers,
dht_table. Each is documented in docs/control-api.md.

Keys a user names: a bare NAME means our own registry key `/registry/<our key hex>/NAME`;
a full key (`/registry/<hex>/<name>` or `/pk/<hex>`) is taken as given, and only keys in
our own namespace can be put (the DHT accepts a record only if the key it names signed it).
Registry values are msgpack maps: a JSON object is stored as one, any other text as
`{"value": text}`. Record sequence numbers are Unix milliseconds, so a later put from the
same node always replaces an earlier one.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import msgpack
from cid import make_cid
from libp2p.peer.id import ID

from dht import node_effects as fx
from dht.keys import key_from_bytes
from dht.lookup import LookupResult
from dht.peer import PeerInfo
from dht.records import RecordBody, SignedRecord, pk_key, registry_key, sign_record
from prsm_node.control import Dispatcher, ErrorCode, Param, RpcError
from prsm_node.dht_service import DhtService, unix_ms

KEY_TEXT_MAX = 512


def register_dht_methods(dispatcher: Dispatcher, dht: DhtService) -> None:
    DhtMethods(dht).register(dispatcher)


class DhtMethods:
    """The dht_* control methods, bound to the node's DHT service."""

    def __init__(self, dht: DhtService) -> None:
        self._dht = dht

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register("dht_find_peer", self.dht_find_peer, [Param("peer_id", str)])
        dispatcher.register("dht_put", self.dht_put, [Param("key", str), Param("value", str)])
        dispatcher.register("dht_get", self.dht_get, [Param("key", str)])
        dispatcher.register("dht_provide", self.dht_provide, [Param("cid", str)])
        dispatcher.register("dht_providers", self.dht_providers, [Param("cid", str)])
        dispatcher.register("dht_table", self.dht_table)

    async def dht_find_peer(self, peer_id: str) -> dict[str, Any]:
        target = _peer_bytes(peer_id)
        if target == self._dht.core.own.peer_id:
            raise RpcError(ErrorCode.INVALID_PARAMS, "param 'peer_id': that is this node itself")
        result = _lookup(
            await self._dht.command(
                lambda c: fx.FindNode(command_id=c, target=key_from_bytes(target))
            )
        )
        match = next((peer for peer in result.closest if peer.peer_id == target), None)
        return {
            "peer_id": peer_id,
            "found": match is not None,
            "addrs": list(match.addrs) if match else [],
            **_lookup_figures(result),
        }

    async def dht_put(self, key: str, value: str) -> dict[str, Any]:
        key_bytes = _own_key(key, self._dht.signer.public_key)
        now = unix_ms()
        body = RecordBody(
            key=key_bytes,
            value=_encode_value(key_bytes, value),
            seq=now,
            expires_at_ms=now + self._dht.core.config.record_ttl_ms,
            publisher=self._dht.core.own.peer_id,
        )
        result = await self._dht.command(
            lambda c: fx.PutValue(command_id=c, record=sign_record(body, self._dht.signer))
        )
        if isinstance(result, fx.CommandFailed):
            raise RpcError(ErrorCode.NODE_ERROR, f"dht put failed: {result.reason}")
        assert isinstance(result, fx.StoreResult)
        return {
            "key": key_bytes.decode(),
            "seq": body.seq,
            "expires_at_ms": body.expires_at_ms,
            "peers_sent": result.peers_sent,
            **_lookup_figures(result.lookup),
        }

    async def dht_get(self, key: str) -> dict[str, Any]:
        key_bytes = _any_key(key, self._dht.signer.public_key)
        result = _lookup(
            await self._dht.command(lambda c: fx.GetValue(command_id=c, key=key_bytes))
        )
        record = result.record
        answer: dict[str, Any] = {"key": key_bytes.decode(), "found": record is not None}
        if record is not None:
            answer |= _record_fields(record)
        return answer | _lookup_figures(result)

    async def dht_provide(self, cid: str) -> dict[str, Any]:
        result = await self._dht.command(lambda c: fx.Provide(command_id=c, key=_cid_key(cid)))
        if isinstance(result, fx.CommandFailed):
            raise RpcError(ErrorCode.NODE_ERROR, f"dht provide failed: {result.reason}")
        assert isinstance(result, fx.StoreResult)
        return {"cid": cid, "peers_sent": result.peers_sent, **_lookup_figures(result.lookup)}

    async def dht_providers(self, cid: str) -> dict[str, Any]:
        result = _lookup(
            await self._dht.command(lambda c: fx.GetProviders(command_id=c, key=_cid_key(cid)))
        )
        providers = [_peer_json(peer) for peer in result.providers]
        return {"cid": cid, "providers": providers, **_lookup_figures(result)}

    async def dht_table(self) -> dict[str, Any]:
        statistics = self._dht.core.statistics()
        routing = statistics.routing
        return {
            "peers_total": routing.peers_total,
            "buckets": [{"index": i, "peers": n} for i, n in routing.bucket_occupancy],
            "replacements_total": routing.replacements_total,
            "peers": [
                _peer_json(peer)
                for peer in self._dht.core.table.closest(self._dht.core.own.key, 1 << 16)
            ],
            "records_stored": len(self._dht.core.records),
            "provider_keys": self._dht.core.providers.keys(),
            "counters": dict(statistics.counters),
            "hostile_by_reason": dict(statistics.hostile_by_reason),
        }


def _lookup(result: fx.CommandResult) -> LookupResult:
    if isinstance(result, fx.CommandFailed):
        raise RpcError(ErrorCode.NODE_ERROR, f"dht lookup failed: {result.reason}")
    assert isinstance(result, LookupResult)
    return result


def _lookup_figures(result: LookupResult) -> dict[str, Any]:
    return {
        "completed": result.completed,
        "rounds": result.rounds,
        "peers_contacted": result.peers_contacted,
        "duration_ms": result.finished_ms - result.started_ms,
    }


def _peer_json(peer: PeerInfo) -> dict[str, Any]:
    return {"peer_id": ID(peer.peer_id).to_base58(), "addrs": list(peer.addrs)}


def _peer_bytes(peer_id: str) -> bytes:
    try:
        return ID.from_base58(peer_id).to_bytes()
    except Exception:  # base58 and multihash decoders raise several unrelated types
        raise RpcError(
            ErrorCode.INVALID_PARAMS, f"param 'peer_id': not a peer id: {peer_id!r}"
        ) from None


def _cid_key(cid: str) -> bytes:
    try:
        return make_cid(cid).buffer
    except Exception:  # py-cid raises ValueError, KeyError and others for bad input
        raise RpcError(ErrorCode.INVALID_PARAMS, f"param 'cid': not a CID: {cid!r}") from None


def _any_key(key: str, own_public: bytes) -> bytes:
    if len(key) > KEY_TEXT_MAX:
        raise RpcError(ErrorCode.INVALID_PARAMS, f"param 'key': longer than {KEY_TEXT_MAX}")
    if key.startswith("/"):
        return key.encode()
    if not key or "/" in key:
        raise RpcError(ErrorCode.INVALID_PARAMS, "param 'key': a bare name has no '/'")
    return registry_key(own_public, key)


def _own_key(key: str, own_public: bytes) -> bytes:
    key_bytes = _any_key(key, own_public)
    own_registry = registry_key(own_public, "")
    if key_bytes != pk_key(own_public) and not key_bytes.startswith(own_registry):
        raise RpcError(
            ErrorCode.INVALID_PARAMS,
            f"param 'key': can only put keys this node signs: {own_registry.decode()}<name> "
            f"or {pk_key(own_public).decode()}",
        )
    return key_bytes


def _encode_value(key: bytes, value: str) -> bytes:
    if key.startswith(b"/pk/"):
        return value.encode()
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict) or _has_float(parsed):
        parsed = {"value": value}
    return msgpack.packb(parsed, use_bin_type=True)


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_float(item) for item in value)
    return False


def _record_fields(record: SignedRecord) -> dict[str, Any]:
    body = record.body
    if body.key.startswith(b"/registry/"):
        value: Any = _jsonable(msgpack.unpackb(body.value, raw=False))
    else:
        value = body.value.decode(errors="replace")
    return {
        "value": value,
        "seq": body.seq,
        "expires_at_ms": body.expires_at_ms,
        "signer": record.signer.hex(),
        "publisher": ID(body.publisher).to_base58() if body.publisher else None,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value
