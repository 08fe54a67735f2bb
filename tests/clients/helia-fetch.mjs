// Fetch one UnixFS file with Helia, using a single local trustless gateway
// as the only block source, and write its bytes to a file.
//
//   node helia-fetch.mjs <gatewayUrl> <rootCid> <outFile>
//
// Environment:
//   HELIA_FETCH_TIMEOUT_MS  overall deadline (default 120000)
//
// On success prints one JSON line to stdout
//   {"ok":true,"cid":...,"bytes":N,"sha256":"hex","ms":N,"requests":N}
// and exits 0. On any error prints {"ok":false,"error":...} to stdout, the
// details to stderr, and exits 1 (2 for usage errors, 3 for the timeout).
//
// No libp2p, no bitswap, no public gateways, no delegated routing: the node
// is helia's createHeliaLight with the trustless-gateway block broker and one
// router that yields the given gateway for every CID. Helia asks the gateway
// for each block as GET {gateway}/ipfs/{cid}?format=raw with
// Accept: application/vnd.ipld.raw and verifies every block's hash.

import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { once } from 'node:events'
import { unixfs } from '@helia/unixfs'
import { CID } from 'multiformats/cid'
import { createLocalHelia, failer, gatewayOrigin } from './local-helia.mjs'

function usage (msg) {
  process.stderr.write(`${msg}\nusage: node helia-fetch.mjs <gatewayUrl> <rootCid> <outFile>\n`)
  process.exit(2)
}

const fail = failer('helia-fetch')

const [gatewayArg, cidArg, outFile] = process.argv.slice(2)
if (gatewayArg == null || cidArg == null || outFile == null) usage('missing arguments')

const gatewayUrl = gatewayOrigin(gatewayArg, usage)

let root
try {
  root = CID.parse(cidArg)
} catch (err) {
  usage(`invalid CID ${cidArg}: ${err.message}`)
}

const timeoutMs = Number(process.env.HELIA_FETCH_TIMEOUT_MS ?? 120000)
const started = Date.now()

// Hard deadline: even if something inside Helia ignores the abort signal,
// the process ends. Give the abort below a few seconds to unwind first.
const hardTimer = setTimeout(() => {
  fail(new Error(`timed out after ${timeoutMs} ms (hard deadline)`), 3)
}, timeoutMs + 5000)

// Count the requests made to the gateway (for the summary line).
let requests = 0
const realFetch = globalThis.fetch
globalThis.fetch = (input, init) => {
  requests++
  return realFetch(input, init)
}

let helia
try {
  helia = await createLocalHelia(gatewayUrl)

  const fs = unixfs(helia)
  const signal = AbortSignal.timeout(timeoutMs)
  const hash = createHash('sha256')
  const out = createWriteStream(outFile)
  let bytes = 0
  try {
    for await (const chunk of fs.cat(root, { signal })) {
      hash.update(chunk)
      bytes += chunk.byteLength
      if (!out.write(chunk)) await once(out, 'drain')
    }
  } catch (err) {
    if (signal.aborted) {
      out.destroy()
      fail(new Error(`timed out after ${timeoutMs} ms: ${err.message}`), 3)
    }
    throw err
  }
  out.end()
  await once(out, 'finish')
  await helia.stop()
  clearTimeout(hardTimer)
  process.stdout.write(JSON.stringify({
    ok: true,
    cid: root.toString(),
    bytes,
    sha256: hash.digest('hex'),
    ms: Date.now() - started,
    requests
  }) + '\n')
  process.exit(0)
} catch (err) {
  try { await helia?.stop() } catch {}
  fail(err)
}
