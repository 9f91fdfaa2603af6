"""`prsm-node wallet|tx|ledger ...`: the FTNS ledger from the command line.

Rules (as cli.py): no trio or libp2p imports; `--json` prints exactly one JSON object;
an error the node reports is one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

wallet_app = typer.Typer(help="The node's FTNS account.", no_args_is_help=True)
tx_app = typer.Typer(
    help="Sign and submit FTNS transactions with the node's key.", no_args_is_help=True
)
ledger_app = typer.Typer(help="Read the replicated FTNS ledger.", no_args_is_help=True)

DataDirOption = Annotated[Path | None, typer.Option("--data-dir", help="Data dir of the node.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
WaitOption = Annotated[float, typer.Option("--wait", help="Seconds to wait for the commit.")]


def _call(
    data_dir: Path | None,
    method: str,
    params: dict[str, Any] | None = None,
    timeout_s: float = 10.0,
) -> Any:
    from prsm_node.cli import _data_dir
    from prsm_node.control import ControlClient

    with ControlClient(_data_dir(data_dir).socket_path, timeout_s=timeout_s) as client:
        return client.call(method, params)


def _emit(result: dict[str, Any], json_output: bool, lines: list[str]) -> None:
    typer.echo(json.dumps(result) if json_output else "\n".join(lines))


@wallet_app.command("address")
def wallet_address(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """The node's account address (its Ed25519 public key, hex)."""
    result = _call(data_dir, "wallet_address")
    _emit(result, json_output, [result["address"]])


@wallet_app.command("balance")
def wallet_balance(
    address: Annotated[
        str | None, typer.Argument(help="Hex address (default: the node's).")
    ] = None,
    proof: Annotated[bool, typer.Option("--proof", help="Include a Merkle proof.")] = False,
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """An account's balance, stake and nonce at the ledger head."""
    params: dict[str, Any] = {"proof": proof}
    if address is not None:
        params["address"] = address
    result = _call(data_dir, "wallet_balance", params)
    lines = [
        f"address  {result['address']}",
        f"balance  {result['balance']} FTNS",
        f"staked   {result['staked']} FTNS",
        f"nonce    {result['nonce']}",
        f"height   {result['height']}",
    ]
    if proof and result.get("proof"):
        found = result["proof"]
        lines.append(f"proof    verified={found['verified']} (state root {found['state_root']})")
    _emit(result, json_output, lines)


def _submit(
    method: str, params: dict[str, Any], data_dir: Path | None, json_output: bool, wait_s: float
) -> None:
    result = _call(data_dir, method, params | {"wait_s": wait_s}, timeout_s=wait_s + 10)
    lines = [
        f"committed {result['kind']} of {result['amount']} FTNS at height {result['height']}",
        f"tx {result['tx_hash']}",
    ]
    _emit(result, json_output, lines)


@tx_app.command("transfer")
def tx_transfer(
    to: Annotated[str, typer.Argument(help="Recipient address (hex public key).")],
    amount: Annotated[str, typer.Argument(help="FTNS, up to 18 decimals, e.g. 12.5")],
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    wait_s: WaitOption = 30.0,
) -> None:
    """Transfer FTNS to another account and wait for the commit."""
    _submit("tx_transfer", {"to": to, "amount": amount}, data_dir, json_output, wait_s)


@tx_app.command("stake")
def tx_stake(
    amount: Annotated[str, typer.Argument(help="FTNS to bond.")],
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    wait_s: WaitOption = 30.0,
) -> None:
    """Bond FTNS as stake."""
    _submit("tx_stake", {"amount": amount}, data_dir, json_output, wait_s)


@tx_app.command("unstake")
def tx_unstake(
    amount: Annotated[str, typer.Argument(help="FTNS to unbond.")],
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    wait_s: WaitOption = 30.0,
) -> None:
    """Unbond stake; it returns to the balance after the unbonding period."""
    _submit("tx_unstake", {"amount": amount}, data_dir, json_output, wait_s)


@tx_app.command("register-validator")
def tx_register_validator(
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
    wait_s: WaitOption = 30.0,
) -> None:
    """Ask to join the validator set: the account needs validator_stake_min staked, and it
    joins at the next epoch boundary (genesis epoch_length_blocks)."""
    result = _call(data_dir, "tx_register_validator", {"wait_s": wait_s}, timeout_s=wait_s + 10)
    lines = [f"committed register_validator at height {result['height']}",
             f"tx {result['tx_hash']}"]
    _emit(result, json_output, lines)


@ledger_app.command("head")
def ledger_head(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """The latest committed block: height, hash and state root."""
    result = _call(data_dir, "ledger_head")
    lines = [f"{key:<15} {value}" for key, value in result.items()]
    _emit(result, json_output, lines)


@ledger_app.command("block")
def ledger_block(
    height: Annotated[int, typer.Argument(help="Block height.")],
    data_dir: DataDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """One committed block."""
    result = _call(data_dir, "ledger_block", {"height": height})
    lines = [f"{key:<17} {value}" for key, value in result.items()]
    _emit(result, json_output, lines)


@ledger_app.command("validators")
def ledger_validators(data_dir: DataDirOption = None, json_output: JsonOption = False) -> None:
    """The validator set, in replica order."""
    result = _call(data_dir, "ledger_validators")
    lines = [f"{v['index']:>3}  {v['public_key']}  {v['peer_id']}" for v in result["validators"]]
    lines.append(f"f = {result['f']}, quorum = {result['quorum']}")
    _emit(result, json_output, lines)
