#!/usr/bin/env bash
# Where the client-interop tools live. Source it to get the variables, or run
# it to print them (KEY=VALUE lines):
#   CLIENTS_DIR     this directory (tests/clients)
#   CLIENTS_VENV    the venv made by setup.sh ($CLIENTS_VENV, default .venv here)
#   CLIENTS_NODE    Node.js 24 to run the .mjs scripts and ipfs-car with
#   CLIENTS_PYTHON  Python with grpcio, for grpc_client.py
#   CLIENTS_IPFS_CAR  ipfs-car's CLI entry (run it with $CLIENTS_NODE)
# Run setup.sh first; this script does not install anything.
_clients_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLIENTS_DIR="$_clients_here"
CLIENTS_VENV="${CLIENTS_VENV:-$_clients_here/.venv}"
CLIENTS_NODE="$CLIENTS_VENV/bin/node"
CLIENTS_PYTHON="$CLIENTS_VENV/bin/python"
CLIENTS_IPFS_CAR="$_clients_here/node_modules/ipfs-car/bin.js"
export CLIENTS_DIR CLIENTS_VENV CLIENTS_NODE CLIENTS_PYTHON CLIENTS_IPFS_CAR
unset _clients_here
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  for v in CLIENTS_DIR CLIENTS_VENV CLIENTS_NODE CLIENTS_PYTHON CLIENTS_IPFS_CAR; do
    printf '%s=%s\n' "$v" "${!v}"
  done
fi
