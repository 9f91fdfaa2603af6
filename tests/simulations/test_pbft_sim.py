"""Seeded PBFT simulations: safety and liveness under faults, a planted bug caught, replay."""

from __future__ import annotations

import pytest

from simulations.pbft_scenario import FaultOptions, PbftScenario, Report, ScenarioConfig, main


def run(**overrides: object) -> Report:
    return PbftScenario(ScenarioConfig(**{"txs": 40, **overrides})).run()  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(1, 13))
def test_four_validators_stay_safe_and_live_under_random_faults(seed: int) -> None:
    report = run(validators=4, seed=seed)
    assert report.failures == [], ScenarioConfig(validators=4, seed=seed, txs=40).command()
    assert report.liveness_done_ms is not None
    assert len(set(report.heights.values())) >= 1


@pytest.mark.parametrize("seed", range(1, 4))
def test_seven_validators_stay_safe_and_live_under_random_faults(seed: int) -> None:
    report = run(validators=7, seed=seed)
    assert report.failures == [], ScenarioConfig(validators=7, seed=seed, txs=40).command()


def test_the_seeds_really_inject_every_kind_of_fault() -> None:
    options = [FaultOptions.swarm(seed, 4) for seed in range(1, 13)]
    kinds = {kind for o in options for _, kind in o.byzantine}
    assert kinds == {"equivocate", "conflict", "silent"}
    assert any(o.loss for o in options) and any(o.duplication for o in options)
    assert any(o.crashes for o in options) and any(o.partitions for o in options)
    assert all(len(o.byzantine) <= 1 for o in options)  # at most f


def test_worst_case_faults_all_at_once() -> None:
    options = FaultOptions(loss=0.15, duplication=0.1, latency_jitter_mean_ms=100.0,
                           partitions=3, crashes=6, byzantine=((0, "equivocate"),))
    config = ScenarioConfig(validators=4, seed=77, txs=40)
    report = PbftScenario(config, options).run()
    assert report.failures == []
    assert report.simulator["messages_lost"] > 0 and report.simulator["messages_duplicated"] > 0
    assert report.simulator["messages_to_down_nodes"] > 0
    assert report.view_changes > 0


def test_planted_quorum_bug_is_caught_by_the_safety_checker() -> None:
    caught = []
    for seed in range(30, 42):
        report = run(validators=4, seed=seed, planted_bug="quorum-2f")
        if any("conflicting blocks" in failure for failure in report.failures):
            caught.append(seed)
    assert caught, "the checker missed a quorum of 2f in 12 seeds"


def test_same_seed_replays_identically_and_another_seed_differs() -> None:
    first, second, other = run(seed=5, txs=20), run(seed=5, txs=20), run(seed=6, txs=20)
    assert first.trace_digest == second.trace_digest
    assert first.heights == second.heights and first.simulator == second.simulator
    assert other.trace_digest != first.trace_digest


def test_encoded_frames_give_the_same_protocol_behaviour() -> None:
    report = run(seed=2, txs=20, wire=True)
    assert report.failures == []


def test_failing_seed_prints_the_command_that_replays_it(capsys: pytest.CaptureFixture) -> None:
    code = main(["--validators", "4", "--seed", "36", "--seeds", "1", "--txs", "60",
                 "--planted-bug", "quorum-2f", "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert "conflicting blocks" in err
    assert ("python -m simulations.pbft_scenario --validators 4 --seed 36 --txs 60 "
            "--safety-ms 20000 --liveness-ms 60000 --planted-bug quorum-2f") in err
