"""Control methods of the ledger: wallet_address, wallet_balance, tx_transfer, tx_stake,
tx_unstake, tx_register_validator, ledger_head, ledger_block, ledger_validators. Documented in
docs/control-api.md.

Amounts cross the API as decimal strings: FTNS with up to 18 decimals ("12.5") in, and
both FTNS and integer base units out, because 10**18 base units per FTNS overflow a JSON
number in many clients. Addresses are hex Ed25519 public keys.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from consensus.certificates import quorum_size
from consensus.genesis import UNITS_PER_FTNS
from consensus.ledger import Account, verify_account_proof
from consensus.tx import TxKind, admitted_tx_hash
from prsm_node.control import Dispatcher, ErrorCode, Param, RpcError
from prsm_node.ledger_service import LedgerService, TxFailed

TX_WAIT_S_MAX = 120.0
FTNS_DECIMALS = 18


def parse_ftns(text: str, name: str = "amount") -> int:
    """Base units from a decimal FTNS string, exactly (no floats)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise RpcError(
            ErrorCode.INVALID_PARAMS, f"param '{name}': not a number: {text!r}"
        ) from None
    units = value * UNITS_PER_FTNS
    if not value.is_finite() or units != units.to_integral_value() or units <= 0:
        raise RpcError(
            ErrorCode.INVALID_PARAMS,
            f"param '{name}': must be a positive amount with at most {FTNS_DECIMALS} decimals",
        )
    return int(units)


def format_ftns(units: int) -> str:
    whole, fraction = divmod(units, UNITS_PER_FTNS)
    text = f"{whole}.{fraction:018d}".rstrip("0").rstrip(".")
    return text


def parse_address(text: str, name: str) -> bytes:
    """A 32-byte account key from its 64 hex digits; a JSON-RPC error names the param."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise RpcError(ErrorCode.INVALID_PARAMS, f"param '{name}': not a 64-hex-digit address")
    return key


def _account_json(key: bytes, account: Account) -> dict[str, Any]:
    return {
        "address": key.hex(),
        "balance": format_ftns(account.balance),
        "balance_units": str(account.balance),
        "staked": format_ftns(account.staked),
        "unbonding": [
            {"release_height": height, "amount": format_ftns(amount)}
            for height, amount in account.unbonding
        ],
        "nonce": account.nonce,
        "validator": account.validator,
    }


class LedgerMethods:
    """The wallet_*, tx_* and ledger_* control methods, bound to the ledger service."""

    def __init__(self, ledger: LedgerService) -> None:
        self._ledger = ledger

    def register(self, dispatcher: Dispatcher) -> None:
        dispatcher.register("wallet_address", self.wallet_address)
        dispatcher.register(
            "wallet_balance",
            self.wallet_balance,
            [Param("address", str, None), Param("proof", bool, False)],
        )
        wait = Param("wait_s", float, 30.0)
        dispatcher.register(
            "tx_transfer", self.tx_transfer, [Param("to", str), Param("amount", str), wait]
        )
        dispatcher.register(
            "tx_submit", self.tx_submit, [Param("tx", str), wait, Param("wait", bool, True)]
        )
        dispatcher.register("tx_stake", self.tx_stake, [Param("amount", str), wait])
        dispatcher.register("tx_unstake", self.tx_unstake, [Param("amount", str), wait])
        dispatcher.register("tx_register_validator", self.tx_register_validator, [wait])
        dispatcher.register("ledger_head", self.ledger_head)
        dispatcher.register("ledger_block", self.ledger_block, [Param("height", int)])
        dispatcher.register("ledger_validators", self.ledger_validators)

    async def wallet_address(self) -> dict[str, Any]:
        return {"address": self._ledger.signer.public_key.hex()}

    async def wallet_balance(
        self, address: str | None = None, proof: bool = False
    ) -> dict[str, Any]:
        own = self._ledger.signer.public_key
        key = own if address is None else parse_address(address, "address")
        state = self._ledger.ledger()
        answer = _account_json(key, state.account(key)) | {"height": state.height}
        if proof:
            account_proof = state.prove_account(key)
            if account_proof is None:
                answer["proof"] = None
            else:
                answer["proof"] = {
                    "state_root": state.state_root.hex(),
                    "accounts_root": account_proof.accounts_root.hex(),
                    "path": [[sibling.hex(), right] for sibling, right in account_proof.path],
                    "verified": verify_account_proof(state.state_root, account_proof),
                }
        return answer

    async def tx_transfer(self, to: str, amount: str, wait_s: float = 30.0) -> dict[str, Any]:
        to_key = parse_address(to, "to")
        return await self._submit(TxKind.TRANSFER, parse_ftns(amount), to_key, wait_s)

    async def tx_submit(self, tx: str, wait_s: float = 30.0, wait: bool = True) -> dict[str, Any]:
        """A transaction signed elsewhere (hex of its canonical bytes): every check runs.
        With `wait` false the answer comes once the mempool took it (height null)."""
        _check_wait(wait_s)
        try:
            encoded = bytes.fromhex(tx)
        except ValueError:
            raise RpcError(ErrorCode.INVALID_PARAMS, "param 'tx': not hex") from None
        if not wait:
            try:
                await self._ledger.admit(encoded)
            except TxFailed as error:
                raise RpcError(
                    ErrorCode.NODE_ERROR, f"transaction {error.reason_code}: {error}"
                ) from None
            return {"tx_hash": admitted_tx_hash(encoded).hex(), "height": None}
        try:
            committed = await self._ledger.submit(encoded, wait_s)
        except TxFailed as error:
            raise RpcError(
                ErrorCode.NODE_ERROR, f"transaction {error.reason_code}: {error}"
            ) from None
        return {"tx_hash": committed.tx_hash.hex(), "height": committed.height}

    async def tx_stake(self, amount: str, wait_s: float = 30.0) -> dict[str, Any]:
        return await self._submit(TxKind.STAKE, parse_ftns(amount), b"", wait_s)

    async def tx_unstake(self, amount: str, wait_s: float = 30.0) -> dict[str, Any]:
        return await self._submit(TxKind.UNSTAKE, parse_ftns(amount), b"", wait_s)

    async def tx_register_validator(self, wait_s: float = 30.0) -> dict[str, Any]:
        """Flag this node's account as a validator candidate; it joins the set at the next
        epoch boundary if its stake is at least `validator_stake_min`."""
        return await self._submit(TxKind.REGISTER_VALIDATOR, 0, b"", wait_s)

    async def _submit(self, kind: TxKind, amount: int, to: bytes, wait_s: float) -> dict[str, Any]:
        _check_wait(wait_s)
        try:
            committed = await self._ledger.submit_own(kind, amount, to, wait_s)
        except TxFailed as error:
            raise RpcError(
                ErrorCode.NODE_ERROR, f"transaction {error.reason_code}: {error}"
            ) from None
        return {
            "tx_hash": committed.tx_hash.hex(),
            "height": committed.height,
            "kind": kind.value,
            "amount": format_ftns(amount),
        }

    async def ledger_head(self) -> dict[str, Any]:
        state = self._ledger.ledger()
        replica = self._ledger.replica
        return {
            "chain_id": self._ledger.genesis.chain_id,
            "height": state.height,
            "block_hash": state.last_block_hash.hex(),
            "state_root": state.state_root.hex(),
            "validator_index": self._ledger.index,
            "view": replica.view if self._ledger.index is not None else None,
            "epoch": replica.epoch,
            "supply": format_ftns(state.supply_now()),
        }

    async def ledger_block(self, height: int) -> dict[str, Any]:
        found = await self._ledger.block(height)
        if found is None:
            raise RpcError(
                ErrorCode.NODE_ERROR,
                f"no block at height {height} (head is {self._ledger.ledger().height})",
            )
        block, certificate = found
        return {
            "height": block.height,
            "block_hash": block.block_hash.hex(),
            "prev_hash": block.prev_hash.hex(),
            "timestamp_ms": block.timestamp_ms,
            "state_root": block.state_root.hex(),
            "txs": len(block.txs),
            "commit_signatures": len(certificate),
        }

    async def ledger_validators(self) -> dict[str, Any]:
        keys = self._ledger.validator_keys
        f = (len(keys) - 1) // 3
        return {
            "epoch": self._ledger.epoch,
            "height": self._ledger.ledger().height,
            "validators": [
                {"index": index, "public_key": key.hex(), "peer_id": peer_id}
                for index, (key, peer_id) in enumerate(
                    zip(keys, self._ledger.peer_ids, strict=True)
                )
            ],
            "f": f,
            "quorum": quorum_size(len(keys)),  # 2f+1 when n = 3f+1; 4 of 5
        }


def _check_wait(wait_s: float) -> None:
    if not 0 < wait_s <= TX_WAIT_S_MAX:
        raise RpcError(ErrorCode.INVALID_PARAMS, f"param 'wait_s': 0 < wait_s <= {TX_WAIT_S_MAX:g}")
