#!/usr/bin/env bash
# Sets up everything Tessera needs on a Debian/Ubuntu machine and runs the server:
# installs and starts Postgres and Redis when missing, creates the database and its roles,
# builds the portal and Tessera (which embeds it), applies migrations, creates the first
# platform administrator and serves on http://127.0.0.1:8080 (the portal at /portal).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

ensure_packages
ensure_running
ensure_onnxruntime

# Two roles: tessera owns the schema and migrates; tessera_app is what the server connects as.
# It owns nothing and cannot bypass row-level security.
owner_password="$(local_secret db-owner-password)"
app_password="$(local_secret db-app-password)"
ensure_role tessera "" "$owner_password"
ensure_role tessera_app "NOSUPERUSER NOBYPASSRLS" "$app_password"
if [ "$(psql_super -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'tessera'")" != "1" ]; then
  log "creating database tessera"
  psql_super -d postgres -c "CREATE DATABASE tessera OWNER tessera" >/dev/null
fi

build_portal
log "building Tessera"
cargo build --locked --quiet --bin tessera
target_dir="${CARGO_TARGET_DIR:-$TESSERA_ROOT/target}"

export TESSERA_ENV="${TESSERA_ENV:-development}"
export TESSERA__DATABASE__URL="${TESSERA__DATABASE__URL:-postgres://tessera_app@127.0.0.1:5432/tessera}"
export TESSERA__DATABASE__PASSWORD_FILE="${TESSERA__DATABASE__PASSWORD_FILE:-$app_password}"
export TESSERA__DATABASE__MIGRATION_URL="${TESSERA__DATABASE__MIGRATION_URL:-postgres://tessera:$(cat "$owner_password")@127.0.0.1:5432/tessera}"

log "applying migrations"
"$target_dir/debug/tessera" migrate

# The first platform administrator, so that everything else can be done in the portal. Its
# password is generated once per checkout into .local/; bootstrap refuses once one exists.
admin_email="${TESSERA_ADMIN_EMAIL:-admin@example.com}"
admin_password="$(local_secret admin-password)"
if TESSERA_BOOTSTRAP_PASSWORD="$(cat "$admin_password")" "$target_dir/debug/tessera" admin bootstrap --email "$admin_email" >/dev/null 2>&1; then
  log "created the platform administrator $admin_email"
fi
log "portal: http://127.0.0.1:${TESSERA__SERVER__PORT:-8080}/portal, as $admin_email with the password in $admin_password ($(cat "$admin_password"))"
log "starting Tessera (Ctrl-C stops it)"
exec "$target_dir/debug/tessera" serve
