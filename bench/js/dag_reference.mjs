// The IPFS reference importer (ipfs-unixfs-importer into blockstore-fs), as bench/dag_bench.py runs it:
//   node dag_reference.mjs FILE BLOCKSTORE_DIR CHUNK_SIZE MAX_LINKS
// Prints {"root": CID, "seconds": import time, "size": bytes} as JSON. The profile is IPIP-0499's
// unixfs-v1-2025 (CIDv1, raw leaves) with the chunk size and width given, as dag add builds it.
import { createReadStream, statSync } from 'node:fs'
import { FsBlockstore } from 'blockstore-fs'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

const [file, dir, chunkSize, maxLinks] = process.argv.slice(2)
const store = new FsBlockstore(dir)
await store.open()
const options = {
  profile: 'unixfs-v1-2025',
  cidVersion: 1,
  rawLeaves: true,
  chunker: fixedSize({ chunkSize: Number(chunkSize) }),
  layout: balanced({ maxChildrenPerNode: Number(maxLinks) }),
  wrapWithDirectory: false
}
const start = process.hrtime.bigint()
let root
for await (const entry of importer([{ content: createReadStream(file, { highWaterMark: Number(chunkSize) }) }], store, options)) {
  root = entry.cid
}
const seconds = Number(process.hrtime.bigint() - start) / 1e9
await store.close()
console.log(JSON.stringify({ root: root.toString(), seconds, size: statSync(file).size }))
