// Exercise a kubo-compatible RPC API (/api/v0) with the official
// kubo-rpc-client, the way third-party tools talk to kubo.
//
//   node kubo-rpc.mjs <apiUrl> [token] [--skip-auth-check] [--import-car FILE]
//
// apiUrl     http://127.0.0.1:PORT (the client appends /api/v0) or
//            http://127.0.0.1:PORT/api/v0
// token      bearer token; sent as "Authorization: Bearer <token>" on every
//            call. When given, the script also checks that a block/put
//            WITHOUT the token is refused with HTTP 401 or 403 (unless
//            --skip-auth-check).
// --import-car FILE
//            also uploads FILE with dag/import and checks block/stat of
//            every root it reports (the roots are listed in the summary).
//
// Environment: KUBO_RPC_TIMEOUT_MS overall deadline (default 120000); each
// single call has its own 30 s deadline, so a call that hangs (e.g. a
// block/get of a removed block that the server tries to find elsewhere) is
// a failure, not a hang.
//
// Checks, in order: version, id (ID must parse as a libp2p peer ID),
// block/put of random raw blocks (0 B, 1 B, 1000 B, 256 KiB, 1 MiB;
// cid-codec=raw, mhtype=sha2-256) and of one dag-cbor block: the returned
// CID must equal the locally computed CIDv1; block/get bytes equal;
// block/stat cid and size equal; re-put of a stored block returns the same
// CID; block/rm of all of them reports each CID without error; after that
// block/get and block/stat of each must fail.
//
// Prints one JSON line {"ok":bool,...,"failures":[...]} to stdout; exit 0
// if every check passed, 1 if any failed, 2 on usage errors, 3 on timeout.

import { randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import * as dagCbor from '@ipld/dag-cbor'
import { create } from 'kubo-rpc-client'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'

const CALL_TIMEOUT_MS = 30000

function usage (msg) {
  process.stderr.write(`${msg}\nusage: node kubo-rpc.mjs <apiUrl> [token] [--skip-auth-check] [--import-car FILE]\n`)
  process.exit(2)
}

const positional = []
let skipAuthCheck = false
let importCar = null
const argv = process.argv.slice(2)
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]
  if (a === '--skip-auth-check') skipAuthCheck = true
  else if (a === '--import-car') {
    importCar = argv[++i]
    if (importCar == null) usage('--import-car needs a file')
  } else if (a.startsWith('--')) usage(`unknown flag ${a}`)
  else positional.push(a)
}
const [apiUrl, token] = positional
if (apiUrl == null || positional.length > 2) usage('wrong arguments')
try { new URL(apiUrl) } catch { usage(`invalid api URL: ${apiUrl}`) } // eslint-disable-line no-new

const summary = {
  ok: false,
  api: apiUrl,
  version: null,
  peerId: null,
  put: 0,
  get: 0,
  stat: 0,
  rm: 0,
  goneAfterRm: 0,
  authCheck: token == null ? 'no token' : (skipAuthCheck ? 'skipped' : 'pending'),
  carRoots: [],
  failures: []
}

function finish (code) {
  summary.ok = summary.failures.length === 0 && code === 0
  process.stdout.write(JSON.stringify(summary) + '\n')
  process.exit(summary.ok ? 0 : (code || 1))
}

const timeoutMs = Number(process.env.KUBO_RPC_TIMEOUT_MS ?? 120000)
const hardTimer = setTimeout(() => {
  summary.failures.push(`timed out after ${timeoutMs} ms`)
  finish(3)
}, timeoutMs)

function fail (what, err) {
  const status = err?.response?.status
  const msg = err == null ? '' : `: ${status != null ? `HTTP ${status} ` : ''}${err.message ?? err}`
  summary.failures.push(`${what}${msg}`)
  process.stderr.write(`kubo-rpc: FAIL ${what}${msg}\n`)
}

const sig = () => AbortSignal.timeout(CALL_TIMEOUT_MS)
const headers = token != null ? { Authorization: `Bearer ${token}` } : {}
const client = create({ url: apiUrl, headers })

function equalBytes (a, b) {
  return a.byteLength === b.byteLength && Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0
}

async function cidOf (bytes, codec) {
  return CID.createV1(codec.code, await sha256.digest(bytes))
}

async function putBlock (c, bytes, codecName) {
  // kubo >= 0.13 names the codec "cid-codec" (the old "format" is deprecated).
  return await c.block.put(bytes, { cidCodec: codecName, mhtype: 'sha2-256', signal: sig() })
}

try {
  // --- version / id -------------------------------------------------------
  try {
    const v = await client.version({ signal: sig() })
    summary.version = v.version ?? null
    if (typeof v.version !== 'string') fail('version: no Version string in the answer')
  } catch (err) { fail('version', err) }
  try {
    const id = await client.id({ signal: sig() })
    summary.peerId = id.id.toString()
  } catch (err) { fail('id', err) }

  // --- block/put ----------------------------------------------------------
  const blocks = []
  for (const size of [0, 1, 1000, 256 * 1024, 1024 * 1024]) {
    const data = randomBytes(size)
    blocks.push({ name: `raw-${size}`, data, codec: 'raw', expected: await cidOf(data, raw) })
  }
  const cborData = dagCbor.encode({
    hello: 'garage-ipfs',
    n: Date.now(),
    nonce: randomBytes(16),
    link: blocks[1].expected
  })
  blocks.push({ name: 'dag-cbor', data: cborData, codec: 'dag-cbor', expected: await cidOf(cborData, dagCbor) })

  for (const b of blocks) {
    try {
      const cid = await putBlock(client, b.data, b.codec)
      if (!cid.equals(b.expected)) fail(`put ${b.name}: got ${cid}, expected ${b.expected}`)
      else summary.put++
    } catch (err) { fail(`put ${b.name}`, err) }
  }
  // idempotent re-put
  try {
    const again = await putBlock(client, blocks[2].data, 'raw')
    if (!again.equals(blocks[2].expected)) fail(`re-put: got ${again}, expected ${blocks[2].expected}`)
  } catch (err) { fail('re-put', err) }

  // --- block/get + block/stat ---------------------------------------------
  for (const b of blocks) {
    try {
      const got = await client.block.get(b.expected, { signal: sig() })
      if (!equalBytes(got, b.data)) fail(`get ${b.name}: ${got.byteLength} bytes differ from the ${b.data.byteLength} put`)
      else summary.get++
    } catch (err) { fail(`get ${b.name}`, err) }
    try {
      const st = await client.block.stat(b.expected, { signal: sig() })
      if (!st.cid.equals(b.expected)) fail(`stat ${b.name}: cid ${st.cid}, expected ${b.expected}`)
      else if (st.size !== b.data.byteLength) fail(`stat ${b.name}: size ${st.size}, expected ${b.data.byteLength}`)
      else summary.stat++
    } catch (err) { fail(`stat ${b.name}`, err) }
  }

  // --- auth: a write without the token must be refused --------------------
  if (token != null && !skipAuthCheck) {
    const anon = create({ url: apiUrl })
    const data = randomBytes(64)
    const expected = await cidOf(data, raw)
    try {
      const cid = await putBlock(anon, data, 'raw')
      summary.authCheck = 'NOT refused'
      fail(`put without token was accepted (${cid})`)
      try { for await (const _ of client.block.rm(expected, { signal: sig() })) {} } catch {} // eslint-disable-line no-unused-vars
    } catch (err) {
      const status = err?.response?.status
      if (status === 401 || status === 403) summary.authCheck = `refused ${status}`
      else {
        summary.authCheck = `error ${status ?? err?.name}`
        fail('put without token: expected HTTP 401/403', err)
      }
    }
  }

  // --- dag/import (optional) ----------------------------------------------
  if (importCar != null) {
    try {
      const car = await readFile(importCar)
      for await (const r of client.dag.import([car], { pinRoots: false, signal: sig() })) {
        summary.carRoots.push(r.root.cid.toString())
      }
      if (summary.carRoots.length === 0) fail('dag/import: no root reported')
      for (const root of summary.carRoots) {
        try {
          await client.block.stat(CID.parse(root), { signal: sig() })
        } catch (err) { fail(`stat of imported root ${root}`, err) }
      }
    } catch (err) { fail('dag/import', err) }
  }

  // --- block/rm, then get/stat must fail ----------------------------------
  try {
    const seen = new Set()
    for await (const r of client.block.rm(blocks.map(b => b.expected), { signal: sig() })) {
      seen.add(r.cid.toString())
      // kubo omits "Error" on success; an empty string counts as no error too
      if (r.error != null && r.error.message !== '') fail(`rm ${r.cid}: ${r.error.message}`)
      else summary.rm++
    }
    for (const b of blocks) {
      if (!seen.has(b.expected.toString())) fail(`rm: no result line for ${b.name} (${b.expected})`)
    }
  } catch (err) { fail('rm', err) }
  for (const b of blocks) {
    let gone = true
    try {
      await client.block.get(b.expected, { signal: sig() })
      gone = false
      fail(`get ${b.name} after rm succeeded`)
    } catch (err) {
      if (err?.name === 'TimeoutError' || err?.name === 'AbortError') {
        gone = false
        fail(`get ${b.name} after rm hung (expected an error answer)`, err)
      }
    }
    try {
      await client.block.stat(b.expected, { signal: sig() })
      gone = false
      fail(`stat ${b.name} after rm succeeded`)
    } catch (err) {
      if (err?.name === 'TimeoutError' || err?.name === 'AbortError') {
        gone = false
        fail(`stat ${b.name} after rm hung (expected an error answer)`, err)
      }
    }
    if (gone) summary.goneAfterRm++
  }
} catch (err) {
  fail('unexpected error', err)
}
clearTimeout(hardTimer)
finish(0)
