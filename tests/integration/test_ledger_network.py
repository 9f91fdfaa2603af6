"""The FTNS ledger across real processes: a lone node is a one-validator devnet; four
validators from the devnet launcher agree, survive a SIGKILLed primary, and a restarted
replica catches up to the same state."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from consensus.codec import Ed25519Signer
from consensus.genesis import Genesis
from consensus.tx import SignedTx, TxBody, TxKind, sign_tx
from prsm_node.control import RpcCallError
from prsm_node.devnet import Devnet, wait_for
from prsm_node.identity import read_seed

from .conftest import run_cli

pytestmark = pytest.mark.multiprocess

SINK = "aa" * 32


def head(devnet: Devnet, index: int) -> dict:
    return devnet.call(index, "ledger_head")


def transfer(devnet: Devnet, index: int, amount: str = "1", to: str = SINK) -> dict:
    with devnet.client(index, timeout_s=90) as client:
        return client.call("tx_transfer", {"to": to, "amount": amount, "wait_s": 60.0})


def wait_mesh(devnet: Devnet) -> None:
    for index in range(len(devnet.nodes)):
        wait_for(
            lambda index=index: (
                len(devnet.call(index, "peers_list")["peers"]) == len(devnet.nodes) - 1
            ),
            60,
            f"node{index} connected to every other validator",
        )


def wait_same_head(devnet: Devnet, indexes: list[int], height_min: int) -> dict:
    def agreed() -> dict | None:
        heads = [head(devnet, index) for index in indexes]
        same = {(h["height"], h["block_hash"], h["state_root"]) for h in heads}
        return heads[0] if len(same) == 1 and heads[0]["height"] >= height_min else None

    return wait_for(agreed, 60, f"nodes {indexes} agreeing on one head at >= {height_min}")


def test_lone_node_is_a_one_validator_ledger(make_devnet: Callable[..., Devnet]) -> None:
    devnet = make_devnet(1)
    before = devnet.call(0, "wallet_balance")
    result = transfer(devnet, 0, "12.5")
    assert result["height"] >= 1 and len(result["tx_hash"]) == 64
    sink = devnet.call(0, "wallet_balance", {"address": SINK, "proof": True})
    assert sink["balance"] == "12.5" and sink["proof"]["verified"] is True
    after = devnet.call(0, "wallet_balance")
    spent = int(before["balance_units"]) - int(after["balance_units"])
    # The fee goes to the validators, here the sender itself: it is out the amount only.
    assert spent == 12_500_000_000_000_000_000
    assert head(devnet, 0)["supply"] == "1001000"
    with devnet.client(0) as client:
        with pytest.raises(RpcCallError, match="insufficient_balance"):
            client.call("tx_transfer", {"to": SINK, "amount": "999999999"})
        with pytest.raises(RpcCallError, match="not a 64-hex-digit address"):
            client.call("tx_transfer", {"to": "00", "amount": "1"})
        with pytest.raises(RpcCallError, match="at most 18 decimals"):
            client.call("tx_transfer", {"to": SINK, "amount": "0.0000000000000000001"})
    block = devnet.call(0, "ledger_block", {"height": result["height"]})
    assert block["txs"] >= 1 and block["commit_signatures"] == 1


def test_four_validators_agree_and_survive_a_killed_primary(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = make_devnet(4)
    wait_mesh(devnet)
    validators = devnet.call(0, "ledger_validators")
    assert len(validators["validators"]) == 4 and validators["quorum"] == 3
    committed = [transfer(devnet, index % 4) for index in range(8)]
    wait_same_head(devnet, [0, 1, 2, 3], max(c["height"] for c in committed))

    primary_peer = validators["validators"][0]["peer_id"]
    primary = next(i for i, node in enumerate(devnet.nodes) if node.peer_id == primary_peer)
    alive = [index for index in range(4) if index != primary]
    devnet.kill(primary)
    committed += [transfer(devnet, alive[index % 3]) for index in range(6)]
    top = max(c["height"] for c in committed)
    wait_same_head(devnet, alive, top)
    assert head(devnet, alive[0])["view"] >= 1  # a view change replaced the primary

    devnet.start(primary)
    devnet.wait_ready(primary)
    committed.append(transfer(devnet, alive[0]))
    final = wait_same_head(devnet, [0, 1, 2, 3], committed[-1]["height"])
    assert final["supply"] == "4004000"
    sink = devnet.call(primary, "wallet_balance", {"address": SINK})
    assert sink["balance"] == str(len(committed))


def test_ledger_cli_prints_one_json_object(make_devnet: Callable[..., Devnet]) -> None:
    devnet = make_devnet(1)
    data_dir = str(devnet.nodes[0].data_dir)
    address = json.loads(run_cli("wallet", "address", "--data-dir", data_dir, "--json").stdout)
    sent = run_cli("tx", "transfer", SINK, "2", "--data-dir", data_dir, "--json")
    assert sent.returncode == 0, sent.stderr
    height = json.loads(sent.stdout)["height"]
    balance = json.loads(
        run_cli("wallet", "balance", SINK, "--data-dir", data_dir, "--json").stdout
    )
    assert balance["address"] == SINK and balance["balance"] == "2"
    mine = json.loads(run_cli("wallet", "balance", "--data-dir", data_dir, "--json").stdout)
    assert mine["address"] == address["address"]
    top = json.loads(run_cli("ledger", "head", "--data-dir", data_dir, "--json").stdout)
    assert {"height", "block_hash", "state_root"} <= set(top) and top["height"] >= height
    block = json.loads(
        run_cli("ledger", "block", str(height), "--data-dir", data_dir, "--json").stdout
    )
    assert block["height"] == height
    validators = json.loads(
        run_cli("ledger", "validators", "--data-dir", data_dir, "--json").stdout
    )
    assert validators["validators"][0]["public_key"] == address["address"]
    staked = run_cli("tx", "stake", "5", "--data-dir", data_dir, "--json")
    assert json.loads(staked.stdout)["kind"] == "stake"
    overspend = run_cli("tx", "transfer", SINK, "99999999", "--data-dir", data_dir)
    assert overspend.returncode == 1 and "insufficient_balance" in overspend.stderr
    assert "Traceback" not in overspend.stderr


def test_bad_transactions_are_rejected_and_never_enter_a_block(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = make_devnet(1)
    node = devnet.nodes[0]
    signer = Ed25519Signer.from_seed(read_seed(node.data_dir / "node.key"))
    genesis = Genesis.from_json((node.data_dir / "genesis.json").read_text())
    account = devnet.call(0, "wallet_balance")

    def signed(**changes: object) -> SignedTx:
        fields = {
            "chain_id": genesis.chain_id,
            "kind": TxKind.TRANSFER,
            "sender": signer.public_key,
            "nonce": account["nonce"],
            "fee": genesis.params.fee_min,
            "amount": 10**18,
            "to": bytes.fromhex(SINK),
        }
        return sign_tx(TxBody(**(fields | changes)), signer)

    good = signed()
    forged = good.encoded.replace(good.signature, bytes(64))
    cases = {
        "bad_signature": forged,
        "wrong_chain": signed(chain_id="another-chain").encoded,
        "insufficient_balance": signed(amount=10**30).encoded,
        "fee_too_low": signed(fee=0).encoded,
        "oversize": good.encoded + b"\0" * genesis.params.tx_size_max,
    }
    height_before = head(devnet, 0)["height"]
    with devnet.client(0, timeout_s=60) as client:
        for reason, data in cases.items():
            with pytest.raises(RpcCallError) as caught:
                client.call("tx_submit", {"tx": data.hex(), "wait_s": 10.0})
            assert reason in caught.value.message or "malformed" in caught.value.message, reason
        committed = client.call("tx_submit", {"tx": good.encoded.hex()})
        with pytest.raises(RpcCallError, match=r"nonce|duplicate"):  # the same tx replayed
            client.call("tx_submit", {"tx": good.encoded.hex(), "wait_s": 10.0})
    assert committed["height"] == height_before + 1
    sink = devnet.call(0, "wallet_balance", {"address": SINK})
    assert sink["balance"] == "1"  # only the good transfer moved money
