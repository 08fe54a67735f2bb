// What helia-fetch.mjs and verified-fetch.mjs share: a Helia node whose
// only block source is one local trustless gateway, and error reporting.

import { fallbackRouter } from '@helia/fallback-router'
import { trustlessGatewayBlockBroker } from '@helia/trustless-gateway-client'
import { createHeliaLight } from 'helia'

// Flattens nested AggregateErrors / causes (Helia wraps the gateway's answer,
// e.g. "received 404 Not Found", two levels deep) into one line.
export function describe (err, depth = 0) {
  if (err == null || typeof err !== 'object') return String(err)
  let text = err.message ?? String(err)
  if (depth > 4) return text
  const inner = [...(Array.isArray(err.errors) ? err.errors : []), ...(err.cause != null ? [err.cause] : [])]
  if (inner.length > 0) text += ` [${inner.map(e => describe(e, depth + 1)).join('; ')}]`
  return text
}

// A `fail(err, code = 1)` for the script `name`: one JSON line on stdout,
// the details on stderr, and the exit code.
export function failer (name) {
  return (err, code = 1) => {
    const message = describe(err)
    process.stdout.write(JSON.stringify({ ok: false, error: message }) + '\n')
    process.stderr.write(`${name}: ${err?.stack ?? message}\n`)
    process.exit(code)
  }
}

// The gateway URL argument, parsed; `usage(message)` is called (and must
// exit) if it is not a URL or has a path: the trustless-gateway client
// always asks for /ipfs/{cid} at the gateway's root.
export function gatewayOrigin (arg, usage) {
  let url
  try {
    url = new URL(arg)
  } catch {
    usage(`invalid gateway URL: ${arg}`)
  }
  if (url.pathname !== '/' && url.pathname !== '') {
    usage(`the gateway URL must not have a path (got ${url.pathname})`)
  }
  return url
}

// A started createHeliaLight node: no libp2p, no bitswap, the
// trustless-gateway block broker (plain http and loopback allowed) and one
// router that yields `gatewayUrl` for every CID. The fallbackRouter is
// wrapped in a plain router (no 'fallback' capability) on purpose: Helia
// queries non-fallback routers first and, when there are none, waits
// forever on that empty first phase.
export async function createLocalHelia (gatewayUrl) {
  const gatewayRouter = fallbackRouter({ gateways: [gatewayUrl.toString()], shuffle: false })
  const localRouter = {
    name: 'local-gateway-router',
    findProviders: (cid, options) => gatewayRouter.findProviders(cid, options),
    toString: () => `LocalGatewayRouter(${gatewayUrl})`
  }
  const helia = await createHeliaLight({
    blockBrokers: [trustlessGatewayBlockBroker({ allowInsecure: true, allowLocal: true })],
    routers: [localRouter]
  })
  await helia.start()
  return helia
}
