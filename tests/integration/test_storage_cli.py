"""`prsm-node store ...` against real nodes: CAR export on one node and import on another
gives the same root and bytes, gc never removes pinned blocks, verify reports a corrupted
block file, and every command's `--json` prints one object."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prsm_node.control import Dispatcher
from prsm_node.devnet import Devnet
from prsm_node.storage_api import register_storage_methods

from .conftest import run_cli
from .test_storage_exchange import MIB, storage_devnet

pytestmark = pytest.mark.multiprocess

DOCS = Path(__file__).resolve().parents[2] / "docs" / "control-api.md"


def store(devnet: Devnet, index: int, *args: str, code: int = 0) -> dict[str, Any]:
    done = run_cli("store", *args, "--data-dir", str(devnet.nodes[index].data_dir), "--json")
    assert done.returncode == code, done.stderr
    return json.loads(done.stdout)


def test_every_storage_method_is_documented_with_an_example() -> None:
    dispatcher = Dispatcher()
    register_storage_methods(dispatcher, storage=None, replicator=None)  # type: ignore[arg-type]
    docs = DOCS.read_text()
    assert len(dispatcher.method_names()) == 11
    for name in dispatcher.method_names():
        assert f"### `{name}`" in docs, name
        assert f'"method":"{name}"' in docs, name


def test_car_round_trip_gc_verify_and_json_outputs(
    make_devnet: Callable[..., Devnet], short_dir: Path
) -> None:
    devnet = storage_devnet(make_devnet, 2)
    source = short_dir / "weights.bin"
    source.write_bytes(os.urandom(3 * MIB + 7))
    added = store(devnet, 0, "add", str(source))
    assert added["size"] == source.stat().st_size and added["blocks"] == 5
    car = short_dir / "weights.car"
    exported = store(devnet, 0, "export-car", added["cid"], str(car))
    assert exported["blocks"] == 5 and car.stat().st_size == exported["size"]

    imported = store(devnet, 1, "import-car", str(car))
    assert imported["roots"] == [added["cid"]] and imported["pinned"] == [added["cid"]]
    got = store(devnet, 1, "get", added["cid"], "-o", str(short_dir / "copy"))
    assert got["blocks_fetched"] == 0 and got["blocks_local"] == 5  # all from the CAR
    assert (short_dir / "copy").read_bytes() == source.read_bytes()

    # An unpinned second file: gc removes exactly its blocks and keeps the pinned ones.
    other = short_dir / "other.bin"
    other.write_bytes(os.urandom(2 * MIB))
    other_cid = store(devnet, 0, "add", str(other))["cid"]
    other_car = short_dir / "other.car"
    store(devnet, 0, "export-car", other_cid, str(other_car))
    assert store(devnet, 1, "import-car", str(other_car), "--no-pin")["pinned"] == []
    assert store(devnet, 1, "stat")["block_count"] == 5 + 3  # two leaves and their root
    collected = store(devnet, 1, "gc")
    assert collected["removed_count"] == 3 and collected["freed_bytes"] > 2 * MIB
    listed = {row["cid"] for row in store(devnet, 1, "ls", "--blocks")["blocks"]}
    assert len(listed) == 5 and added["cid"] in listed
    assert store(devnet, 1, "ls")["pins"] == [added["cid"]]
    assert store(devnet, 1, "verify")["ok"] is True

    # Flip a byte of one stored block file: verify reports and quarantines it.
    block_files = sorted((devnet.nodes[1].data_dir / "blocks" / "blocks").glob("*/*"))
    victim = next(path for path in block_files if path.stat().st_size == MIB)
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    report = store(devnet, 1, "verify", code=1)
    assert report["corrupt"] == [victim.name] and report["checked_count"] == 5
    assert not victim.exists()

    # A pinned root with a block gone: `store pin` fetches it back from node0.
    pinned = store(devnet, 1, "pin", added["cid"])
    assert pinned["blocks_fetched"] == 1 and pinned["pinned"] is True
    assert store(devnet, 1, "unpin", added["cid"]) == {"cid": added["cid"], "unpinned": True}
    assert store(devnet, 1, "ls")["pins"] == []
    counters = store(devnet, 0, "stat")["counters"]
    assert counters["blocks_served"] == 1


def test_cli_errors_are_one_line_with_a_hint(
    make_devnet: Callable[..., Devnet], short_dir: Path
) -> None:
    devnet = storage_devnet(make_devnet, 1)
    data_dir = str(devnet.nodes[0].data_dir)
    bad = run_cli("store", "get", "not-a-cid", "--data-dir", data_dir)
    assert bad.returncode == 1 and bad.stderr.startswith("error: param 'cid'"), bad.stderr
    unknown = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    unpinned = run_cli("store", "unpin", unknown, "--data-dir", data_dir)
    assert unpinned.returncode == 1 and "is not pinned" in unpinned.stderr
    missing = run_cli(
        "store", "export-car", unknown, str(short_dir / "x.car"), "--data-dir", data_dir
    )
    assert missing.returncode == 1 and "store get" in missing.stderr, missing.stderr
