#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), starting from the
# seed corpus in fuzz/corpus/<target> (read only); what libFuzzer finds
# goes to fuzz/corpus-run/<target>, crashes to fuzz/artifacts/<target>.
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); the stable
# toolchain runs it with RUSTC_BOOTSTRAP=1 (sanitizer flags are unstable).
#
#   bash fuzz/run.sh          # 60 s per target
#   bash fuzz/run.sh 3600     # an hour per target
#   bash fuzz/run.sh 60 car   # one target
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(cid index_entry car multipart)
export RUSTC_BOOTSTRAP=1
# Its own target directory, whatever CARGO_TARGET_DIR the main build uses.
export CARGO_TARGET_DIR="$PWD/target"
cargo fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "corpus-run/$t"
  printf '\n==> fuzz %s for %ss\n' "$t" "$seconds"
  log=$(mktemp)
  status=0
  cargo fuzz run -O "$t" "corpus-run/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  grep -E '^(#[0-9]+ *DONE|stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|Test unit written)|panicked' "$log" || true
  if ls "artifacts/$t"/crash-* "artifacts/$t"/oom-* "artifacts/$t"/timeout-* >/dev/null 2>&1; then
    echo "fuzz $t: found a failing input in fuzz/artifacts/$t" >&2
    exit 1
  fi
  # A fuzzer that did not start (build, flags, corpus) must not pass: it
  # has to exit cleanly and report the inputs it ran.
  units=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  if [ "$status" -ne 0 ] || [ -z "$units" ] || [ "$units" -eq 0 ]; then
    echo "fuzz $t: the fuzzer did not run to the end (exit $status, ${units:-no} units executed):" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  rm -f "$log"
done
