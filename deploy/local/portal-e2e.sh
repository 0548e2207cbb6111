#!/usr/bin/env bash
# Drives the portal in a real browser (Debian's Chromium through playwright-core) against a
# served Tessera on the real Postgres and Redis: a fresh database, a bootstrapped platform
# administrator, a random port. The tests are portal/e2e/*.test.mjs (node's test runner).
# Called by test.sh after the cargo tests; runs alone too. Extra arguments go to `node --test`
# (e.g. --test-name-pattern=headline). The headline test photographs the dashboard and the
# models page into TESSERA_SCREENSHOTS (default: a temporary directory); the README's come from
#   TESSERA_SCREENSHOTS=$PWD/portal/screenshots deploy/local/portal-e2e.sh --test-name-pattern=headline
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

DB_NAME="${TESSERA_E2E_DATABASE:-tessera_portal_e2e}"
ADMIN_EMAIL=root@platform.test
ADMIN_PASSWORD="portal e2e platform admin password"

ensure_packages
ensure_running
ensure_onnxruntime
ensure_browser
export_test_env
build_portal
cargo build --locked --quiet --bin tessera

work="$(mktemp -d /tmp/tessera-portal-e2e.XXXXXX)"
trap 'stop_fresh "$DB_NAME" "$work"' EXIT
# Usage reaches the dashboard within a second of a call, not the test default's hour.
if grep -q '^\[usage\]' config/default.toml; then export TESSERA__USAGE__FLUSH_INTERVAL_SECONDS=1; fi
# Training jobs run in the served process.
FRESH_JOB_WORKERS=1 serve_fresh "$DB_NAME" "$work" "tessera-portal-e2e-$$"
TESSERA_BOOTSTRAP_PASSWORD="$ADMIN_PASSWORD" "$bin" admin bootstrap --email "$ADMIN_EMAIL" >/dev/null

started=$SECONDS
status=0
(
  cd portal
  TESSERA_URL="$base" TESSERA_ADMIN_EMAIL="$ADMIN_EMAIL" TESSERA_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
    TESSERA_MODEL="$TESSERA_ROOT/tests/fixtures/models/add_fp32.onnx" \
    TESSERA_SCREENSHOTS="${TESSERA_SCREENSHOTS:-$work/screenshots}" CHROMIUM="${CHROMIUM:-/usr/bin/chromium}" \
    node --test --test-concurrency=1 --test-reporter=spec "$@" e2e/
) || status=$?
log "portal browser tests took $((SECONDS - started)) s"
if grep -n 'panicked at' "$work/server.log" >&2; then
  die "Tessera panicked during the browser tests (server log lines above)"
fi
[ "$status" -eq 0 ] || { tail -n 30 "$work/server.log" >&2; die "portal browser tests failed"; }
