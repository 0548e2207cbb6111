#!/usr/bin/env bash
# Runs Tessera's benchmarks (release build) against the real Postgres and Redis on this machine.
#   deploy/local/bench.sh            auth, audit_write, audit_export and registry (`bare_oip` is
#                                    the server bench-inference.sh starts; `burn` runs through bench-burn.sh)
#   deploy/local/bench.sh auth       one of them (see tests/bench/)
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

ensure_packages
ensure_running
ensure_onnxruntime
export_test_env
build_portal

# One cargo invocation, so the release build happens once for all the benchmarks named.
targets=()
names=("$@")
if [ ${#names[@]} -eq 0 ]; then names=(auth audit_export audit_write registry); fi
for name in "${names[@]}"; do targets+=(--bench "$name"); done
cargo bench --locked "${targets[@]}"
