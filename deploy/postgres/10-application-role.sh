#!/bin/sh
# Runs once, when the Postgres data volume is first initialised: creates the role Tessera
# serves through. It owns nothing and cannot bypass row-level security; the schema belongs to
# POSTGRES_USER, which only `tessera migrate` uses.
set -eu
password="$(cat /run/secrets/db_app_password)"
psql -v ON_ERROR_STOP=1 -v password="$password" --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE tessera_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD :'password';
SQL
