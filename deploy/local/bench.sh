#!/usr/bin/env bash
# Runs Tessera's benchmarks (release build) against the real Postgres and Redis on this machine.
#   deploy/local/bench.sh            all benchmarks
#   deploy/local/bench.sh auth       one of them (see tests/bench/)
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

ensure_packages
ensure_running
ensure_onnxruntime
export_test_env

# One cargo invocation, so the release build happens once for all the benchmarks named.
targets=()
for name in "$@"; do targets+=(--bench "$name"); done
cargo bench --locked "${targets[@]}"
