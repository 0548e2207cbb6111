#!/usr/bin/env bash
# Runs Tessera's whole test suite against the real Postgres and Redis on this machine,
# installing and starting them first when needed. Extra arguments go to `cargo test`.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

ensure_packages
ensure_running
ensure_onnxruntime
ensure_test_python

export_test_env

cargo test --locked "$@"
