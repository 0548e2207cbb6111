#!/usr/bin/env bash
# Runs Tessera's whole test suite against the real Postgres and Redis on this machine,
# installing and starting them first when needed. Extra arguments go to `cargo test`.
# The portal is built first (the binary embeds it) and its generated API client checked
# against openapi/openapi.json; the Kubernetes manifests are checked offline by kubernetes.sh
# (seconds; TESSERA_SKIP_KUBERNETES=1 skips it). After a whole suite that passed, drives the
# portal in a browser (portal-e2e.sh), runs several processes as one Tessera (scale-out.sh)
# and fuzzes the API (schemathesis.sh): extra arguments mean a chosen subset, so they skip all
# three, and so do TESSERA_SKIP_E2E=1, TESSERA_SKIP_SCALE=1 and TESSERA_SKIP_SCHEMATHESIS=1.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

ensure_packages
ensure_running
ensure_onnxruntime
ensure_test_python

export_test_env

build_portal
(cd portal && npm run --silent check-client)
[ "${TESSERA_SKIP_KUBERNETES:-0}" = 1 ] || bash "$TESSERA_ROOT/deploy/local/kubernetes.sh"

cargo test --locked "$@"

if [ $# -eq 0 ] && [ "${TESSERA_SKIP_E2E:-0}" != 1 ]; then
  bash "$TESSERA_ROOT/deploy/local/portal-e2e.sh"
fi

if [ $# -eq 0 ] && [ "${TESSERA_SKIP_SCALE:-0}" != 1 ]; then
  bash "$TESSERA_ROOT/deploy/local/scale-out.sh"
fi

if [ $# -eq 0 ] && [ "${TESSERA_SKIP_SCHEMATHESIS:-0}" != 1 ]; then
  bash "$TESSERA_ROOT/deploy/local/schemathesis.sh"
fi
