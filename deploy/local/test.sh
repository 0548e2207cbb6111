#!/usr/bin/env bash
# Runs Tessera's whole test suite against the real Postgres and Redis on this machine,
# installing and starting them first when needed. Extra arguments go to `cargo test`.
# After a whole suite that passed, fuzzes the API (schemathesis.sh): extra arguments mean a
# chosen subset, so they skip it, and so does TESSERA_SKIP_SCHEMATHESIS=1.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

ensure_packages
ensure_running
ensure_onnxruntime
ensure_test_python

export_test_env

cargo test --locked "$@"

if [ $# -eq 0 ] && [ "${TESSERA_SKIP_SCHEMATHESIS:-0}" != 1 ]; then
  bash "$TESSERA_ROOT/deploy/local/schemathesis.sh"
fi
