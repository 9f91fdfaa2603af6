"""The genesis document: chain id, allocations, the first validator set and the parameters.

Rules:
1. Amounts are integers in base units (``UNITS_PER_FTNS`` = 10**18, as the ERC-20); JSON
   carries them (and every parameter) as integers or decimal strings, never floats;
   ``to_json`` writes decimal strings, since 10^21 does not fit a 64-bit integer.
2. Public keys are 32-byte Ed25519 keys, hex in JSON. Every genesis validator is an account
   whose ``stake`` is bonded at height 0 and counts in the total supply.
3. ``genesis_hash`` is ``sha256(canonical(plain))``: two nodes agree on the chain only when
   they agree on every byte of its genesis (the store refuses a data dir of another chain).
4. Every parameter is bounded and checked here, naming the field (house rule 3).

JSON format (``Genesis.from_json`` / ``to_json``)::

    {"chain_id": "prsm-devnet-1", "genesis_time_ms": 0,
     "allocations": [{"account": "<64 hex>", "balance": "1000000000000000000000"}],
     "validators": [{"public_key": "<64 hex>", "stake": "1000000000000000000000"}],
     "params": {"fee_min": 1000000000000000, "unbonding_period_blocks": 100, ...}}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from consensus.codec import PUBLIC_KEY_SIZE, canonical, sha256
from consensus.errors import GenesisError
from consensus.job_args import BPS_MAX

UNITS_PER_FTNS = 10**18
CHAIN_ID_SIZE_MAX = 64
VALIDATORS_MAX = 100
"""PBFT sends O(n^2) messages per block; 100 validators is ~30k signed messages a block."""
JOB_CANDIDATES_MAX = 32
"""Ranked workers per job record at most: 32 x 32 B keeps a job leaf near 1.5 KB."""
ZERO_ALLOWED = frozenset({"fee_min", "job_fee_bps", "slash_bps", "dispute_bond_bps"})
"""Parameters a devnet may set to 0 (free transactions, no job fee, no slashing, no bond)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Params:
    """Ledger parameters; every limit has a reason."""

    fee_min: int = 10**15
    """0.001 FTNS per transaction: spam costs money, a transfer stays cheap."""
    unbonding_period_blocks: int = 100
    """Stake stays slashable this long after ``unstake`` (Cosmos: 21 days; a devnet: short)."""
    epoch_length_blocks: int = 100
    """Validator-set changes wait for the next multiple of this height."""
    batch_size_max: int = 500
    """Transactions per block: 500 x ~250 B = ~125 KB, one frame; >2,000 tx/s at 4 blocks/s."""
    tx_size_max: int = 1024
    """Bytes per encoded signed transaction; a transfer is ~250 B."""
    validator_stake_min: int = 1000 * UNITS_PER_FTNS
    validators_max: int = VALIDATORS_MAX
    accounts_max: int = 10_000_000
    """Accounts in the state; past it, transfers to new accounts are refused (ledger_full)."""
    unbonding_entries_max: int = 16
    """Pending unbondings per account; each is a row in the proof, so keep it small."""

    # -- the job market (consensus/ledger_jobs.py) --
    worker_stake_min: int = 100 * UNITS_PER_FTNS
    """Worker stake needed to be assigned jobs; what a wrong result risks (``slash_bps``)."""
    workers_max: int = 100_000
    models_max: int = 100_000
    model_workers_max: int = 1_000
    """Workers per model: a job_submit ranks them all (one SHA-256 each, ~0.5 ms at 1,000)."""
    jobs_max: int = 100_000
    """Jobs in the state, open or finished and not yet expired; past it job_submit waits."""
    job_candidates_max: int = 8
    """Ranked workers kept per job: the assignee, the ones that take over after a failure
    or a timeout, and the two verifiers of a dispute; 8 x 32 B per job record."""
    job_assign_timeout_ms: int = 600_000
    """A turn (and a dispute's verification): 10 minutes to post a result, then the next
    ranked worker gets the job. Long jobs (distillation) need a longer one."""
    job_deadline_max_ms: int = 7 * 24 * 3600 * 1000
    """A job's deadline is at most a week ahead: escrow is never locked longer."""
    challenge_window_ms: int = 600_000
    """After a result, the submitter has 10 minutes to dispute; then it settles."""
    job_retention_ms: int = 24 * 3600 * 1000
    """A finished job stays queryable in the state for a day, then expires."""
    job_fee_bps: int = 100
    """1 % of a job's price to the validators, as transaction fees."""
    slash_bps: int = 1_000
    """10 % of a worker's stake per result outvoted in a dispute."""
    dispute_bond_bps: int = 10_000
    """A dispute bonds 100 % of the job price: a wrong dispute pays its verifiers."""
    job_timers_per_block_max: int = 1_000
    """Job timer moves per block (each a few record writes): a block's execution stays
    bounded after a long pause; the rest move in the next block."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or value < (0 if field.name in ZERO_ALLOWED else 1):
                raise GenesisError(f"genesis params: {field.name} must be a positive integer")
        if self.validators_max > VALIDATORS_MAX:
            raise GenesisError(f"genesis params: validators_max must be <= {VALIDATORS_MAX}")
        if self.tx_size_max * self.batch_size_max > 64 * 1024 * 1024:
            raise GenesisError("genesis params: tx_size_max x batch_size_max must be <= 64 MiB")
        self._check_job_params()

    def _check_job_params(self) -> None:
        for name, maximum in (("job_fee_bps", BPS_MAX), ("slash_bps", BPS_MAX),
                              ("dispute_bond_bps", 10 * BPS_MAX),
                              ("job_candidates_max", JOB_CANDIDATES_MAX)):
            if getattr(self, name) > maximum:
                raise GenesisError(f"genesis params: {name} must be <= {maximum}")
        if self.job_candidates_max < 3:
            raise GenesisError("genesis params: job_candidates_max must be >= 3 (a worker and "
                               "two verifiers)")
        if self.job_deadline_max_ms < self.job_assign_timeout_ms:
            raise GenesisError("genesis params: job_deadline_max_ms must be >= "
                               "job_assign_timeout_ms")
        if self.model_workers_max > self.workers_max:
            raise GenesisError("genesis params: model_workers_max must be <= workers_max")


def _amount(value: Any, name: str) -> int:
    if type(value) is str and value.isdigit():
        value = int(value)
    if type(value) is not int or value < 0:
        raise GenesisError(f"genesis: {name} must be a non-negative integer")
    return value


def _key(value: Any, name: str) -> bytes:
    try:
        key = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
    except (TypeError, ValueError) as error:
        raise GenesisError(f"genesis: {name} is not hex") from error
    if len(key) != PUBLIC_KEY_SIZE:
        raise GenesisError(f"genesis: {name} must be a 32-byte Ed25519 public key")
    return key


@dataclass(frozen=True, slots=True, kw_only=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    allocations: tuple[tuple[bytes, int], ...]
    validators: tuple[tuple[bytes, int], ...]
    params: Params

    def __post_init__(self) -> None:
        if not self.chain_id or len(self.chain_id.encode()) > CHAIN_ID_SIZE_MAX:
            raise GenesisError(f"genesis: chain_id must be 1..{CHAIN_ID_SIZE_MAX} bytes")
        if self.genesis_time_ms < 0:
            raise GenesisError("genesis: genesis_time_ms must be >= 0")
        keys = [key for key, _ in self.allocations]
        if len(set(keys)) != len(keys):
            raise GenesisError("genesis: allocations list an account twice")
        validator_keys = [key for key, _ in self.validators]
        if not validator_keys or len(set(validator_keys)) != len(validator_keys):
            raise GenesisError("genesis: validators must be a non-empty list without repeats")
        if len(validator_keys) > self.params.validators_max:
            raise GenesisError("genesis: more validators than params.validators_max")
        for key, stake in self.validators:
            if stake < self.params.validator_stake_min:
                raise GenesisError(f"genesis: validator {key.hex()[:16]} stakes less than "
                                   "params.validator_stake_min")

    @property
    def total_supply(self) -> int:
        return sum(b for _, b in self.allocations) + sum(s for _, s in self.validators)

    def validator_keys(self) -> tuple[bytes, ...]:
        """The PBFT replica order: sorted public keys (replica i is the i-th)."""
        return tuple(sorted(key for key, _ in self.validators))

    def to_plain(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id, "genesis_time_ms": self.genesis_time_ms,
            "allocations": [{"account": k.hex(), "balance": str(b)} for k, b in self.allocations],
            "validators": [{"public_key": k.hex(), "stake": str(s)} for k, s in self.validators],
            "params": {name: str(value) for name, value in asdict(self.params).items()},
        }

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> Genesis:
        try:
            params = Params(**{str(name): _amount(value, f"params.{name}")
                               for name, value in plain.get("params", {}).items()})
            allocations = tuple(
                (_key(a["account"], f"allocations[{i}].account"),
                 _amount(a["balance"], f"allocations[{i}].balance"))
                for i, a in enumerate(plain["allocations"]))
            validators = tuple(
                (_key(v["public_key"], f"validators[{i}].public_key"),
                 _amount(v["stake"], f"validators[{i}].stake"))
                for i, v in enumerate(plain["validators"]))
            return cls(chain_id=str(plain["chain_id"]),
                       genesis_time_ms=_amount(plain.get("genesis_time_ms", 0),
                                               "genesis_time_ms"),
                       allocations=allocations, validators=validators, params=params)
        except (KeyError, TypeError) as error:
            raise GenesisError(f"genesis: missing or bad field ({error})") from error

    def to_json(self) -> str:
        return json.dumps(self.to_plain(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Genesis:
        try:
            plain = json.loads(text)
        except json.JSONDecodeError as error:
            raise GenesisError(f"genesis: not JSON ({error})") from error
        if not isinstance(plain, dict):
            raise GenesisError("genesis: the document must be a JSON object")
        return cls.from_plain(plain)

    def genesis_hash(self) -> bytes:
        return sha256(canonical(self.to_plain()))
