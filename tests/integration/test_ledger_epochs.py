"""A validator joins the set at an epoch boundary across real processes: four validators and
a follower under transfer load; the follower stakes and registers through the CLI; after
the boundary every node lists five validators; then an original validator is SIGKILLed and
transfers still commit (n=5: the quorum is 4, so the newcomer must vote)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from consensus.genesis import Params
from prsm_node.devnet import Devnet, wait_for

from .conftest import run_cli
from .test_ledger_network import Load, head, wait_same_head

pytestmark = pytest.mark.multiprocess

EPOCH_LENGTH_BLOCKS = 8


def cli_json(devnet: Devnet, index: int, *args: str) -> dict:
    done = run_cli(*args, "--data-dir", str(devnet.nodes[index].data_dir), "--json",
                   timeout_s=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_follower_that_stakes_and_registers_becomes_a_voting_validator(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = make_devnet(5, validators=4, params=Params(epoch_length_blocks=EPOCH_LENGTH_BLOCKS))
    devnet.wait_meshed()
    genesis_set = devnet.call(0, "ledger_validators")
    assert genesis_set["epoch"] == 0 and len(genesis_set["validators"]) == 4
    node_of = {node.peer_id: index for index, node in enumerate(devnet.nodes)}
    originals = [node_of[v["peer_id"]] for v in genesis_set["validators"]]
    newcomer = 4
    assert newcomer not in originals

    with Load(devnet, originals) as load:
        load.wait_more(5, "commits under steady load")
        staked = cli_json(devnet, newcomer, "tx", "stake", "1000")
        registered = cli_json(devnet, newcomer, "tx", "register-validator")
        assert staked["kind"] == "stake" and registered["height"] >= staked["height"]

        def everyone_lists_five() -> bool:
            sets = [devnet.call(i, "ledger_validators") for i in range(5)]
            return all(len(s["validators"]) == 5 and s["epoch"] > 0 for s in sets)

        wait_for(everyone_lists_five, 120, "every node listing five validators")
        new_set = cli_json(devnet, newcomer, "ledger", "validators")
        assert new_set["quorum"] == 4 and new_set["epoch"] % EPOCH_LENGTH_BLOCKS == 0
        assert devnet.nodes[newcomer].peer_id in [v["peer_id"] for v in new_set["validators"]]
        for index in originals:
            assert cli_json(devnet, index, "ledger", "validators")["validators"] == \
                new_set["validators"]
        assert head(devnet, newcomer)["validator_index"] is not None

        order = [node_of[v["peer_id"]] for v in new_set["validators"]]
        victim = next(i for i in order[1:] if i != newcomer)  # an original backup
        devnet.kill(victim)
        killed_at = max(head(devnet, i)["height"] for i in range(5) if i != victim)
        load.wait_more(8, "commits with an original validator killed (quorum 4 of 5)")
    alive = [i for i in range(5) if i != victim]
    top = max(c["height"] for c in load.acknowledged)
    final = wait_same_head(devnet, alive, top)
    assert final["height"] > killed_at
    block = devnet.call(newcomer, "ledger_block", {"height": final["height"]})
    assert block["commit_signatures"] >= 4
    stats = devnet.call(newcomer, "node_statistics")["ledger"]
    assert stats["validator_index"] is not None and stats["validators"] == 5
    devnet.start(victim)
    devnet.wait_ready(victim)
    wait_same_head(devnet, list(range(5)), final["height"])
    assert devnet.call(victim, "ledger_validators")["validators"] == new_set["validators"]
