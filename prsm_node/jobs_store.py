"""Models in the block store: a manifest block plus one UnixFS DAG per weight file.

Rules:
1. A manifest names its weight files by CID but does not link them (it is a raw block), so
   a model is stored, pinned, provided and fetched root by root: the manifest, then each
   file. Pinning every root keeps the whole model out of garbage collection.
2. A student's result hash is the SHA-256 of its weight files in manifest order
   (``weights_digest``): the reproducible part of a distill job's output (the manifest also
   names its owner, which differs per worker, and ``shard_weights`` rewrites the worker's
   safetensors file, so neither the manifest nor the raw output is what gets hashed).
3. Fetching checks as it goes: every block against its CID (storage), then every tensor
   against the manifest (``fetch_model``) before the model is used.
"""

from __future__ import annotations

from hashlib import sha256

from prsm_node.jobs.errors import ModelError
from prsm_node.jobs.manifests import ModelFiles, PublishedModel, fetch_model
from prsm_node.storage_service import FetchesBusy, StorageService
from storage.cid import Cid
from storage.errors import StorageError
from storage.manifest import load_manifest


def weights_digest(files: ModelFiles | PublishedModel) -> bytes:
    """Rule 2."""
    digest = sha256()
    for weight in files.manifest.files:
        digest.update(files.files[weight.name])
    return digest.digest()


class ModelFetchError(Exception):
    """A model could not be fetched or is not a usable model; says which part and why."""


async def keep_model(storage: StorageService, published: PublishedModel) -> int:
    """Pin and provide every root of a model stored here (rule 1); peers announced to."""
    roots = [published.cid, *(weight.cid for weight in published.manifest.files)]
    announced = 0
    for root in roots:
        await storage.in_thread(storage.store.pin, root)
        announced = max(announced, await storage.provide(root))
    return announced


async def _fetch_root(storage: StorageService, root: Cid, *, pin: bool) -> None:
    try:
        outcome = await storage.fetch(root, pin=pin)
    except FetchesBusy as error:
        raise ModelFetchError(f"could not fetch {root} now: {error}; retry later") from None
    if not outcome.complete:
        raise ModelFetchError(f"could not fetch {root}: {outcome.reason}; is a provider online?")


async def fetch_model_files(storage: StorageService, cid: Cid, *, pin: bool) -> ModelFiles:
    """Fetch a model's manifest and weight files from the network (rule 1), checked."""
    await _fetch_root(storage, cid, pin=pin)
    try:
        manifest = await storage.in_thread(load_manifest, cid, storage.store.get)
    except StorageError as error:
        raise ModelFetchError(f"{cid} is not a model manifest: {error}") from None
    for weight in manifest.files:
        await _fetch_root(storage, weight.cid, pin=pin)
    try:
        return await storage.in_thread(fetch_model, cid, storage.store.get)
    except (StorageError, ModelError) as error:
        raise ModelFetchError(f"model {cid} is not usable: {error}") from None
