"""Seeded PBFT simulations across validator-set changes: a joiner enters, a validator
leaves, under loss, reordering, partitions and crashes around the boundary, and then one
genesis validator stays down so blocks commit only with the joiner's vote."""

from __future__ import annotations

import pytest

from simulations.pbft_epochs import EpochScenario
from simulations.pbft_scenario import FaultOptions, Report, ScenarioConfig, main


def run(**overrides: object) -> tuple[EpochScenario, Report]:
    config = ScenarioConfig(**{"txs": 40, "epoch_change": True, **overrides})  # type: ignore[arg-type]
    scenario = EpochScenario(config)
    return scenario, scenario.run()


@pytest.mark.parametrize("seed", range(1, 31))
def test_a_validator_joins_and_one_leaves_safely_and_live_under_faults(seed: int) -> None:
    scenario, report = run(seed=seed)
    assert report.failures == [], scenario.config.command()
    sizes = [size for _, size in report.validator_sets]
    assert sizes[0] == 4 and 5 in sizes and sizes[-1] == 4
    assert all(epoch % 4 == 0 for epoch, _ in report.validator_sets)
    assert scenario.joiner_commits_after_crash > 0
    joiner_key = scenario.nodes[scenario.joiner].public_key
    leaver_key = scenario.nodes[scenario.leaver].public_key
    assert joiner_key in scenario.reference.validators
    assert leaver_key not in scenario.reference.validators
    leaver = scenario.sim.core(scenario.leaver)
    assert leaver is not None and leaver.index is None  # passive, and it kept up:
    assert leaver.executed > max(epoch for epoch, _ in report.validator_sets)
    assert leaver.ledger.state_root == scenario.agreed[leaver.executed][1]
    cores = [scenario.sim.core(a) for a in range(len(scenario.nodes))]
    stats = [core.statistics() for core in cores if core is not None]
    assert all(s.peer_errors == 0 for s in stats)  # other epochs' messages: never blamed


def test_the_seeds_inject_loss_reordering_partitions_and_crashes() -> None:
    options = [EpochScenario(ScenarioConfig(seed=s, epoch_change=True)).options
               for s in range(1, 31)]
    assert any(o.loss for o in options) and any(o.partitions for o in options)
    assert any(o.crashes for o in options) and any(o.duplication for o in options)
    assert {o.latency_jitter_mean_ms for o in options} >= {5.0, 100.0}
    assert all(o.byzantine == () for o in options)


@pytest.mark.parametrize("seed", range(1, 4))
def test_seven_validators_grow_to_eight_and_shrink_back(seed: int) -> None:
    scenario, report = run(seed=seed, validators=7)
    assert report.failures == [], scenario.config.command()
    assert [size for _, size in report.validator_sets][-1] == 7 and scenario.victim is not None


def test_the_planted_quorum_bug_is_still_caught_across_epochs() -> None:
    """Without Byzantine replicas a 2f quorum diverges only under unlucky faults (about one
    seed in twenty here), so look until the first catch."""
    for seed in range(30, 90):
        failures = run(seed=seed, planted_bug="quorum-2f")[1].failures
        if any("conflicting blocks" in f or "does not execute" in f for f in failures):
            return
    raise AssertionError("the checker missed a quorum of 2f in 60 epoch-change seeds")


def test_worst_case_faults_across_the_boundary() -> None:
    options = FaultOptions(loss=0.15, duplication=0.1, latency_jitter_mean_ms=100.0,
                           partitions=3, crashes=6)
    config = ScenarioConfig(seed=77, txs=40, epoch_change=True)
    scenario = EpochScenario(config, options)
    report = scenario.run()
    assert report.failures == [], config.command()
    assert report.simulator["messages_lost"] > 0
    assert scenario.boundary_crashed and scenario.victim is not None


def test_encoded_frames_across_the_boundary() -> None:
    _, report = run(seed=3, wire=True)
    assert report.failures == []


def test_same_seed_replays_identically() -> None:
    (_, first), (_, second) = run(seed=9, txs=20), run(seed=9, txs=20)
    assert first.trace_digest == second.trace_digest
    assert first.validator_sets == second.validator_sets


def test_the_scenario_script_runs_epoch_changes(capsys: pytest.CaptureFixture) -> None:
    code = main(["--seed", "4", "--seeds", "2", "--txs", "30", "--epoch-change"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 seeds, 0 failed" in out
