"""CARv1: an independent reader reads ours; we read one an independent writer wrote."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

from storage.car import (
    CarWriter,
    decode_header,
    encode_header,
    export_car,
    import_car,
    read_car,
)
from storage.cid import Cid, raw_cid
from storage.errors import CorruptBlockError, InvalidCarError, UnsupportedCidError
from storage.unixfs import Block, build_bytes, read_file
from tests.storage.helpers import FIXTURES, pattern, unixfs_cases

ROOT = Path(__file__).resolve().parents[2]


def _load_fixture_script():
    spec = importlib.util.spec_from_file_location(
        "make_ipfs_fixtures", ROOT / "scripts" / "make_ipfs_fixtures.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["fanout3-5000", "two-roots"])
def test_car_we_export_is_what_ipld_car_read_back(name: str) -> None:
    script = _load_fixture_script()
    car = script.build_car(name)
    seen = json.loads((FIXTURES / f"car_read_by_js-{name}.json").read_text())
    assert hashlib.sha256(car).hexdigest() == seen["car_sha256"]
    assert seen["version"] == 1
    assert all(block["hash_ok"] for block in seen["blocks"])
    first = script.CAR_CASES[name][0]
    content = pattern(first[0], first[1])
    assert seen["exported_size"] == len(content)
    assert seen["exported_sha256"] == hashlib.sha256(content).hexdigest()
    roots, blocks = read_car(io.BytesIO(car))
    assert [str(root) for root in roots] == seen["roots"]
    assert [str(block.cid) for block in blocks] == [block["cid"] for block in seen["blocks"]]


@pytest.mark.parametrize("name", ["fanout3-5000", "two-levels-256"])
def test_we_import_a_car_written_by_ipld_car(name: str) -> None:
    case = next(c for c in unixfs_cases() if c["name"] == name)
    table: dict[Cid, bytes] = {}
    with open(FIXTURES / f"js-{name}.car", "rb") as stream:
        summary = import_car(stream, lambda block: table.__setitem__(block.cid, block.data))
    assert [str(root) for root in summary.roots] == [case["root"]]
    assert summary.block_count == case["blocks"] == len(table)
    assert summary.size == (FIXTURES / f"js-{name}.car").stat().st_size
    assert read_file(summary.roots[0], table.__getitem__) == pattern(case["size"], case["seed"])


def test_export_then_import_round_trips_with_the_empty_block() -> None:
    root, blocks = build_bytes(b"")
    out = io.BytesIO()
    export_car(out, [root], {b.cid: b.data for b in blocks}.__getitem__)
    received: list[Block] = []
    summary = import_car(io.BytesIO(out.getvalue()), received.append)
    assert summary.roots == (root,)
    assert received == blocks


def test_header_round_trips_and_refuses_other_shapes() -> None:
    roots = (raw_cid(b"a"), raw_cid(b"b"))
    assert decode_header(encode_header(roots)) == roots
    with pytest.raises(InvalidCarError):
        decode_header(encode_header(roots)[:-1] + b"\x02")  # version 2
    with pytest.raises(InvalidCarError):
        decode_header(encode_header(roots) + b"\x00")
    with pytest.raises(InvalidCarError):
        decode_header(b"\xa2")  # truncated
    with pytest.raises(InvalidCarError):
        decode_header(b"\xbf")  # indefinite map


def _car(blocks: list[tuple[bytes, bytes]], roots: tuple[Cid, ...]) -> bytes:
    out = io.BytesIO()
    writer = CarWriter(out, roots)
    for cid_bytes, data in blocks:
        section = cid_bytes + data
        writer._write(bytes([len(section)]) if len(section) < 128 else b"")
        writer._write(section)
    return out.getvalue()


def test_import_refuses_a_block_that_does_not_match_its_cid() -> None:
    cid = raw_cid(b"good")
    car = _car([(cid.to_bytes(), b"evil")], (cid,))
    accepted: list[Block] = []
    with pytest.raises(CorruptBlockError):
        import_car(io.BytesIO(car), accepted.append)
    assert accepted == []


def test_import_refuses_truncation_caps_and_unsupported_cids() -> None:
    cid = raw_cid(b"good")
    car = _car([(cid.to_bytes(), b"good")], (cid,))
    with pytest.raises(InvalidCarError, match="truncated"):
        import_car(io.BytesIO(car[:-1]), lambda block: None)
    with pytest.raises(InvalidCarError, match="larger than"):
        import_car(io.BytesIO(car), lambda block: None, size_max=len(car) - 1)
    with pytest.raises(InvalidCarError, match="more than"):
        import_car(io.BytesIO(car + car[-41:]), lambda block: None, blocks_max=1)
    sha512 = bytes((1, 0x55, 0x13, 0x40)) + bytes(64)
    with pytest.raises(UnsupportedCidError):
        import_car(io.BytesIO(_car([(sha512, b"x")], (cid,))), lambda block: None)
    huge_header = b"\xff\xff\xff\xff\x0f"
    with pytest.raises(InvalidCarError, match="header"):
        import_car(io.BytesIO(huge_header), lambda block: None)
    with pytest.raises(InvalidCarError, match="empty"):
        import_car(io.BytesIO(b""), lambda block: None)


def test_carv2_is_refused_with_a_hint() -> None:
    pragma = bytes.fromhex("0aa16776657273696f6e02")
    with pytest.raises(InvalidCarError, match="CARv2"):
        import_car(io.BytesIO(pragma + bytes(40)), lambda block: None)
