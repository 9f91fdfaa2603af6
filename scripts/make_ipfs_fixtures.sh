#!/usr/bin/env bash
# Regenerate tests/fixtures/storage/ with an IPFS implementation we did not write.
#
# Needs node >= 18 and npm (not needed by the test suite, which only reads the outputs).
# Installs pinned versions of ipfs-unixfs-importer, ipfs-unixfs-exporter, @ipld/car and
# multiformats into a scratch dir (default /tmp/prsm-ipfs-fixtures), then:
#   1. imports deterministic contents with ipfs-unixfs-importer -> unixfs_roots.json and
#      two CARs written by @ipld/car (js-*.car) for our importer to read;
#   2. exports CARs with our storage/car.py (scripts/make_ipfs_fixtures.py) and has
#      @ipld/car's CarReader + ipfs-unixfs-exporter read them -> car_read_by_js-*.json.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SCRATCH="${1:-/tmp/prsm-ipfs-fixtures}"
OUT="$REPO/tests/fixtures/storage"
mkdir -p "$SCRATCH" "$OUT"
cd "$SCRATCH"
[ -f package.json ] || npm init -y >/dev/null
npm install --no-audit --no-fund \
    ipfs-unixfs-importer@17.1.1 ipfs-unixfs-exporter@16.2.2 ipfs-unixfs@13.1.1 \
    @ipld/car@5.4.7 @ipld/dag-pb@4.2.0 multiformats@14.0.5 >/dev/null
cp "$REPO/scripts/make_ipfs_fixtures.mjs" .
node make_ipfs_fixtures.mjs unixfs "$OUT"
mkdir -p ours
"$REPO/.venv/bin/python" "$REPO/scripts/make_ipfs_fixtures.py" ours
for car in ours/ours-*.car; do
    name="$(basename "$car" .car)"
    node make_ipfs_fixtures.mjs read-car "$car" "$OUT/car_read_by_js-${name#ours-}.json"
done
echo "fixtures written to $OUT"
