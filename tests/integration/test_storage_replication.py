"""Replication between real processes: a root pinned on one node reaches R holders among
the nodes that accept replicas, and a node with replication off never takes one."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from prsm_node.config import load_config, render_toml
from prsm_node.datadir import DataDir
from prsm_node.devnet import Devnet, wait_for

from .test_storage_exchange import MIB, call

pytestmark = pytest.mark.multiprocess

FACTOR = 3


def test_a_pinned_root_reaches_the_replication_factor(
    make_devnet: Callable[..., Devnet], short_dir: Path
) -> None:
    devnet = make_devnet(5, start=False)
    for index, node in enumerate(devnet.nodes):
        path = DataDir(node.data_dir).config_file
        config = load_config(path)
        storage = replace(
            config.storage,
            fsync=False,
            replication_factor=FACTOR,
            replication_interval_ms=300,
            replicate=index in (1, 2, 3),
        )
        path.write_text(render_toml(replace(config, storage=storage)))
    devnet.start_all()
    for index in range(5):
        devnet.wait_ready(index)
    for index in range(5):
        wait_for(
            lambda index=index: len(devnet.call(index, "peers_list")["peers"]) == 4,
            30,
            f"node{index} connected to every other node",
        )
    source = short_dir / "model.bin"
    source.write_bytes(os.urandom(3 * MIB))
    cid = call(devnet, 0, "store_add", {"path": str(source)})["cid"]

    def holders() -> list[int]:
        """Nodes that pin the root and are not fetching it any more (the pin comes first)."""
        return [
            i
            for i in range(5)
            if cid in call(devnet, i, "store_ls")["pins"]
            and not call(devnet, i, "store_stat")["fetches"]
        ]

    wait_for(lambda: len(holders()) >= FACTOR, 30, f"{FACTOR} nodes holding {cid}")
    held = holders()
    assert 0 in held and 4 not in held, held  # node4 has replication off
    for index in held:  # each holder has the whole DAG: a get needs nothing from the network
        result = call(devnet, index, "store_get", {"cid": cid})
        assert result["blocks_fetched"] == 0 and result["blocks_local"] == 4
    refusals = call(devnet, 4, "store_stat")["replication"]
    assert refusals["offers_accepted"] == 0
