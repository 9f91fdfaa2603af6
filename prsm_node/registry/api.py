"""Control methods of the registry: registry_announce_model, registry_offer_job,
registry_models, registry_model, registry_nodes, registry_offers, registry_sync and
registry_statistics. Each is documented in docs/control-api.md.

Publishing methods sign with this node's key: the owner of a model announcement is this
node's public key and its holder this node's peer id. Prices cross the API as FTNS decimal
strings ("12.5", as in tx_transfer) and are stored in base units. Query methods return one
object holding a list (`{"models": [...]}`, `{"nodes": [...]}`, `{"offers": [...]}`).
"""

from __future__ import annotations

from typing import Any

from prsm_node.control import Dispatcher, ErrorCode, Param, RpcError
from prsm_node.dht_service import unix_ms
from prsm_node.ledger_api import format_ftns, parse_ftns
from prsm_node.registry.messages import Entry, Kind, is_cid
from prsm_node.registry.service import (
    RegistryInputError,
    RegistryPublishError,
    RegistryService,
)

LIMIT_MAX = 10_000


def _limit(limit: int) -> int:
    if not 0 < limit <= LIMIT_MAX:
        raise RpcError(ErrorCode.INVALID_PARAMS, f"param 'limit': must be 1 to {LIMIT_MAX}")
    return limit


def _strings(values: list[Any], name: str) -> list[str]:
    if not all(isinstance(value, str) for value in values):
        raise RpcError(ErrorCode.INVALID_PARAMS, f"param '{name}': must be a list of strings")
    return list(values)


def _published(entry: Entry) -> dict[str, Any]:
    body = entry.body
    return {
        "kind": entry.kind.value,
        "key": body["key"],
        "seq": body["seq"],
        "issued_at_ms": body["issued_at_ms"],
        "expires_at_ms": body["expires_at_ms"],
        "signer": entry.signer.hex(),
        "peer_id": entry.peer_id,
        "size_bytes": len(entry.wire),
    }


def _with_ftns(offer: dict[str, Any]) -> dict[str, Any]:
    return offer | {"price": format_ftns(int(offer["price_units"]))}


class RegistryMethods:
    """The registry_* control methods, bound to the node's registry service."""

    def __init__(self, registry: RegistryService) -> None:
        self._registry = registry

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register(
            "registry_announce_model",
            self.registry_announce_model,
            [
                Param("name", str),
                Param("architecture", str),
                Param("manifest_cid", str),
                Param("tags", list, []),
                Param("size_bytes", int, 0),
                Param("description", str, ""),
                Param("ttl_ms", int, None),
            ],
        )
        dispatcher.register(
            "registry_offer_job",
            self.registry_offer_job,
            [
                Param("offer_id", str),
                Param("job_kind", str),
                Param("model_cid", str),
                Param("price", str),
                Param("input_cid", str, ""),
                Param("deadline_ms", int, None),
                Param("gpu_required", bool, False),
                Param("memory_bytes_min", int, 0),
            ],
        )
        filters = [Param("name", str, None), Param("architecture", str, None)]
        dispatcher.register(
            "registry_models",
            self.registry_models,
            [*filters, Param("tag", str, None), Param("limit", int, 100)],
        )
        dispatcher.register("registry_model", self.registry_model, [Param("model", str)])
        dispatcher.register(
            "registry_nodes",
            self.registry_nodes,
            [Param("gpu", bool, False), Param("model", str, None), Param("limit", int, 1000)],
        )
        dispatcher.register(
            "registry_offers",
            self.registry_offers,
            [Param("job_kind", str, None), Param("model_cid", str, None),
             Param("limit", int, 1000)],
        )
        dispatcher.register("registry_sync", self.registry_sync, [Param("peer_id", str, None)])
        dispatcher.register("registry_statistics", self.registry_statistics)

    # -- publishing ----------------------------------------------------------------------

    async def _publish(self, kind: Kind, fields: dict[str, Any], key: str, expires: int) -> Any:
        registry = self._registry
        try:
            entry = registry.build(kind, fields, key=key, expires_at_ms=expires)
        except RegistryInputError as error:
            raise RpcError(ErrorCode.INVALID_PARAMS, f"not a valid {kind.value}: {error}") from None
        try:
            await registry.publish(entry)
        except RegistryPublishError as error:
            raise RpcError(ErrorCode.NODE_ERROR, f"not published: {error}") from None
        return _published(entry)

    async def registry_announce_model(
        self,
        name: str,
        architecture: str,
        manifest_cid: str,
        tags: list[Any],
        size_bytes: int,
        description: str,
        ttl_ms: int | None = None,
    ) -> dict[str, Any]:
        config = self._registry.config
        ttl_ms = config.model_ttl_ms if ttl_ms is None else ttl_ms
        if not 0 < ttl_ms <= config.ttl_max_ms:
            raise RpcError(
                ErrorCode.INVALID_PARAMS, f"param 'ttl_ms': must be 1 to {config.ttl_max_ms}"
            )
        if not is_cid(manifest_cid):
            raise RpcError(
                ErrorCode.INVALID_PARAMS, "param 'manifest_cid': not a CIDv1 (bafy.../bafk...)"
            )
        fields = {
            "name": name,
            "architecture": architecture,
            "tags": _strings(tags, "tags"),
            "manifest_cid": manifest_cid,
            "size_bytes": size_bytes,
            "description": description,
        }
        return await self._publish(Kind.MODEL, fields, manifest_cid, unix_ms() + ttl_ms)

    async def registry_offer_job(
        self,
        offer_id: str,
        job_kind: str,
        model_cid: str,
        price: str,
        input_cid: str,
        deadline_ms: int | None = None,
        gpu_required: bool = False,
        memory_bytes_min: int = 0,
    ) -> dict[str, Any]:
        config = self._registry.config
        now = unix_ms()
        deadline = now + config.offer_ttl_ms if deadline_ms is None else deadline_ms
        if not now < deadline <= now + config.ttl_max_ms:
            raise RpcError(
                ErrorCode.INVALID_PARAMS,
                "param 'deadline_ms': must be a Unix time in ms in the future, at most "
                f"registry.ttl_max_ms ({config.ttl_max_ms} ms) ahead",
            )
        fields = {
            "job_kind": job_kind,
            "model_cid": model_cid,
            "input_cid": input_cid,
            "price_units": str(parse_ftns(price, "price")),
            "deadline_ms": deadline,
            "gpu_required": gpu_required,
            "memory_bytes_min": memory_bytes_min,
        }
        return await self._publish(Kind.OFFER, fields, offer_id, deadline)

    # -- queries -------------------------------------------------------------------------

    async def _rows(self, query: Any, limit: int, **filters: Any) -> list[dict[str, Any]]:
        """A store query over live entries (now), in the store's thread."""
        return await self._registry.in_store(query, unix_ms(), limit=_limit(limit), **filters)

    async def registry_models(
        self,
        name: str | None = None,
        architecture: str | None = None,
        tag: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        store = self._registry.store
        filters = {"name": name, "architecture": architecture, "tag": tag}
        return {"models": await self._rows(store.models, limit, **filters)}

    async def registry_model(self, model: str) -> dict[str, Any]:
        """A model by name or manifest CID: its announcements and the nodes holding it."""
        registry, now = self._registry, unix_ms()
        cids = await registry.in_store(registry.store.model_cids, model, now)
        if not cids and is_cid(model):
            cids = [model]  # held (in capabilities) though nobody announces it now
        models = []
        for cid in cids:
            models += await registry.in_store(registry.store.models, now, cid=cid)
        holders = await registry.in_store(registry.store.holders, cids, now)
        if not models and not holders:
            raise RpcError(ErrorCode.NODE_ERROR, f"no model {model!r} in this node's registry")
        listed = [{"peer_id": peer, "cids": found} for peer, found in sorted(holders.items())]
        return {"models": models, "holders": listed}

    async def registry_nodes(
        self, gpu: bool = False, model: str | None = None, limit: int = 1000
    ) -> dict[str, Any]:
        registry, now = self._registry, unix_ms()
        limit = _limit(limit)
        if model is None:
            nodes = await registry.in_store(registry.store.nodes, now, gpu=gpu, limit=limit)
            return {"nodes": [node | {"capabilities_known": True} for node in nodes]}
        cids = await registry.in_store(registry.store.model_cids, model, now)
        cids = cids or ([model] if is_cid(model) else [])
        holders = await registry.in_store(registry.store.holders, cids, now)
        known = await registry.in_store(
            registry.store.nodes, now, gpu=gpu, peer_ids=sorted(holders), limit=limit
        )
        nodes = [node | {"capabilities_known": True, "holds": holders[node["peer_id"]]}
                 for node in known]
        if not gpu:  # holders with no live capability entry: we cannot tell their GPUs
            seen = {node["peer_id"] for node in known}
            nodes += [
                {"peer_id": peer, "capabilities_known": False, "holds": found}
                for peer, found in sorted(holders.items())
                if peer not in seen
            ]
        return {"nodes": nodes[:limit]}

    async def registry_offers(
        self, job_kind: str | None = None, model_cid: str | None = None, limit: int = 1000
    ) -> dict[str, Any]:
        store = self._registry.store
        offers = await self._rows(store.offers, limit, job_kind=job_kind, model_cid=model_cid)
        return {"offers": [_with_ftns(offer) for offer in offers]}

    # -- operations ----------------------------------------------------------------------

    async def registry_sync(self, peer_id: str | None = None) -> dict[str, Any]:
        registry = self._registry
        connected = [info.peer_id for info in registry.peers.peers()]
        if peer_id is None:
            if not connected:
                raise RpcError(ErrorCode.NODE_ERROR, "not connected to any peer to sync with")
            peer_id = connected[0]
        elif peer_id not in connected:
            raise RpcError(ErrorCode.NODE_ERROR, f"not connected to peer {peer_id}")
        report = await registry.sync_with(peer_id)
        if report is None:
            raise RpcError(ErrorCode.NODE_ERROR, f"sync with {peer_id} failed; see the node log")
        return {
            "peer_id": report.peer,
            "pages": report.pages,
            "signers_differing": report.signers_differing,
            "entries_received": report.entries_received,
            "entries_accepted": report.entries_accepted,
        }

    async def registry_statistics(self) -> dict[str, Any]:
        return await self._registry.statistics()
