#!/usr/bin/env bash
# Sets up everything Tessera needs on a Debian/Ubuntu machine and runs the server:
# installs and starts Postgres and Redis when missing, creates the database and its roles,
# builds Tessera, applies migrations and serves on http://127.0.0.1:8080.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

ensure_packages
ensure_running

owner_password="$(local_secret db-owner-password)"
ensure_role tessera "" "$owner_password"
if [ "$(psql_super -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'tessera'")" != "1" ]; then
  log "creating database tessera"
  psql_super -d postgres -c "CREATE DATABASE tessera OWNER tessera" >/dev/null
fi

log "building Tessera"
cargo build --locked --quiet --bin tessera
target_dir="${CARGO_TARGET_DIR:-$TESSERA_ROOT/target}"

export TESSERA_ENV="${TESSERA_ENV:-development}"
export TESSERA__DATABASE__URL="${TESSERA__DATABASE__URL:-postgres://tessera@127.0.0.1:5432/tessera}"
export TESSERA__DATABASE__PASSWORD_FILE="${TESSERA__DATABASE__PASSWORD_FILE:-$owner_password}"

log "applying migrations"
"$target_dir/debug/tessera" migrate
log "starting Tessera (Ctrl-C stops it)"
exec "$target_dir/debug/tessera" serve
