// Reference fixtures for storage/ from an implementation we did not write:
// ipfs-unixfs-importer (the importer of js-ipfs / Helia), @ipld/car, ipfs-unixfs-exporter.
// Run by scripts/make_ipfs_fixtures.sh, which installs the pinned versions in a scratch dir.
//
// Usage: node make_ipfs_fixtures.mjs unixfs OUT_DIR
//        node make_ipfs_fixtures.mjs read-car CAR_FILE OUT_JSON
import { createHash } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { exporter } from 'ipfs-unixfs-exporter'
import { CarWriter, CarReader } from '@ipld/car'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'

const MiB = 1024 * 1024

// blockstore-core 7's MemoryBlockstore keys by multihash and forgets the codec, so keep the
// CIDs here, in insertion order; get() answers an async iterable as blockstore-core 7 does.
class CidStore {
  constructor () { this.blocks = new Map() }
  async put (cid, bytes) { this.blocks.set(cid.toString(), { cid, bytes }); return cid }
  get (cid) {
    const entry = this.blocks.get(cid.toString())
    if (entry == null) throw new Error('not found ' + cid)
    return (async function * () { yield entry.bytes })()
  }
  async has (cid) { return this.blocks.has(cid.toString()) }
  getBytes (cid) { return this.blocks.get(cid.toString()).bytes }
}

// The deterministic content: sha256(SEED || counter as 8-byte big-endian), concatenated.
// tests/storage/helpers.py::pattern computes the same bytes.
function pattern (size, seed) {
  const out = Buffer.alloc(size)
  let offset = 0
  let counter = 0n
  while (offset < size) {
    const c = Buffer.alloc(8)
    c.writeBigUInt64BE(counter)
    const digest = createHash('sha256').update(Buffer.from(seed)).update(c).digest()
    digest.copy(out, offset, 0, Math.min(32, size - offset))
    offset += 32
    counter += 1n
  }
  return out
}

// The content is fed in pieces of 65536 bytes, so the chunker's re-buffering is exercised.
async function * pieces (data) {
  for (let i = 0; i < data.length; i += 65536) yield data.subarray(i, i + 65536)
}

async function importFile (data, chunkSize, linksMax, blockstore) {
  const options = {
    cidVersion: 1,
    rawLeaves: true,
    reduceSingleLeafToSelf: true,
    chunker: fixedSize({ chunkSize }),
    layout: balanced({ maxChildrenPerNode: linksMax }),
    wrapWithDirectory: false
  }
  let last
  for await (const entry of importer([{ content: pieces(data) }], blockstore, options)) last = entry
  return last.cid
}

const CASES = [
  // [name, size, chunk size, links per node max, seed]
  ['empty', 0, MiB, 174, 'a'],
  ['one-byte', 1, MiB, 174, 'a'],
  ['small', 1000, MiB, 174, 'a'],
  ['one-chunk', MiB, MiB, 174, 'a'],
  ['one-chunk-plus-one', MiB + 1, MiB, 174, 'a'],
  ['three-and-a-half-chunks', 3.5 * MiB, MiB, 174, 'b'],
  ['full-node-256', 174 * 256, 256, 174, 'c'],
  ['full-node-plus-one-256', 174 * 256 + 1, 256, 174, 'c'],
  ['two-levels-256', 200 * 256 + 17, 256, 174, 'd'],
  ['two-levels-full-256', 174 * 174 * 256, 256, 174, 'e'],
  ['three-levels-256', 174 * 174 * 256 + 1, 256, 174, 'e'],
  ['fanout3-1', 1, 100, 3, 'f'],
  ['fanout3-300', 300, 100, 3, 'f'],
  ['fanout3-301', 301, 100, 3, 'f'],
  ['fanout3-900', 900, 100, 3, 'f'],
  ['fanout3-901', 901, 100, 3, 'f'],
  ['fanout3-2701', 2701, 100, 3, 'f'],
  ['fanout3-5000', 5000, 100, 3, 'g'],
  ['zeros-dedup', 10 * 256, 256, 3, null]
]

async function unixfs (outDir) {
  const results = []
  for (const [name, size, chunkSize, linksMax, seed] of CASES) {
    const data = seed === null ? Buffer.alloc(size) : pattern(size, seed)
    const blockstore = new CidStore()
    const root = await importFile(data, chunkSize, linksMax, blockstore)
    const rootBlock = blockstore.getBytes(root)
    const blocks = blockstore.blocks.size
    results.push({
      name, size, chunk_size: chunkSize, links_per_node_max: linksMax, seed,
      root: root.toString(),
      blocks,
      root_block_hex: rootBlock.length <= 16384 ? Buffer.from(rootBlock).toString('hex') : null
    })
    if (name === 'fanout3-5000' || name === 'two-levels-256') {
      const { writer, out } = CarWriter.create([root])
      const chunks = []
      const collect = (async () => { for await (const c of out) chunks.push(c) })()
      for (const { cid, bytes } of blockstore.blocks.values()) await writer.put({ cid, bytes })
      await writer.close()
      await collect
      writeFileSync(`${outDir}/js-${name}.car`, Buffer.concat(chunks))
    }
    console.error(name, root.toString())
  }
  writeFileSync(`${outDir}/unixfs_roots.json`, JSON.stringify({
    tool: 'ipfs-unixfs-importer@17.1.1 (@ipld/car@5.4.7, multiformats@14.0.5) on node ' + process.version,
    options: 'cidVersion 1, rawLeaves, reduceSingleLeafToSelf, fixedSize chunker, balanced layout',
    cases: results
  }, null, 1) + '\n')
}

// Read a CAR that our code wrote, with @ipld/car's reader; check every block against its CID
// with multiformats' sha256; export the file under the first root with ipfs-unixfs-exporter.
async function readCar (carFile, outJson) {
  const bytes = readFileSync(carFile)
  const reader = await CarReader.fromBytes(bytes)
  const roots = (await reader.getRoots()).map(String)
  const blockstore = new CidStore()
  const blocks = []
  for await (const { cid, bytes: block } of reader.blocks()) {
    const digest = await sha256.digest(block)
    const ok = Buffer.compare(Buffer.from(digest.digest), Buffer.from(cid.multihash.digest)) === 0
    blocks.push({ cid: cid.toString(), size: block.length, hash_ok: ok })
    await blockstore.put(cid, block)
  }
  const entry = await exporter(CID.parse(roots[0]), blockstore)
  const hash = createHash('sha256')
  let size = 0
  for await (const chunk of entry.content()) { hash.update(chunk); size += chunk.length }
  writeFileSync(outJson, JSON.stringify({
    reader: '@ipld/car@5.4.7 CarReader + ipfs-unixfs-exporter@16.2.2 on node ' + process.version,
    car_sha256: createHash('sha256').update(bytes).digest('hex'),
    version: reader.version,
    roots,
    blocks,
    exported_size: size,
    exported_sha256: hash.digest('hex')
  }, null, 1) + '\n')
}

const [mode, ...args] = process.argv.slice(2)
if (mode === 'unixfs') await unixfs(args[0])
else if (mode === 'read-car') await readCar(args[0], args[1])
else throw new Error('usage: unixfs OUT_DIR | read-car CAR OUT_JSON')
