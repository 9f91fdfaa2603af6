"""Control methods of the job market: model_publish, model_list, model_show, worker_register,
job_submit, job_status, job_result, job_list, job_accept, job_dispute. Documented in
docs/control-api.md.

Rules:
1. The ledger decides; these methods sign and submit the node's transactions
   (``LedgerService.submit_built``) and read the committed head. A refused transaction is
   a NODE_ERROR naming the ledger's reason code.
2. Whatever a transaction names by CID is stored, pinned and provided first (a model before
   ``model_register``, the served models before ``worker_register``, the input before
   ``job_submit``), so the network can fetch it the moment the transaction commits.
3. Amounts cross as decimal FTNS strings in and FTNS plus base-unit strings out
   (ledger_api.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from hashlib import sha256
from pathlib import Path
from typing import Any

from consensus import job_tx
from consensus.errors import TxRejected
from consensus.job_args import JobKind
from consensus.job_records import Job, JobStatus, Model
from consensus.job_tx import TxHeader
from consensus.tx import TxBody
from prsm_node.control import Dispatcher, ErrorCode, Param, RpcError
from prsm_node.dht_service import unix_ms
from prsm_node.jobs.errors import JobSpecError, ModelError
from prsm_node.jobs.manifests import PublishedModel, describe_model, fetch_model, publish_model
from prsm_node.jobs_records import encode_params, job_json
from prsm_node.jobs_service import JobsService
from prsm_node.jobs_store import ModelFetchError, fetch_model_files, keep_model
from prsm_node.ledger_api import format_ftns, parse_address, parse_ftns
from prsm_node.ledger_service import LedgerService, TxFailed
from prsm_node.storage_fetch import FetchOutcome
from prsm_node.storage_service import FetchesBusy, StorageService
from storage.cid import Cid
from storage.errors import InvalidDataError, StorageError
from storage.unixfs import add_chunks, read_file

WEIGHTS_SIZE_MAX = 4 * 1024 * 1024 * 1024
INPUT_SIZE_MAX = 256 * 1024 * 1024
RESULT_SIZE_MAX = 4 * 1024 * 1024 * 1024
DEADLINE_S_DEFAULT = 3600.0


def _error(message: str) -> RpcError:
    return RpcError(ErrorCode.NODE_ERROR, message)


def _invalid(message: str) -> RpcError:
    return RpcError(ErrorCode.INVALID_PARAMS, message)


def _cid(text: str, name: str) -> Cid:
    try:
        return Cid.parse(text)
    except InvalidDataError as error:
        raise _invalid(f"param '{name}': {error} (expected a CIDv1)") from None


def _job_id(text: str) -> bytes:
    try:
        job_id = bytes.fromhex(text)
    except ValueError:
        job_id = b""
    if len(job_id) != 32:
        raise _invalid("param 'job_id': not a 64-hex-digit job id (`prsm-node job list`)")
    return job_id


def _file(text: str, name: str, size_max: int) -> Path:
    path = Path(text)
    if not path.is_absolute():
        raise _invalid(f"param '{name}': {text} is not an absolute path")
    if not path.is_file():
        raise _invalid(f"param '{name}': {path} is not a file")
    if path.stat().st_size > size_max:
        raise _invalid(f"param '{name}': {path} is larger than {size_max} bytes")
    return path


def model_json(cid: str, model: Model, workers: int) -> dict[str, Any]:
    return {"cid": cid, "owner": model.owner.hex(), "royalty_bps": model.royalty_bps,
            "price": format_ftns(model.price), "price_units": str(model.price),
            "teacher": model.teacher, "teacher_share_bps": model.teacher_share_bps,
            "workers": workers}


async def _fetch_now(storage: StorageService, root: Cid) -> FetchOutcome:
    try:
        return await storage.fetch(root, pin=False)
    except FetchesBusy as error:
        raise RpcError(ErrorCode.SERVER_BUSY, f"{error}; retry later") from None


Announce = Callable[..., Awaitable[dict[str, Any]]]


class JobsMethods:
    """The model_*, worker_* and job_* control methods."""

    def __init__(self, ledger: LedgerService, storage: StorageService, jobs: JobsService,
                 announce: Announce | None = None) -> None:
        self._ledger, self._storage, self._jobs = ledger, storage, jobs
        self._announce = announce
        """The registry's model announcement (`registry_announce_model`): a published model
        is announced on the gossip registry too, so other nodes find it by name."""

    def register(self, dispatcher: Dispatcher) -> None:
        wait = Param("wait_s", float, 30.0)
        text, job = str, Param("job_id", str)
        dispatcher.register("model_publish", self.model_publish, [
            Param("path", text, None), Param("architecture", text, None),
            Param("config", dict, None), Param("demo", text, None), Param("name", text, None),
            Param("steps", int, None), Param("royalty_bps", int, 0),
            Param("price", text, "1"), wait])
        dispatcher.register("model_list", self.model_list)
        dispatcher.register("model_show", self.model_show, [Param("cid", text)])
        dispatcher.register("worker_register", self.worker_register, [
            Param("models", list), Param("stake", text, None), wait])
        dispatcher.register("worker_show", self.worker_show, [Param("address", text, None)])
        dispatcher.register("job_submit", self.job_submit, [
            Param("model", text), Param("kind", text), Param("input", text),
            Param("params", dict, None), Param("max_price", text, None),
            Param("deadline_s", float, DEADLINE_S_DEFAULT), wait])
        dispatcher.register("job_status", self.job_status, [job])
        dispatcher.register("job_result", self.job_result, [job, Param("output", text)])
        dispatcher.register("job_list", self.job_list, [Param("role", text, "all")])
        dispatcher.register("job_accept", self.job_accept, [job, wait])
        dispatcher.register("job_dispute", self.job_dispute, [job, wait])

    # -- models ----------------------------------------------------------------------------

    async def model_publish(self, path: str | None = None, architecture: str | None = None,
                            config: dict[str, Any] | None = None, demo: str | None = None,
                            name: str | None = None, steps: int | None = None,
                            royalty_bps: int = 0, price: str = "1", wait_s: float = 30.0
                            ) -> dict[str, Any]:
        """Store a model (weights file or a freshly trained demo), pin, provide, register."""
        price_units = parse_ftns(price, "price")
        published = await self._publish(path, architecture, config, demo, name, steps)
        root = published.cid
        announced = await keep_model(self._storage, published)
        committed = await self._post(lambda h: job_tx.model_register(
            h, model=str(root), royalty_bps=royalty_bps, price=price_units), wait_s)
        registry = None
        if self._announce is not None:
            registry = await self._announce(
                name=published.manifest.name, architecture=published.manifest.architecture,
                manifest_cid=str(root), tags=["ledger"],
                size_bytes=sum(f.size for f in published.manifest.files), description="")
        return {"cid": str(root), "name": published.manifest.name,
                "architecture": published.manifest.architecture,
                "config": published.manifest.config, "announced_to": announced,
                "registry": registry} | committed

    async def _publish(self, path: str | None, architecture: str | None,
                       config: dict[str, Any] | None, demo: str | None, name: str | None,
                       steps: int | None) -> PublishedModel:
        owner, put = self._ledger.signer.public_key, self._storage.put
        if (demo is None) == (path is None):
            raise _invalid("give either 'path' (with 'architecture') or 'demo'")
        try:
            if demo is not None:
                # Imported here: torch takes seconds to import and the node needs it only
                # to train a demo model (jobs run in worker processes).
                from prsm_node.jobs.demo import publish_demo

                return await self._storage.in_thread(lambda: publish_demo(
                    put, architecture=demo, owner=owner, name=name, steps=steps))
            if architecture is None:
                raise _invalid("param 'architecture' is needed with 'path'")
            assert path is not None
            weights = _file(path, "path", WEIGHTS_SIZE_MAX).read_bytes()
            return await self._storage.in_thread(lambda: publish_model(
                put, name=name or Path(path).stem, architecture=architecture,
                config=config or {}, weights=weights, owner=owner))
        except (ModelError, KeyError, ValueError) as error:
            raise _invalid(f"model refused: {error}") from None

    async def model_list(self) -> dict[str, Any]:
        state = self._ledger.ledger()
        return {"height": state.height, "models": [
            model_json(cid, model, len(state.workers_for_model(cid)))
            for cid, model in state.models.items()]}

    async def model_show(self, cid: str) -> dict[str, Any]:
        root = _cid(cid, "cid")
        state = self._ledger.ledger()
        model = state.model(cid)
        if model is None:
            raise _error(f"model {cid} is not registered (`prsm-node model list`)")
        answer = model_json(cid, model, len(state.workers_for_model(cid)))
        answer["eligible_workers"] = [key.hex() for key in state.eligible_workers(cid)]
        if await self._storage.in_thread(self._storage.store.has, root):
            try:
                files = await self._storage.in_thread(fetch_model, root, self._storage.store.get)
            except (StorageError, ModelError):
                files = None  # only part of it is here: the ledger record still answers
            if files is not None:
                description = describe_model(files.manifest)
                answer |= {"name": files.manifest.name,
                           "architecture": description.architecture,
                           "config": description.config, "lineage": dict(description.lineage)}
        return answer

    # -- workers ---------------------------------------------------------------------------

    async def worker_register(self, models: list[Any], stake: str | None = None,
                              wait_s: float = 30.0) -> dict[str, Any]:
        """Fetch, check and pin each model, then register as their worker."""
        if not models or not all(isinstance(m, str) for m in models):
            raise _invalid("param 'models': a non-empty list of model CIDs")
        for text in models:
            try:
                await fetch_model_files(self._storage, _cid(text, "models"), pin=True)
            except ModelFetchError as error:
                raise _error(str(error)) from None
        amount = parse_ftns(stake, "stake") if stake is not None else 0
        committed = await self._post(lambda h: job_tx.worker_register(
            h, models=list(models), stake=amount), wait_s)
        worker = self._ledger.ledger().worker(self._ledger.signer.public_key)
        return {"worker": self._ledger.signer.public_key.hex(), "models": sorted(set(models)),
                "stake": format_ftns(worker.stake if worker else 0)} | committed

    async def worker_show(self, address: str | None = None) -> dict[str, Any]:
        """A worker's stake, models and unsettled results (default: this node's)."""
        own = self._ledger.signer.public_key
        key = own if address is None else parse_address(address, "address")
        state = self._ledger.ledger()
        worker = state.worker(key)
        if worker is None:
            raise _error(f"{key.hex()} is not a registered worker (`prsm-node worker register`)")
        return {"worker": key.hex(), "stake": format_ftns(worker.stake),
                "stake_units": str(worker.stake), "models": list(worker.models),
                "open_jobs": worker.open_jobs, "height": state.height}

    # -- jobs ------------------------------------------------------------------------------

    async def job_submit(self, model: str, kind: str, input: str,
                         params: dict[str, Any] | None = None, max_price: str | None = None,
                         deadline_s: float = DEADLINE_S_DEFAULT, wait_s: float = 30.0
                         ) -> dict[str, Any]:
        """Store and provide the input file, then submit the job; its id is the tx hash."""
        _cid(model, "model")
        try:
            job_kind = JobKind(kind)
        except ValueError:
            raise _invalid(f"param 'kind': one of {[k.value for k in JobKind]}") from None
        try:
            ledger_params = encode_params(params or {})
        except JobSpecError as error:
            raise _invalid(f"param 'params': {error}") from None
        registered = self._ledger.ledger().model(model)
        if registered is None:
            raise _error(f"model {model} is not registered (`prsm-node model list`)")
        price = parse_ftns(max_price, "max_price") if max_price else registered.price
        if deadline_s <= 0:
            raise _invalid("param 'deadline_s': must be positive")
        data = _file(input, "input", INPUT_SIZE_MAX).read_bytes()
        put = self._storage.put
        root = await self._storage.in_thread(lambda: add_chunks([data], put).root)
        await self._storage.in_thread(self._storage.store.pin, root)
        await self._storage.provide(root)
        deadline_ms = unix_ms() + int(deadline_s * 1000)
        committed = await self._post(lambda h: job_tx.job_submit(
            h, model=model, job_kind=job_kind, input_cid=str(root), deadline_ms=deadline_ms,
            max_price=price, params=ledger_params), wait_s)
        return {"job_id": committed["tx_hash"], "input": str(root),
                "deadline_ms": deadline_ms} | committed

    def _job(self, job_id: bytes) -> Job:
        job = self._ledger.ledger().job(job_id)
        if job is None:
            raise _error(f"job {job_id.hex()} is unknown here, or finished long enough ago to "
                         "have expired (`prsm-node job list`)")
        return job

    async def job_status(self, job_id: str) -> dict[str, Any]:
        """The ledger's record, and this node's progress when it works on the job; on the
        submitter's node, the assigned worker's progress (``worker``, jobs_progress.py)."""
        key = _job_id(job_id)
        job = self._job(key)
        answer = job_json(key, job) | {"height": self._ledger.ledger().height}
        local = self._jobs.local_status(key)
        answer["local"] = local
        answer["worker"] = None
        own = self._jobs.key
        if local is None and job.status is JobStatus.ASSIGNED and job.submitter == own \
                and job.assignee != own:
            answer["worker"] = worker = await self._jobs.progress.ask(key, job)
            local = worker if "state" in worker else None
        if local is not None and local["state"] == "running" and answer["status"] in (
                "assigned", "disputed"):
            answer["status"] = "running"
        return answer

    async def job_result(self, job_id: str, output: str) -> dict[str, Any]:
        """Fetch the job's output and write it to ``output`` (a distill job's student
        weights); the bytes are checked against the SHA-256 on the ledger."""
        key = _job_id(job_id)
        job = self._job(key)
        if not job.output:
            raise _error(f"job {job_id} has no result yet (status {job.status.value})")
        target = Path(output)
        if not target.is_absolute():
            raise _invalid(f"param 'output': {output} is not an absolute path")
        root = _cid(job.output, "output")
        get = self._storage.store.get
        try:
            if job.job_kind is JobKind.INFERENCE:
                outcome = await _fetch_now(self._storage, root)
                if not outcome.complete:
                    raise _error(f"could not fetch the result {root}: {outcome.reason}")
                data = await self._storage.in_thread(
                    lambda: read_file(root, get, size_max=RESULT_SIZE_MAX))
            else:
                files = await fetch_model_files(self._storage, root, pin=False)
                if len(files.files) != 1:
                    raise _error("the student is sharded; fetch it with `prsm-node store get`")
                data = next(iter(files.files.values()))
        except (StorageError, ModelFetchError) as error:
            raise _error(f"result {job.output} is unreadable: {error}") from None
        matches = sha256(data).digest() == job.output_sha256
        target.write_bytes(data)
        return {"job_id": job_id, "cid": job.output, "path": str(target), "size": len(data),
                "sha256": sha256(data).hexdigest(), "sha256_matches": matches,
                "status": job.status.value}

    async def job_list(self, role: str = "all") -> dict[str, Any]:
        state, own = self._ledger.ledger(), self._ledger.signer.public_key
        if role not in ("all", "submitted", "assigned"):
            raise _invalid("param 'role': one of all, submitted, assigned")
        found: dict[bytes, Job] = {}
        if role in ("all", "submitted"):
            found |= dict(state.jobs_by_submitter(own))
        if role in ("all", "assigned"):
            found |= dict(state.jobs_by_assignee(own))
        jobs = sorted(found.items(), key=lambda item: (item[1].submitted_ms, item[0]))
        return {"height": state.height, "jobs": [
            {"job_id": job_id.hex(), "status": job.status.value, "kind": job.job_kind.value,
             "model": job.model, "submitter": job.submitter.hex(),
             "assignee": job.assignee.hex()} for job_id, job in jobs]}

    async def job_accept(self, job_id: str, wait_s: float = 30.0) -> dict[str, Any]:
        key = _job_id(job_id)
        self._job(key)
        committed = await self._post(lambda h: job_tx.job_accept(h, job=key), wait_s)
        return {"job_id": job_id, "status": self._job(key).status.value} | committed

    async def job_dispute(self, job_id: str, wait_s: float = 30.0) -> dict[str, Any]:
        """Dispute a result, bonding the genesis share of its price."""
        key = _job_id(job_id)
        job = self._job(key)
        bond = job_tx.dispute_bond(job.price, self._ledger.genesis.params.dispute_bond_bps)
        committed = await self._post(lambda h: job_tx.job_dispute(h, job=key, bond=bond), wait_s)
        return {"job_id": job_id, "bond": format_ftns(bond), "bond_units": str(bond),
                "status": self._job(key).status.value} | committed

    async def _post(self, build: Callable[[TxHeader], TxBody], wait_s: float
                    ) -> dict[str, Any]:
        if not 0 < wait_s <= 120:
            raise _invalid("param 'wait_s': between 0 and 120 seconds")
        try:
            committed = await self._ledger.submit_built(build, wait_s)
        except TxFailed as error:
            raise _error(f"transaction {error.reason_code}: {error}") from None
        except TxRejected as error:
            raise _invalid(f"transaction refused before signing: {error}") from None
        return {"tx_hash": committed.tx_hash.hex(), "height": committed.height}
