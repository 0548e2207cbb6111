#!/usr/bin/env bash
# Tessera beside other Open Inference Protocol servers (MLServer, KServe's model server, a
# FastAPI + onnxruntime server) on the same ONNX models and the same wrk load, using the
# side-by-side harness in bench/peers (default: ../shared/bench/peers beside the repository).
#
#   deploy/local/bench-peers.sh [PEERS_DIR]
#   PEERS="" deploy/local/bench-peers.sh      Tessera alone (any run.sh knob passes through)
#   TESSERA_AUDIT_MODE=aggregated ...         how the tenant's calls are audited (default every_call)
#
# Tessera runs as a release build with its defaults (one ONNX Runtime session with one intra-op
# thread per model, greedy dynamic batching, every call audited), against a fresh database, as
# an API key with the inference role: the same authenticated path applications use.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

PEERS_DIR="$(cd "${1:-$TESSERA_ROOT/../shared/bench/peers}" && pwd)"
PORT="${TESSERA_BENCH_PORT:-18990}"

ensure_packages
ensure_running
ensure_onnxruntime
command -v wrk >/dev/null 2>&1 || { log "installing wrk"; as_root apt-get install -y -qq wrk >/dev/null; }
[ -x /tmp/peer-tools/bin/python ] || { log "creating the peers' virtualenvs"; "$PEERS_DIR/setup_venvs.sh"; }

owner_password="$(local_secret db-owner-password)"
app_password="$(local_secret db-app-password)"
ensure_role tessera "" "$owner_password"
ensure_role tessera_app "NOSUPERUSER NOBYPASSRLS" "$app_password"
psql_super -d postgres -c "DROP DATABASE IF EXISTS tessera_bench WITH (FORCE)" >/dev/null
psql_super -d postgres -c "CREATE DATABASE tessera_bench OWNER tessera" >/dev/null

log "building Tessera (release)"
cargo build --locked --release --quiet --bin tessera
bin="${CARGO_TARGET_DIR:-$TESSERA_ROOT/target}/release/tessera"

work="$(mktemp -d /tmp/tessera-bench-peers.XXXXXX)"
export TESSERA_ENV=development
export TESSERA__DATABASE__URL="postgres://tessera_app@127.0.0.1:5432/tessera_bench"
export TESSERA__DATABASE__PASSWORD_FILE="$app_password"
export TESSERA__DATABASE__MIGRATION_URL="postgres://tessera:$(cat "$owner_password")@127.0.0.1:5432/tessera_bench"
export TESSERA__REDIS__KEY_PREFIX="tessera-bench"
export TESSERA__SERVER__PORT="$PORT"
export TESSERA__REGISTRY__STORAGE__PATH="$work/artifacts"
export TESSERA__TELEMETRY__LOG_FILTER=warn
export TESSERA__TELEMETRY__LOG_FORMAT=text

"$bin" migrate >/dev/null
"$bin" tenant create --slug bench --name "Benchmark tenant" >/dev/null
# The per-tenant rate limit would otherwise be what is measured.
psql_super -d tessera_bench -c "UPDATE tenants SET rate_limit_per_second = 10000000, rate_limit_burst = 10000000" >/dev/null
psql_super -d tessera_bench -c "INSERT INTO audit_settings (tenant_id, inference_mode) SELECT id, '${TESSERA_AUDIT_MODE:-every_call}' FROM tenants" >/dev/null
secret() { "$bin" apikey create --tenant bench --name "$1" --role "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'; }
uploader="$(secret uploader ml_engineer)"
caller="$(secret caller inference)"

"$bin" serve >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null 2>&1 && break
  sleep 0.2
done

/tmp/peer-tools/bin/python "$PEERS_DIR/make_models.py" "$work/models" >/dev/null
for model in tiny mlp; do
  "$bin" model upload "$work/models/$model.onnx" --server "http://127.0.0.1:$PORT" --token "$uploader" \
    --tenant bench --model "$model" --create --no-progress >/dev/null
done

log "running the side-by-side benchmark (server log: $work/server.log)"
EXTRA_URL="http://127.0.0.1:$PORT" EXTRA_NAME=tessera EXTRA_HEADERS="Authorization: Bearer $caller" \
  EXTRA_TINY_MODEL=tiny EXTRA_MLP_MODEL=mlp "$PEERS_DIR/run.sh"
