"""SIGKILL a block-store writer mid-write, many times; no corrupt block under a real name.

A separate writer process puts blocks of random sizes (fsync on, as the node does by
default) into one store whose quota is small, so the store also collects garbage on its
own while it is being killed. It writes either one ``put`` at a time (the exchange) or
in batches of 1-100 blocks (``store add``; a batch commits every ``PUT_MANY_BLOCKS_MAX``
blocks and early when the quota is near, and from its second block on its files are
written, fsynced and renamed by the batch's writer thread while the writer process puts
the next blocks: ``storage.blockstore`` rule 7), so kills land while a batch's files are
staged, fsynced, renamed or indexed, in either thread. Each of ROUNDS rounds kills the
writer after a random delay (seeded), then opens the store in this process and checks,
independently of the store's own hashing (hashlib on the file bytes):
- every file under ``blocks/`` is named by a CID whose digest is the sha256 of its bytes;
- ``verify()`` finds nothing corrupt and no index row without its file;
- every indexed block is served by ``get`` and rehashes to its CID;
- a temp file the kill left behind was never indexed and is removed by the open.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.blockstore import BlockStore
from storage.cid import CODEC_RAW, Cid

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 30
SEED = 5
QUOTA = 24 * 1024 * 1024

WRITER = """
import random, sys
from storage.blockstore import BlockStore
from storage.cid import raw_cid
from storage.unixfs import Block
store = BlockStore(sys.argv[1], quota_bytes=int(sys.argv[3]), fsync=True)
rng = random.Random(sys.argv[2])
def block():
    data = rng.randbytes(rng.randint(1, 1 << 20))  # distinct, up to one full block
    return Block(raw_cid(data), data)
print("ready", flush=True)
while sys.argv[4] == "put":
    store.put(block())
while sys.argv[4] == "batch":
    with store.batch() as batch:
        for _ in range(rng.randint(1, 100)):
            batch.put(block())
"""


def block_files(root: Path) -> list[Path]:
    return sorted((root / "blocks").glob("*/*"))


def check_files_independently(root: Path) -> None:
    for path in block_files(root):
        cid = Cid.parse(path.name)
        assert cid.codec == CODEC_RAW
        assert hashlib.sha256(path.read_bytes()).digest() == cid.digest, path


@pytest.mark.parametrize("mode", ["put", "batch"])
def test_sigkill_mid_write_never_leaves_a_corrupt_block_under_a_real_name(
    tmp_path: Path, mode: str
) -> None:
    rng = random.Random(SEED)
    store_dir = tmp_path / "store"
    temp_files_left = adopted_total = 0
    for round_index in range(ROUNDS):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store_dir), f"{SEED}-{round_index}", str(QUOTA),
             mode],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.005, 0.12))  # a random point of the put loop
        finally:
            os.kill(writer.pid, signal.SIGKILL)
            writer.wait(timeout=30)
            if writer.stdout is not None:
                writer.stdout.close()
        assert writer.returncode == -signal.SIGKILL

        left = [Cid.parse(p.name.split(".")[0]) for p in (store_dir / "tmp").iterdir()]
        temp_files_left += len(left)
        check_files_independently(store_dir)  # before anything of ours touches the store
        with BlockStore(store_dir, quota_bytes=QUOTA, fsync=False) as store:
            assert list((store_dir / "tmp").iterdir()) == []  # removed by the open
            for cid in left:  # never renamed, hence never indexed nor visible
                assert not store.has(cid)
                assert not (store_dir / "blocks" / cid.digest[:1].hex() / str(cid)).exists()
            report = store.verify()
            assert report.corrupt == (), report
            assert report.missing == (), report  # a row is only written after its rename
            adopted_total += len(report.adopted)  # killed between rename and index row
            indexed = store.ls(limit=10_000)
            assert len(indexed) == len(block_files(store_dir)) == report.checked_count
            for cid, size in indexed:
                data = store.get(cid)
                assert len(data) == size
                assert hashlib.sha256(data).digest() == cid.digest
            assert store.stat().size_bytes == sum(p.stat().st_size for p in block_files(store_dir))
            assert store.stat().size_bytes <= QUOTA
    assert block_files(store_dir), "the writer never wrote a block: the test proves nothing"
    # Evidence that kills landed inside a put (between the temp file and the rename, or
    # between the rename and the index row), not only between puts.
    print(f"{mode}: {ROUNDS} kills: {temp_files_left} temp files left, "
          f"{adopted_total} orphans adopted")
    assert temp_files_left + adopted_total >= 1
