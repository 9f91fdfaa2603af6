"""Write the CARs that our code exports, for the independent reader to check.

Run by scripts/make_ipfs_fixtures.sh (with the repository's venv): writes
OUT_DIR/ours-<name>.car for each case of ``CAR_CASES``; the JS side (@ipld/car's CarReader
and ipfs-unixfs-exporter) then reads each and records what it saw. tests/storage/test_car.py
rebuilds the same CARs and checks them against that record.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from storage.car import export_car  # noqa: E402
from storage.unixfs import build_bytes  # noqa: E402
from tests.storage.helpers import pattern  # noqa: E402

# name -> list of (size, seed, chunk size, links per node max), one root per file
CAR_CASES = {
    "fanout3-5000": [(5000, "g", 100, 3)],
    "two-roots": [(700, "a", 1024 * 1024, 174), (10 * 256, None, 256, 3)],
}


def build_car(name: str) -> bytes:
    """The CAR bytes our exporter writes for ``CAR_CASES[name]``."""
    import io

    roots = []
    table = {}
    for size, seed, chunk_size, links_max in CAR_CASES[name]:
        root, blocks = build_bytes(pattern(size, seed), chunk_size=chunk_size,
                                   links_per_node_max=links_max)
        roots.append(root)
        table.update({block.cid: block.data for block in blocks})
    out = io.BytesIO()
    export_car(out, roots, table.__getitem__)
    return out.getvalue()


def main() -> None:
    out_dir = Path(sys.argv[1])
    for name in CAR_CASES:
        (out_dir / f"ours-{name}.car").write_bytes(build_car(name))


if __name__ == "__main__":
    main()
