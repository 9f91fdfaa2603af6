"""Hypothesis properties of the job market: random job traffic and clock jumps conserve
the supply exactly, replicas replaying the blocks agree on every root, refused
transactions change nothing, the records stay consistent, and assignment is a pure
function of the job id and the eligible workers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.codec import Ed25519Signer, sha256
from consensus.errors import TxRejected
from consensus.job_args import JobKind
from consensus.job_records import TERMINAL, JobStatus, dispute_bond, rank_workers
from consensus.job_tx import (
    TxHeader,
    job_accept,
    job_dispute,
    job_failure,
    job_result,
    job_submit,
    model_register,
    worker_register,
    worker_unregister,
)
from consensus.ledger import LedgerState, supply_check
from consensus.tx import SignedTx, TxBody, sign_tx
from tests.consensus.helpers import CHAIN, FEE
from tests.consensus.market import (
    EVERYONE,
    MODEL,
    PRICE,
    STAKE,
    SUBMITTER,
    WORKERS,
    Market,
    ready_market,
    signer_of,
)

MODELS = (MODEL, "bafkmodel2")
HASHES = (sha256(b"a"), sha256(b"b"))
STEPS_MS = (1, 1, 100, 400, 1_000, 2_500, 6_000)
"""Block gaps: mostly inside a turn or window, sometimes past one, or past retention."""
AGENT_STEPS_MS = (1, 50, 100, 200, 400, 1_000, 2_500, 6_000)
"""Agents need several blocks inside a turn (1 s) or a window (2 s) to play them out."""
KINDS = (0, 1, 2, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 6, 6, 6)
"""Weights: mostly the job flow (submit, results, accept, dispute), some registrations."""
BASE = ready_market()
"""A model and five workers registered: every example starts from here."""

operation = st.tuples(
    st.sampled_from(KINDS),  # which kind
    st.integers(0, len(EVERYONE) - 1),  # who (for results: the role, below)
    st.integers(0, 7),  # which job or model
    st.integers(0, 3),  # a variant: amount, flag, role
)
blocks = st.lists(st.tuples(st.lists(operation, min_size=1, max_size=6),
                            st.sampled_from(STEPS_MS)), min_size=2, max_size=14)


WANTED = {4: (JobStatus.ASSIGNED, JobStatus.DISPUTED), 5: (JobStatus.COMPLETED,),
          6: (JobStatus.COMPLETED,)}
"""The statuses each job kind can move; a pick prefers those (random search rarely
reaches a dispute otherwise) and still aims anywhere with variant 3."""


def _job_pick(state: LedgerState, index: int, kind: int, variant: int
              ) -> tuple[bytes, object] | None:
    keys = state.jobs.keys()
    wanted = [k for k in keys if state.jobs.get(k).status in WANTED[kind]]
    keys = wanted if wanted and variant != 3 else keys
    if not keys:
        return None
    job_id = keys[index % len(keys)]
    return job_id, state.jobs.get(job_id)


def _result_sender(job, role: int, who: int) -> Ed25519Signer:
    if role == 3 or job.status is not JobStatus.DISPUTED or not job.verifiers:
        return signer_of(job.assignee) if role < 3 else EVERYONE[who]
    return signer_of(job.verifiers[role % len(job.verifiers)])


def build_op(state: LedgerState, now_ms: int, op) -> tuple[Ed25519Signer, object] | None:
    """(signer, body builder) for ``op``, aimed at the jobs and workers that exist."""
    kind, who, target, variant = op
    actor, model = EVERYONE[who], MODELS[target % 2]
    if kind == 0:
        return actor, lambda h: model_register(h, model=model, royalty_bps=(0, 500, 9_950)[
            variant % 3], price=(0, PRICE, 3 * PRICE, 2)[variant])
    if kind == 1:
        return actor, lambda h: worker_register(h, models=MODELS[:1 + target % 2],
                                                stake=(STAKE, 0, STAKE // 2, 1)[variant])
    if kind == 2:
        return actor, lambda h: worker_unregister(h, amount=(STAKE, 1, 2 * STAKE, 0)[variant])
    if kind == 3:
        deadline = now_ms + (500, 3_000, 20_000, 0)[variant]
        return actor, lambda h: job_submit(h, model=model, job_kind=JobKind.INFERENCE,
                                           input_cid="bafkin", deadline_ms=deadline,
                                           max_price=(PRICE, 3 * PRICE, 1, 10 * PRICE)[variant])
    picked = _job_pick(state, target, kind, variant)
    if picked is None:
        return None
    job_id, job = picked
    if kind == 4:
        sender = _result_sender(job, variant, who)
        if who % 5 == 0:
            return sender, lambda h: job_failure(h, job=job_id)
        return sender, lambda h: job_result(h, job=job_id, output_cid="bafkout",
                                            output_sha256=HASHES[who % 2])
    submitter = signer_of(job.submitter) if variant else actor
    if kind == 5:
        return submitter, lambda h: job_accept(h, job=job_id)
    bond = dispute_bond(job.price, BASE.genesis.params.dispute_bond_bps) + (variant == 3)
    return submitter, lambda h: job_dispute(h, job=job_id, bond=bond)


Actions = list[tuple[Ed25519Signer, Callable[[TxHeader], TxBody]]]


def run_blocks(steps: Iterable[tuple[int, Callable[[LedgerState, int], Actions]]]
               ) -> tuple[LedgerState, list]:
    """Build a block per (gap, actions) from BASE, checking supply and records after each."""
    state, now_ms, chain = BASE.state, BASE.now_ms, list(BASE.blocks)
    for step_ms, actions in steps:
        now_ms += step_ms
        nonces: dict[bytes, int] = {}
        candidates: list[SignedTx] = []
        for signer, make in actions(state, now_ms):
            key = signer.public_key
            nonce = nonces.get(key, state.account(key).nonce)
            body: TxBody = make(TxHeader(chain_id=CHAIN, sender=key, nonce=nonce, fee=FEE))
            nonces[key] = nonce + 1
            candidates.append(sign_tx(body, signer))
        block, state = state.build_block(now_ms, candidates)
        chain.append(block)
        supply_check(state)
        check_records(state)
    return state, chain


def run_chain(plan) -> tuple[LedgerState, list]:
    """Random operations (``blocks``), aimed at what exists."""
    def actions(ops):
        def act(state: LedgerState, now_ms: int) -> Actions:
            built = (build_op(state, now_ms, op) for op in ops)
            return [b for b in built if b is not None]
        return act
    return run_blocks((step_ms, actions(ops)) for ops, step_ms in plan)


WORKER_MOVES = ("ok_a", "ok_a", "ok_b", "fail", "silent")
VERIFIER_MOVES = ("ok_a", "ok_b", "ok_b", "ok_b", "fail", "silent")
"""What an assignee or a verifier does in a block: post one of two outputs, fail or stay
silent. Verifiers lean to the other output so that every verdict (upheld, rejected,
undecided) comes up in a few dozen examples."""


def agents(data: st.DataObject) -> Callable[[LedgerState, int], Actions]:
    """Every party plays its part in each open job, choosing (drawn) at each block."""
    def result(signer: Ed25519Signer, job_id: bytes, moves: tuple[str, ...]) -> Actions:
        choice = data.draw(st.sampled_from(moves))
        if choice == "silent":
            return []
        if choice == "fail":
            return [(signer, lambda h: job_failure(h, job=job_id))]
        digest = HASHES[choice == "ok_b"]
        return [(signer, lambda h: job_result(h, job=job_id, output_cid="bafkout",
                                              output_sha256=digest))]

    def act(state: LedgerState, now_ms: int) -> Actions:
        actions: Actions = []
        for _ in range(data.draw(st.integers(0, 2))):
            submitter = data.draw(st.sampled_from(EVERYONE))
            deadline = now_ms + data.draw(st.sampled_from((1_500, 4_000, 20_000)))
            actions.append((submitter, lambda h, d=deadline: job_submit(
                h, model=MODEL, job_kind=JobKind.DISTILL, input_cid="bafkin", deadline_ms=d,
                max_price=PRICE)))
        for job_id, job in state.jobs.items():
            if job.status is JobStatus.ASSIGNED:
                actions += result(signer_of(job.assignee), job_id, WORKER_MOVES)
            elif job.status is JobStatus.DISPUTED:
                for verifier in job.verifiers:
                    if verifier not in dict(job.votes):
                        actions += result(signer_of(verifier), job_id, VERIFIER_MOVES)
            elif job.status is JobStatus.COMPLETED:
                actions += _submitter_move(data, job_id, job)
        noise = data.draw(st.lists(operation, max_size=2))
        return actions + [b for b in (build_op(state, now_ms, op) for op in noise) if b]
    return act


def _submitter_move(data: st.DataObject, job_id: bytes, job) -> Actions:
    submitter = signer_of(job.submitter)
    choice = data.draw(st.sampled_from(("accept", "dispute", "dispute", "wait")))
    if choice == "accept":
        return [(submitter, lambda h: job_accept(h, job=job_id))]
    if choice == "dispute":
        bond = dispute_bond(job.price, BASE.genesis.params.dispute_bond_bps)
        return [(submitter, lambda h: job_dispute(h, job=job_id, bond=bond))]
    return []


def check_records(state: LedgerState) -> None:
    """Escrow is held exactly while a job is open; a worker's ``open_jobs`` counts the
    unsettled results it posted; indexes agree with the tables."""
    posted: Counter[bytes] = Counter()
    for _, job in state.jobs.items():
        if job.status in TERMINAL:
            assert job.held == 0
            continue
        assert job.escrow == job.price and job.worker_pay >= 0
        assert job.bond == 0 or job.status is JobStatus.DISPUTED
        if job.status in (JobStatus.COMPLETED, JobStatus.DISPUTED):
            posted[job.assignee] += 1
            posted.update(voter for voter, digest in job.votes if digest)
    for key, worker in state.workers.items():
        assert worker.open_jobs == posted[key], "open_jobs drifted from the posted results"
        for cid in worker.models:
            assert key in state.workers_for_model(cid)
    assert state.next_timer_ms() == min(
        (j.timer_ms for _, j in state.jobs.items() if j.status not in TERMINAL), default=None)


settings_job = settings(max_examples=60, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow])


def assert_replicas_agree(built: LedgerState, chain: list) -> None:
    """A replica replaying the blocks, and one restarted from a snapshot, agree."""
    assert built.supply_now() == BASE.genesis.total_supply
    replica = LedgerState(BASE.genesis)
    for block in chain:
        replica = replica.apply_block(block)
        assert replica.state_root == block.state_root
    assert replica.snapshot() == built.snapshot()
    restarted = LedgerState.from_snapshot(BASE.genesis, built.snapshot())
    assert restarted.state_root == built.state_root
    assert restarted.next_timer_ms() == built.next_timer_ms()


@settings_job
@given(blocks)
def test_random_job_traffic_conserves_supply_and_replicas_agree(plan) -> None:
    assert_replicas_agree(*run_chain(plan))


@settings_job
@given(st.data())
def test_job_lifecycles_conserve_supply_and_replicas_agree(data: st.DataObject) -> None:
    """Parties that follow the protocol (or fail, or stay silent) drive jobs through every
    path: turns, failures, deadlines, acceptance, windows, disputes and their verdicts."""
    gaps = data.draw(st.lists(st.sampled_from(AGENT_STEPS_MS), min_size=3, max_size=16))
    act = agents(data)
    assert_replicas_agree(*run_blocks((gap, act) for gap in gaps))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks, operation, st.sampled_from(STEPS_MS))
def test_refused_job_transactions_change_nothing(plan, op, step_ms: int) -> None:
    state, _ = run_chain(plan)
    now_ms = state.last_timestamp_ms + step_ms
    built = build_op(state, now_ms, op)
    if built is None:
        return
    signer, make = built
    key = signer.public_key
    candidate = sign_tx(make(TxHeader(chain_id=CHAIN, sender=key, nonce=state.account(key).nonce,
                                    fee=FEE)), signer)
    before = state.snapshot()
    _, empty = state.build_block(now_ms, [])
    try:
        empty.check_tx(candidate)
    except TxRejected:
        block, after = state.build_block(now_ms, [candidate])
        assert block.txs == () and after.snapshot() == empty.snapshot()
    assert state.snapshot() == before


keys = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=12, unique=True)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=32, max_size=32), keys, st.randoms(use_true_random=False))
def test_rank_is_a_pure_function_of_job_id_and_the_worker_set(job_id, workers, rng) -> None:
    shuffled = list(workers)
    rng.shuffle(shuffled)
    ranked = rank_workers(job_id, workers)
    assert ranked == rank_workers(job_id, shuffled) and sorted(ranked) == sorted(workers)
    digests = [sha256(job_id + key) for key in ranked]
    assert digests == sorted(digests)
    dropped = ranked[rng.randrange(len(ranked))]  # a worker leaving reorders no other
    assert rank_workers(job_id, [k for k in workers if k != dropped]) == tuple(
        k for k in ranked if k != dropped)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(range(len(WORKERS))))
def test_registration_order_does_not_change_assignment(order) -> None:
    """Two ledgers that registered the same workers in different orders (and blocks)
    assign the same submitted job to the same ranked candidates."""
    def candidates(sequence) -> tuple[bytes, tuple[bytes, ...]]:
        market = Market()
        market.register_model()
        for index in sequence:
            market.run(WORKERS[index], lambda h: worker_register(h, models=[MODEL],
                                                                 stake=STAKE))
        tx = market.sign(SUBMITTER, lambda h: job_submit(
            h, model=MODEL, job_kind=JobKind.INFERENCE, input_cid="bafkin",
            deadline_ms=50_000, max_price=PRICE))
        market.block(tx)
        return tx.tx_hash, market.job(tx.tx_hash).candidates
    job_id, expected = candidates(range(len(WORKERS)))
    assert candidates(order) == (job_id, expected)  # the same job id, the same order
    assert expected == rank_workers(job_id, [w.public_key for w in WORKERS])
