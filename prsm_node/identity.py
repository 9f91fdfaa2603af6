"""The node's Ed25519 identity: a 32-byte seed in `<data_dir>/node.key`, mode 0600.

Rules: the seed is never logged or printed; the file is created with O_EXCL and mode 0600
in one call (no window where it is readable by others), and a key file that group or
others can read is refused, as ssh refuses such a key. libp2p is imported lazily: the CLI's
client commands must start without it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from nacl.signing import SigningKey

from prsm_node.errors import KeyFileError

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair

KEY_FILE_NAME = "node.key"
SEED_SIZE = 32


def create_key_file(path: Path) -> None:
    """Write a fresh random seed to `path`; fails if the file exists (never overwrite a key)."""
    seed = bytes(SigningKey.generate())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, seed)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_seed(path: Path) -> bytes:
    """The seed in `path`, after checking the file's mode and size."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"node key {path} not found; run `prsm-node init`") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"node key {path} is accessible by other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run `chmod 600 {path}`"
        )
    seed = path.read_bytes()
    if len(seed) != SEED_SIZE:
        raise KeyFileError(f"node key {path} is malformed: expected {SEED_SIZE} bytes")
    return seed


def libp2p_key_pair(seed: bytes) -> KeyPair:
    """The libp2p Ed25519 key pair for `seed` (the peer id follows from it)."""
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair

    private = Ed25519PrivateKey.new(seed)
    return KeyPair(private, private.get_public_key())


def peer_id_of(seed: bytes) -> str:
    """The base58 peer id (12D3KooW...) of the key with this seed."""
    from libp2p.peer.id import ID

    return ID.from_pubkey(libp2p_key_pair(seed).public_key).to_base58()
