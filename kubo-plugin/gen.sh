#!/usr/bin/env bash
# Generates the Go gRPC stubs in pb/ from ../proto (committed, so that a
# plain `go build` needs no protoc).
#
#   bash gen.sh           regenerate pb/
#   bash gen.sh --check   fail (exit 1, with a diff) when pb/ does not match
#                         what ../proto generates now
#
# The compiler is the protoc inside grpcio-tools, from the client-interop
# venv (tests/clients/setup.sh installs it, pinned); the Go plugins are the
# versions pinned as tools in go.mod. Same pins, same bytes.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
MODULE=garage-ipfs/kubo-plugin
PROTO=garage_ipfs/v1/blockstore.proto

PY="${CLIENTS_VENV:-$ROOT/tests/clients/.venv}/bin/python"
if ! "$PY" -c 'import grpc_tools.protoc' 2>/dev/null; then
  bash "$ROOT/tests/clients/setup.sh" >&2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$HERE" && go build -o "$work/bin/" google.golang.org/protobuf/cmd/protoc-gen-go \
  google.golang.org/grpc/cmd/protoc-gen-go-grpc)

mkdir -p "$work/out"
"$PY" -m grpc_tools.protoc -I "$ROOT/proto" \
  --plugin=protoc-gen-go="$work/bin/protoc-gen-go" \
  --plugin=protoc-gen-go-grpc="$work/bin/protoc-gen-go-grpc" \
  --go_out="$work/out" --go_opt=module=$MODULE --go_opt="M$PROTO=$MODULE/pb;blockstorepb" \
  --go-grpc_out="$work/out" --go-grpc_opt=module=$MODULE --go-grpc_opt="M$PROTO=$MODULE/pb;blockstorepb" \
  "$PROTO"

if [ "${1:-}" = --check ]; then
  if ! diff -ru "$HERE/pb" "$work/out/pb"; then
    echo "kubo-plugin/pb is stale: proto/ changed; run 'bash kubo-plugin/gen.sh' and commit pb/" >&2
    exit 1
  fi
  echo "kubo-plugin/pb matches proto/"
else
  rm -rf "$HERE/pb"
  cp -r "$work/out/pb" "$HERE/pb"
  echo "wrote $(ls "$HERE/pb" | tr '\n' ' ')"
fi
