"""The FTNS ledger across real processes: a lone node is a one-validator devnet; four
validators from the devnet launcher agree, survive a SIGKILLed primary, and a restarted
replica catches up to the same state."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest

from consensus.codec import Ed25519Signer
from consensus.genesis import Genesis
from consensus.tx import SignedTx, TxBody, TxKind, sign_tx
from prsm_node.control import ControlClientError, RpcCallError
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


def wait_same_head(devnet: Devnet, indexes: list[int], height_min: int) -> dict:
    def agreed() -> dict | None:
        heads = [head(devnet, index) for index in indexes]
        same = {(h["height"], h["block_hash"], h["state_root"]) for h in heads}
        return heads[0] if len(same) == 1 and heads[0]["height"] >= height_min else None

    try:
        return wait_for(agreed, 60, f"nodes {indexes} agreeing on one head at >= {height_min}")
    except TimeoutError as error:
        heights = {index: head(devnet, index)["height"] for index in indexes}
        raise TimeoutError(f"{error}; heights {heights}") from None


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


class Load:
    """Clients submitting transfers to every validator until stopped; a client whose node is
    down retries at a steady pace. Keeps every acknowledged commit."""

    def __init__(self, devnet: Devnet, nodes: list[int]) -> None:
        self.devnet, self.stop = devnet, threading.Event()
        self.acknowledged: list[dict] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in nodes]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)

    def _run(self, index: int) -> None:
        while not self.stop.is_set():
            try:
                self.acknowledged.append(transfer(self.devnet, index))
            except ControlClientError:
                self.stop.wait(0.2)  # its node is down or busy: pace the retries

    def wait_more(self, count: int, what: str) -> None:
        target = len(self.acknowledged) + count
        wait_for(lambda: len(self.acknowledged) >= target, 90, what)


def test_four_validators_and_a_follower_survive_killed_primary_and_backup(
    make_devnet: Callable[..., Devnet],
) -> None:
    devnet = make_devnet(5, validators=4)
    devnet.wait_meshed()
    validators = devnet.call(0, "ledger_validators")
    assert len(validators["validators"]) == 4 and validators["quorum"] == 3
    order = [v["peer_id"] for v in validators["validators"]]
    node_of = {node.peer_id: index for index, node in enumerate(devnet.nodes)}
    primary, backup = node_of[order[0]], node_of[order[1]]
    follower = 4
    assert devnet.nodes[follower].peer_id not in order

    with Load(devnet, [node_of[peer] for peer in order]) as load:
        load.wait_more(10, "commits under steady load")
        devnet.kill(primary)
        load.wait_more(10, "commits after the primary was killed")
        devnet.start(primary)
        devnet.wait_ready(primary)
        devnet.kill(backup)
        load.wait_more(10, "commits after a backup was killed")
        devnet.start(backup)
        devnet.wait_ready(backup)
        load.wait_more(5, "commits with every validator back")
    # A follower has no mempool: its transaction goes through a validator.
    load.acknowledged.append(transfer(devnet, follower))
    acknowledged = len(load.acknowledged)
    top = max(c["height"] for c in load.acknowledged)
    final = wait_same_head(devnet, [0, 1, 2, 3, follower], top)
    assert final["supply"] == "5004000"  # 5 funded accounts + 4 stakes, nothing minted
    assert head(devnet, primary)["view"] >= 1  # the first primary was voted out
    sinks = {devnet.call(i, "wallet_balance", {"address": SINK})["balance"] for i in range(5)}
    assert len(sinks) == 1  # every node, the follower too, holds the same balances
    assert int(sinks.pop()) >= acknowledged  # every acknowledged transfer is in the ledger
    assert devnet.call(follower, "node_statistics")["ledger"]["followed"] >= final["height"]
    restarted = devnet.call(primary, "node_statistics")["ledger"]
    assert restarted["executed_height"] == final["height"] and restarted["phase"] == "normal"


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
    later = signed(nonce=account["nonce"] + 1)
    admitted = devnet.call(0, "tx_submit", {"tx": later.encoded.hex(), "wait": False})
    assert admitted == {"tx_hash": later.tx_hash.hex(), "height": None}
    wait_for(
        lambda: devnet.call(0, "wallet_balance", {"address": SINK})["balance"] == "2",
        30,
        "the admitted transfer committed",
    )
