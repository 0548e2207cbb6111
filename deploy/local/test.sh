#!/usr/bin/env bash
# Runs Tessera's whole test suite against the real Postgres and Redis on this machine,
# installing and starting them first when needed. Extra arguments go to `cargo test`.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

ensure_packages
ensure_running

# The harness creates and drops one database per test, so it needs a role that may do so.
test_password="$(local_secret db-test-password)"
ensure_role tessera_test "SUPERUSER" "$test_password"
export TESSERA_TEST_DATABASE_URL="${TESSERA_TEST_DATABASE_URL:-postgres://tessera_test:$(cat "$test_password")@127.0.0.1:5432/postgres}"
# The application role the tests' servers connect as (cluster-wide; owns nothing).
app_password="$(local_secret db-app-password)"
ensure_role tessera_app "NOSUPERUSER NOBYPASSRLS" "$app_password"
export TESSERA_TEST_APP_PASSWORD="${TESSERA_TEST_APP_PASSWORD:-$(cat "$app_password")}"
export TESSERA_TEST_REDIS_URL="${TESSERA_TEST_REDIS_URL:-redis://127.0.0.1:6379}"

cargo test --locked "$@"
