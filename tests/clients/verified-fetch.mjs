// Fetch an IPFS path (`ipfs://{cid}/a/b`) with @helia/verified-fetch, using a
// single local trustless gateway as the only block source, and write the
// response body to a file.
//
//   node verified-fetch.mjs <gatewayUrl> <ipfsUrl> <outFile>
//
// Environment:
//   VERIFIED_FETCH_TIMEOUT_MS  overall deadline (default 120000)
//
// On success prints one JSON line to stdout
//   {"ok":true,"url":...,"status":200,"contentType":...,"bytes":N,"requests":[...]}
// and exits 0; `requests` lists the gateway requests as "GET /ipfs/...".
// On any error (including a status other than 200) prints
// {"ok":false,"error":...} to stdout and exits 1 (2 for usage errors, 3 for
// the timeout).
//
// verified-fetch walks the path itself (UnixFS directories, HAMT shards,
// dag-cbor), block by block, and checks every block's hash; the gateway is
// asked only for raw blocks. The Helia node is built by hand with no
// libp2p (createVerifiedFetch's own default starts one, which dials public
// peers): the trustless-gateway block broker and one router that names the
// given gateway for every CID, as in helia-fetch.mjs.

import { createWriteStream } from 'node:fs'
import { once } from 'node:events'
import { createVerifiedFetch } from '@helia/verified-fetch'
import { createLocalHelia, failer, gatewayOrigin } from './local-helia.mjs'

function usage (msg) {
  process.stderr.write(`${msg}\nusage: node verified-fetch.mjs <gatewayUrl> <ipfsUrl> <outFile>\n`)
  process.exit(2)
}

const fail = failer('verified-fetch')

const [gatewayArg, urlArg, outFile] = process.argv.slice(2)
if (gatewayArg == null || urlArg == null || outFile == null) usage('missing arguments')
const gatewayUrl = gatewayOrigin(gatewayArg, usage)
if (!urlArg.startsWith('ipfs://')) usage(`not an ipfs:// URL: ${urlArg}`)

const timeoutMs = Number(process.env.VERIFIED_FETCH_TIMEOUT_MS ?? 120000)
const hardTimer = setTimeout(() => {
  fail(new Error(`timed out after ${timeoutMs} ms (hard deadline)`), 3)
}, timeoutMs + 5000)

const requests = []
const realFetch = globalThis.fetch
globalThis.fetch = (input, init) => {
  const url = new URL(input instanceof Request ? input.url : String(input))
  if (url.origin === gatewayUrl.origin) requests.push(`${init?.method ?? 'GET'} ${url.pathname}${url.search}`)
  return realFetch(input, init)
}

let helia
try {
  helia = await createLocalHelia(gatewayUrl)
  const vfetch = await createVerifiedFetch(helia)
  const signal = AbortSignal.timeout(timeoutMs)
  const resp = await vfetch(urlArg, { signal })
  if (resp.status !== 200) {
    throw new Error(`${urlArg}: status ${resp.status}: ${(await resp.text()).slice(0, 300)}`)
  }
  const out = createWriteStream(outFile)
  let bytes = 0
  for await (const chunk of resp.body) {
    bytes += chunk.byteLength
    if (!out.write(chunk)) await once(out, 'drain')
  }
  out.end()
  await once(out, 'finish')
  await vfetch.stop()
  clearTimeout(hardTimer)
  process.stdout.write(JSON.stringify({
    ok: true,
    url: urlArg,
    status: resp.status,
    contentType: resp.headers.get('content-type'),
    bytes,
    requests
  }) + '\n')
  process.exit(0)
} catch (err) {
  try { await helia?.stop() } catch {}
  fail(err)
}
