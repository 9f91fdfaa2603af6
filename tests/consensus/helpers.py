"""Shared builders for consensus tests: keys, a genesis, signed transactions."""

from __future__ import annotations

from consensus.codec import Ed25519Signer
from consensus.genesis import UNITS_PER_FTNS, Genesis, Params
from consensus.tx import SignedTx, TxBody, TxKind, sign_tx

CHAIN = "prsm-test-1"
FEE = 10**15


def signers(count: int, offset: int = 0) -> list[Ed25519Signer]:
    return [Ed25519Signer.from_seed(bytes([i + offset + 1]) * 32) for i in range(count)]


def make_genesis(accounts: list[Ed25519Signer], validators: list[Ed25519Signer],
                 **params: int) -> Genesis:
    base = {"epoch_length_blocks": 4, "unbonding_period_blocks": 3,
            "validator_stake_min": 10 * UNITS_PER_FTNS}
    return Genesis(chain_id=CHAIN, genesis_time_ms=0,
                   allocations=tuple((s.public_key, 100 * UNITS_PER_FTNS)
                                     for s in [*accounts, *validators]),
                   validators=tuple((s.public_key, 10 * UNITS_PER_FTNS) for s in validators),
                   params=Params(**{**base, **params}))


def tx(signer: Ed25519Signer, kind: TxKind, nonce: int, amount: int = 0,
       to: bytes = b"", fee: int = FEE, chain: str = CHAIN) -> SignedTx:
    return sign_tx(TxBody(chain_id=chain, kind=kind, sender=signer.public_key, nonce=nonce,
                          fee=fee, amount=amount, to=to), signer)


def transfer(signer: Ed25519Signer, nonce: int, to: bytes, amount: int) -> SignedTx:
    return tx(signer, TxKind.TRANSFER, nonce, amount, to)
