"""Real node processes on 127.0.0.1, started through the devnet launcher and always stopped."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from consensus.genesis import Params
from prsm_node.config import NetworkConfig, RegistrySection
from prsm_node.devnet import DEVNET_REGISTRY, Devnet, devnet_init

pytestmark = pytest.mark.multiprocess

# Fast timers so that conditions are reached quickly; the tests still poll, never sleep.
TEST_NETWORK = replace(
    NetworkConfig(),
    ping_interval_ms=500,
    peer_exchange_interval_ms=1000,
    dial_backoff_initial_ms=100,
    dial_backoff_max_ms=1000,
    dial_timeout_ms=2000,
)


LOG_TAIL_LINES = 30
LOG_TAIL_NODES = 8
LOG_LINE_CHARS = 400


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failed test that ran nodes shows their last log lines in its report: the data
    dirs are deleted at teardown, and a failure seen only on CI is otherwise a guess."""
    report = yield
    devnets: list[Devnet] = getattr(item, "devnets", [])
    if report.when == "call" and report.failed and devnets:
        report.sections.append(("node logs (last lines)", _log_tails(devnets)))
    return report


def _log_tails(devnets: list[Devnet]) -> str:
    parts = []
    for number, devnet in enumerate(devnets):
        for index, node in enumerate(devnet.nodes[:LOG_TAIL_NODES]):
            path = node.data_dir / "logs" / "process.log"
            try:
                lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            except OSError as error:
                lines = [f"({error})"]
            parts.append(f"--- devnet {number} node{index} ({path}) ---")
            parts += [line[:LOG_LINE_CHARS] for line in lines]
    return "\n".join(parts)


@pytest.fixture
def make_devnet(short_dir: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Devnet]]:
    started: list[Devnet] = []
    request.node.devnets = started  # for the failure report (pytest_runtest_makereport)

    def make(
        nodes: int,
        network: NetworkConfig = TEST_NETWORK,
        start: bool = True,
        validators: int | None = None,
        params: Params | None = None,
        registry: RegistrySection = DEVNET_REGISTRY,
    ) -> Devnet:
        directory = short_dir / f"net{len(started)}"
        devnet = Devnet(devnet_init(directory, nodes, network, validators=validators,
                                    params=params, registry=registry))
        started.append(devnet)
        if start:
            devnet.start_all()
            for index in range(nodes):
                devnet.wait_ready(index)
        return devnet

    yield make
    for devnet in started:
        devnet.stop_all()


def run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """`prsm-node ARGS` as a user types it, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "prsm_node", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )
