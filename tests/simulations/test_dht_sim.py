"""Seeded DHT simulations: success under loss and churn, expiry and republish, replay."""

from __future__ import annotations

import pytest

from simulations.dht_scenario import DhtScenario, Report, ScenarioConfig, main

SEEDS = (1, 2, 3)


def run(**overrides: object) -> Report:
    config = ScenarioConfig(**{"nodes": 200, "lookups": 100, "records": 10, **overrides})
    report = DhtScenario(config).run()
    assert report.lookups, config.command()
    return report


@pytest.fixture(scope="module")
def churn_reports() -> list[Report]:
    return [run(seed=seed, churn=0.2, loss=0.01, duplication=0.01) for seed in SEEDS]


def _rate(reports: list[Report], kind: str) -> float:
    total = sum(r.lookups[kind]["count"] for r in reports)
    good = sum(r.lookups[kind]["success_rate"] * r.lookups[kind]["count"] for r in reports)
    return good / total


def test_lookups_find_true_closest_and_values_under_churn_and_loss(
    churn_reports: list[Report],
) -> None:
    for report in churn_reports:
        assert report.simulator["messages_lost"] > 0
        assert report.simulator["messages_to_down_nodes"] > 0  # churn really happened
        assert report.lookups["find_node"]["count"] >= 90
    assert _rate(churn_reports, "find_node") >= 0.99
    assert _rate(churn_reports, "get_value") >= 0.99
    assert _rate(churn_reports, "get_providers") >= 0.99
    for report in churn_reports:
        assert report.lookups["find_node"]["deadline_hit"] == 0
        assert 1 <= report.lookups["find_node"]["rounds_mean"] <= 6
        assert report.lookups["unfinished"]["count"] == 0


def test_records_expire_and_republished_records_survive(churn_reports: list[Report]) -> None:
    for report in churn_reports:
        assert report.lookups["get_expired"]["success_rate"] == 1.0  # mortal records gone
        assert report.lookups["get_value_late"]["success_rate"] == 1.0  # republished found
        assert report.expiry["records_expired_at_live_nodes"] > 0
        assert report.expiry["republished_at_live_nodes"] > 0


def test_same_seed_replays_identically_and_another_seed_differs() -> None:
    first = run(nodes=60, lookups=30, records=6, seed=9)
    second = run(nodes=60, lookups=30, records=6, seed=9)
    other = run(nodes=60, lookups=30, records=6, seed=10)
    assert first.trace_digest == second.trace_digest
    assert first.results_digest == second.results_digest
    assert first.simulator == second.simulator
    assert other.trace_digest != first.trace_digest


def test_encoded_frames_give_the_same_protocol_behaviour() -> None:
    report = run(nodes=60, lookups=30, records=6, seed=4, wire=True)
    assert report.lookups["find_node"]["success_rate"] >= 0.95
    assert report.node_counters["hostile_inputs"] == 0
    assert not report.failures


def test_failing_run_prints_the_command_that_replays_it(capsys: pytest.CaptureFixture) -> None:
    # total loss of every message: nothing can succeed, and the runner must say how to replay
    code = main(["--nodes", "20", "--lookups", "5", "--records", "2", "--seed", "3",
                 "--loss", "0.99"])
    assert code == 1
    err = capsys.readouterr().err
    assert "FAILED" in err
    assert "python -m simulations.dht_scenario --nodes 20 --seed 3" in err
