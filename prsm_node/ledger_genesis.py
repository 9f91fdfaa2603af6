"""Genesis files for the node: a one-validator devnet by default, N validators for a devnet.

`<data_dir>/genesis.json` is the chain a node belongs to. `prsm-node run` on a data dir
without one writes a one-validator genesis in which this node is the validator and holds
the devnet allocation, so a lone node has a working ledger. `prsm-node devnet init` writes
one shared genesis into every node's data dir: every node a validator, every node funded.
"""

from __future__ import annotations

from pathlib import Path

from consensus.errors import GenesisError
from consensus.genesis import UNITS_PER_FTNS, Genesis, Params
from prsm_node.errors import UserError

GENESIS_FILE_NAME = "genesis.json"
DEVNET_BALANCE = 1_000_000 * UNITS_PER_FTNS
DEVNET_STAKE = Params().validator_stake_min
GENESIS_FILE_BYTES_MAX = 16 * 1024 * 1024


def devnet_genesis(
    public_keys: list[bytes],
    chain_id: str,
    genesis_time_ms: int,
    validators: int | None = None,
    params: Params | None = None,
) -> Genesis:
    """Every key a funded account; the first `validators` keys (default: all) validators
    with the minimum stake, the others followers. `params` (default: the defaults) lets a
    test devnet shorten the job market's timers."""
    count = len(public_keys) if validators is None else validators
    return Genesis(
        chain_id=chain_id,
        genesis_time_ms=genesis_time_ms,
        allocations=tuple((key, DEVNET_BALANCE) for key in public_keys),
        validators=tuple((key, DEVNET_STAKE) for key in public_keys[:count]),
        params=params or Params(),
    )


def load_genesis(path: Path) -> Genesis:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(GENESIS_FILE_BYTES_MAX + 1)
    except OSError as error:
        raise UserError(f"cannot read genesis file {path}: {error}") from None
    if len(text) > GENESIS_FILE_BYTES_MAX:
        raise UserError(f"genesis file {path} is larger than {GENESIS_FILE_BYTES_MAX} bytes")
    try:
        return Genesis.from_json(text)
    except GenesisError as error:
        raise UserError(f"genesis file {path}: {error}") from None


def write_genesis(path: Path, genesis: Genesis) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(genesis.to_json() + "\n", encoding="utf-8")
    temporary.replace(path)


def ensure_genesis(path: Path, public_key: bytes, now_ms: int) -> Genesis:
    """The genesis at `path`; a one-validator devnet of this node's key if there is none."""
    if not path.exists():
        chain_id = f"prsm-devnet-{public_key.hex()[:8]}"
        write_genesis(path, devnet_genesis([public_key], chain_id, now_ms))
    return load_genesis(path)
