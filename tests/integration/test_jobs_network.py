"""The job market across four real node processes: a model published on node 0 (A), served
by nodes 2 and 3 (C, D), an inference job from node 1 (B) computed by the assigned worker
and paid out at the challenge window's end; a job nobody computes is refunded at its
deadline; a distill job publishes a student that names its teacher.

One devnet per module (four validators, short job timers): its start-up is most of the
cost, and the tests read only their own jobs and balance deltas.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from consensus import job_tx
from consensus.codec import Ed25519Signer
from consensus.genesis import UNITS_PER_FTNS, Params
from consensus.job_args import JobKind
from consensus.job_records import rank_workers
from consensus.job_tx import TxHeader
from consensus.tx import SignedTx, TxBody, sign_tx
from prsm_node.devnet import Devnet, devnet_init, wait_for
from prsm_node.jobs.demo import HELD_OUT_SAMPLES, TRAIN_SAMPLES, accuracy, demo_task, train_demo
from prsm_node.jobs.models import build_model
from prsm_node.jobs.tensors import from_safetensors, to_safetensors

from .conftest import TEST_NETWORK, run_cli

pytestmark = pytest.mark.multiprocess

A, B, C, D = 0, 1, 2, 3
PARAMS = replace(Params(), fee_min=0, job_fee_bps=400, worker_stake_min=UNITS_PER_FTNS,
                 job_assign_timeout_ms=20_000, challenge_window_ms=20_000)
"""Free transactions so balance deltas are exactly the job's split; a 4 % job fee splits
evenly over the four validators; timers short enough for a test, long enough for a job
(and for a dispute to be committed inside the window on two loaded cores)."""
PRICE_FTNS, ROYALTY_BPS = 10, 1_000
JOB_DEADLINE_S = 120.0
"""Generous: two loaded cores run four nodes and a torch worker process."""


@dataclass(frozen=True, slots=True)
class Market:
    devnet: Devnet
    directory: Path
    mlp: str  # model CID, served by C and D
    keys: list[str]  # hex account keys by node index


def cli(devnet: Devnet, index: int, *args: str) -> dict:
    """`prsm-node ARGS --json` against node `index`: one JSON object on stdout."""
    done = run_cli(*args, "--data-dir", str(devnet.nodes[index].data_dir), "--json",
                   timeout_s=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def balance_units(market: Market, index: int, of: int) -> int:
    answer = market.devnet.call(index, "wallet_balance", {"address": market.keys[of]})
    return int(answer["balance_units"])


def wait_status(market: Market, index: int, job_id: str, wanted: set[str],
                deadline_s: float = 180) -> dict:
    def reached() -> dict | None:
        status = market.devnet.call(index, "job_status", {"job_id": job_id})
        return status if status["status"] in wanted else None

    return wait_for(reached, deadline_s, f"job {job_id[:12]} reaching {sorted(wanted)}")


@pytest.fixture(scope="module")
def mlp_weights() -> Iterator[tuple[torch.nn.Module, dict, Path]]:
    directory = Path(tempfile.mkdtemp(prefix="prsm-w-", dir="/tmp"))
    demo = train_demo("mlp", steps=200)
    path = directory / "mlp.safetensors"
    path.write_bytes(to_safetensors(demo.model.state_dict()))
    yield demo.model, dict(demo.config), path
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def market(mlp_weights: tuple[torch.nn.Module, dict, Path]) -> Iterator[Market]:
    directory = Path(tempfile.mkdtemp(prefix="prsm-", dir="/tmp"))
    devnet = Devnet(devnet_init(directory / "net", 4, TEST_NETWORK, params=PARAMS))
    try:
        devnet.start_all()
        for index in range(4):
            devnet.wait_ready(index, deadline_s=90)
        keys = [devnet.call(i, "wallet_address")["address"] for i in range(4)]
        _, config, path = mlp_weights
        published = cli(devnet, A, "model", "publish", str(path), "--architecture",
                               "mlp", "--config", json.dumps(config), "--price",
                               str(PRICE_FTNS), "--royalty-bps", str(ROYALTY_BPS))
        for worker in (C, D):
            cli(devnet, worker, "worker", "register", published["cid"], "--stake", "5")
        yield Market(devnet=devnet, directory=directory, mlp=published["cid"], keys=keys)
    finally:
        devnet.stop_all()
        shutil.rmtree(directory, ignore_errors=True)


def test_inference_job_runs_on_a_worker_and_settles_with_the_split(
        market: Market, mlp_weights: tuple[torch.nn.Module, dict, Path]) -> None:
    model, _, _ = mlp_weights
    batch = torch.randn(23, 16, generator=torch.Generator().manual_seed(5))
    input_path = market.directory / "batch.safetensors"
    input_path.write_bytes(to_safetensors({"input": batch}))
    devnet = market.devnet
    supply_before = devnet.call(A, "ledger_head")["supply"]
    before = {i: balance_units(market, A, i) for i in range(4)}

    submitted = cli(devnet, B, "job", "submit", "--model", market.mlp, "--kind", "inference",
                    "--input", str(input_path), "--params", '{"batch_size": 8}',
                    "--deadline", str(JOB_DEADLINE_S))
    job_id = submitted["job_id"]
    status = cli(devnet, B, "job", "status", job_id)
    assert status["status"] in {"assigned", "running", "completed", "accepted"}
    assert status["assignee"] in (market.keys[C], market.keys[D])
    worker = market.keys.index(status["assignee"])

    settled = wait_status(market, B, job_id, {"accepted", "failed", "refunded"})
    assert settled["status"] == "accepted", settled
    output = market.directory / "out.safetensors"
    fetched = cli(devnet, B, "job", "result", job_id, "-o", str(output))
    assert fetched["sha256_matches"] is True
    with torch.no_grad():
        expected = model(batch)
    torch.testing.assert_close(from_safetensors(output.read_bytes())["logits"], expected)

    price = PRICE_FTNS * UNITS_PER_FTNS
    royalty, fee = price * ROYALTY_BPS // 10_000, price * PARAMS.job_fee_bps // 10_000
    after = wait_for(lambda: _balances_at_least(market, before, worker), 60, "the payout")
    assert after[A] - before[A] == royalty + fee // 4
    assert after[B] - before[B] == -price + fee // 4
    assert after[worker] - before[worker] == price - royalty - fee + fee // 4
    other = ({C, D} - {worker}).pop()
    assert after[other] - before[other] == fee // 4
    assert devnet.call(A, "ledger_head")["supply"] == supply_before


def _balances_at_least(market: Market, before: dict[int, int], worker: int
                       ) -> dict[int, int] | None:
    after = {i: balance_units(market, A, i) for i in range(4)}
    return after if after[worker] > before[worker] else None


def test_distill_job_publishes_a_student_with_its_lineage(
        market: Market, mlp_weights: tuple[torch.nn.Module, dict, Path]) -> None:
    devnet = market.devnet
    inputs, labels = demo_task("mlp", seed=0, samples=TRAIN_SAMPLES + HELD_OUT_SAMPLES)
    dataset = market.directory / "dataset.safetensors"
    dataset.write_bytes(to_safetensors({"input": inputs[:TRAIN_SAMPLES],
                                        "labels": labels[:TRAIN_SAMPLES]}))
    teacher_accuracy = accuracy(mlp_weights[0], inputs[TRAIN_SAMPLES:], labels[TRAIN_SAMPLES:])
    params = {"student": {"architecture": "mlp", "config": {"hidden": [8]}}, "steps": 300,
              "temperature": 2.0, "learning_rate": 0.01, "progress_every": 50}
    submitted = devnet.call(B, "job_submit", {
        "model": market.mlp, "kind": "distill", "input": str(dataset), "params": params,
        "deadline_s": JOB_DEADLINE_S * 2})
    job_id = submitted["job_id"]
    done = wait_status(market, B, job_id, {"completed", "accepted", "failed", "refunded"}, 300)
    assert done["status"] in {"completed", "accepted"}, done
    if done["status"] == "completed":  # settle now rather than at the window's end
        accepted = run_cli("job", "accept", job_id, "--data-dir",
                           str(devnet.nodes[B].data_dir), "--json", timeout_s=180)
        assert accepted.returncode == 0 or "job_state" in accepted.stderr, accepted.stderr
    settled = wait_status(market, B, job_id, {"accepted"}, 60)
    student_cid = settled["output"]

    record = wait_for(lambda: _registered(devnet, student_cid), 60, "the student's record")
    assert record["teacher"] == market.mlp and record["teacher_share_bps"] > 0
    assert record["owner"] == settled["assignee"]
    weights = market.directory / "student.safetensors"
    assert cli(devnet, B, "job", "result", job_id, "-o", str(weights))["sha256_matches"]
    worker = market.keys.index(settled["assignee"])  # holds the student's manifest
    shown = devnet.call(worker, "model_show", {"cid": student_cid})
    assert shown["lineage"]["teacher"] == market.mlp
    student = build_model("mlp", shown["config"])
    student.load_state_dict(from_safetensors(weights.read_bytes()))
    student.eval()
    held_out = accuracy(student, inputs[TRAIN_SAMPLES:], labels[TRAIN_SAMPLES:])
    assert held_out >= 0.9 * teacher_accuracy, (held_out, teacher_accuracy)


def _registered(devnet: Devnet, cid: str) -> dict | None:
    models = devnet.call(A, "model_list")["models"]
    return next((m for m in models if m["cid"] == cid), None)


def test_job_every_worker_refuses_fails_and_the_escrow_returns(market: Market) -> None:
    """Bad params are a typed job error on each worker: each posts `job_failure`, the job
    passes down the ranking, and with no worker left the submitter is refunded."""
    devnet = market.devnet
    input_path = market.directory / "refused.safetensors"
    input_path.write_bytes(to_safetensors({"input": torch.zeros(3, 16)}))
    before = balance_units(market, A, B)
    job_id = devnet.call(B, "job_submit", {"model": market.mlp, "kind": "inference",
                                           "input": str(input_path),
                                           "params": {"batch_size": 0}})["job_id"]
    ended = wait_status(market, B, job_id, {"failed", "refunded", "accepted"}, 120)
    assert (ended["status"], ended["outcome"], ended["failures"]) == (
        "failed", "no_worker_left", 2), ended
    assert wait_for(lambda: balance_units(market, A, B) == before, 30, "B's refund")
    worker = market.keys.index(ended["assignee"])
    local = devnet.call(worker, "job_status", {"job_id": job_id})["local"]
    assert local["state"] == "failed" and "batch_size" in local["error"]


@dataclass(frozen=True, slots=True)
class Outsider:
    """An account held by this test process, not by any node: it signs its own
    transactions and submits them through node A's `tx_submit`."""

    signer: Ed25519Signer
    chain_id: str
    nonce: list[int]  # next nonce, one cell so the frozen record can count

    @property
    def key(self) -> str:
        return self.signer.public_key.hex()

    def submit(self, devnet: Devnet, build: Callable[[TxHeader], TxBody]) -> dict:
        signed = self.sign(build)
        with devnet.client(A, timeout_s=90) as client:
            return client.call("tx_submit", {"tx": signed.encoded.hex(), "wait_s": 60.0})

    def sign(self, build: Callable[[TxHeader], TxBody]) -> SignedTx:
        header = TxHeader(chain_id=self.chain_id, sender=self.signer.public_key,
                          nonce=self.nonce[0], fee=0)
        return sign_tx(build(header), self.signer)


def outsider(devnet: Devnet, seed_byte: int) -> Outsider:
    person = Outsider(Ed25519Signer.from_seed(bytes([seed_byte]) * 32),
                      devnet.call(A, "ledger_head")["chain_id"], [0])
    with devnet.client(A, timeout_s=90) as client:
        client.call("tx_transfer", {"to": person.key, "amount": "100", "wait_s": 60.0})
    return person


@pytest.fixture(scope="module")
def liar(market: Market, mlp_weights: tuple[torch.nn.Module, dict, Path]
         ) -> tuple[Outsider, str]:
    """A worker that never computes: registered for the market's MLP and for a second
    model (the same weights under another name) that no node serves."""
    devnet = market.devnet
    worker = outsider(devnet, 7)
    _, config, weights = mlp_weights
    with devnet.client(A, timeout_s=90) as client:
        lonely = client.call("model_publish", {
            "path": str(weights), "architecture": "mlp", "config": config, "name": "lonely",
            "price": "2"})["cid"]
    worker.submit(devnet, lambda h: job_tx.worker_register(
        h, models=[market.mlp, lonely], stake=5 * UNITS_PER_FTNS))
    worker.nonce[0] += 1
    return worker, lonely


def test_wrong_result_is_outvoted_by_reexecution_and_slashed(
        market: Market, liar: tuple[Outsider, str]) -> None:
    devnet, (worker, _) = market.devnet, liar
    submitter = outsider(devnet, 9)
    input_path = market.directory / "disputed.safetensors"
    input_path.write_bytes(to_safetensors({"input": torch.randn(
        11, 16, generator=torch.Generator().manual_seed(8))}))
    input_cid = devnet.call(B, "store_add", {"path": str(input_path)})["cid"]
    workers = [bytes.fromhex(market.keys[C]), bytes.fromhex(market.keys[D]),
               worker.signer.public_key]
    deadline_ms = int(time.time() * 1000) + 300_000
    # Assignment is a pure function of the job id: pick the batch size that ranks the liar
    # first (one in three does).
    for batch_size in range(1, 64):
        signed = submitter.sign(lambda h, size=batch_size: job_tx.job_submit(
            h, model=market.mlp, job_kind=JobKind.INFERENCE, input_cid=input_cid,
            deadline_ms=deadline_ms, max_price=PRICE_FTNS * UNITS_PER_FTNS,
            params={"batch_size": size}))
        if rank_workers(signed.tx_hash, workers)[0] == worker.signer.public_key:
            break
    submitter_before = int(devnet.call(A, "wallet_balance", {"address": submitter.key})
                           ["balance_units"])
    stake_before = int(devnet.call(A, "worker_show", {"address": worker.key})["stake_units"])
    with devnet.client(A, timeout_s=90) as client:
        client.call("tx_submit", {"tx": signed.encoded.hex(), "wait_s": 60.0})
    submitter.nonce[0] += 1
    job_id = signed.tx_hash
    assert devnet.call(A, "job_status", {"job_id": job_id.hex()})["assignee"] == worker.key

    worker.submit(devnet, lambda h: job_tx.job_result(
        h, job=job_id, output_cid=input_cid, output_sha256=bytes(32)))
    worker.nonce[0] += 1
    bond = job_tx.dispute_bond(PRICE_FTNS * UNITS_PER_FTNS, PARAMS.dispute_bond_bps)
    submitter.submit(devnet, lambda h: job_tx.job_dispute(h, job=job_id, bond=bond))

    ended = wait_status(market, A, job_id.hex(), {"refunded", "failed", "accepted"})
    assert ended["outcome"] == "dispute_upheld", ended
    honest = {digest for _, digest in ended["votes"]}
    assert len(honest) == 1 and honest != {bytes(32).hex()}
    slash = stake_before * PARAMS.slash_bps // 10_000
    stake_after = int(devnet.call(A, "worker_show", {"address": worker.key})["stake_units"])
    assert stake_after == stake_before - slash
    submitter_after = int(devnet.call(A, "wallet_balance", {"address": submitter.key})
                          ["balance_units"])
    assert submitter_after == submitter_before  # escrow and bond back, free transactions


def test_job_nobody_computes_is_refunded_at_its_deadline(
        market: Market, liar: tuple[Outsider, str]) -> None:
    devnet, (_, lonely) = market.devnet, liar
    input_path = market.directory / "lonely-input.safetensors"
    input_path.write_bytes(to_safetensors({"input": torch.zeros(2, 16)}))
    before = balance_units(market, B, B)
    job_id = devnet.call(B, "job_submit", {"model": lonely, "kind": "inference",
                                           "input": str(input_path), "deadline_s": 10.0})["job_id"]
    # the price is in escrow (read from B, which committed the job; A may be a block behind)
    assert balance_units(market, B, B) < before
    ended = wait_status(market, B, job_id, {"refunded", "failed", "accepted"}, 60)
    assert (ended["status"], ended["outcome"]) == ("refunded", "deadline_passed")
    assert wait_for(lambda: balance_units(market, A, B) == before, 30, "B's refund")


def test_a_published_model_is_announced_on_every_registry(market: Market) -> None:
    """`model publish` registers on the ledger and also gossips the model, so the other
    nodes find it by name in their registries."""
    def listed(index: int) -> bool:
        models = market.devnet.call(index, "registry_models")["models"]
        return any(model.get("manifest_cid") == market.mlp for model in models)

    for index in (B, C, D):
        wait_for(lambda index=index: listed(index), 60, f"node {index} listing the model")
