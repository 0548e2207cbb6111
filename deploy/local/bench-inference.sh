#!/usr/bin/env bash
# The inference path's own figures, all in one run on this machine, with wrk:
#   1. the floor: a bare actix-web OIP handler calling ONNX Runtime inline (tests/bench/bare_oip.rs,
#      no auth, tenancy, validation, batching, metrics or audit) vs Tessera's full path,
#      tiny model, 1 / 16 / 64 connections;
#   2. dynamic batching on vs off: the MLP model at 64 connections, served twice by the same
#      Tessera, as `mlp` (default serving) and `mlp-nobatch` (max_batch_size 1);
#   3. the result cache: a model that takes milliseconds, answered from Redis (hit) vs run
#      (`Cache-Control: no-cache`);
#   4. the cost of auditing every call: the tiny model in two tenants of the same server, one
#      auditing every call (the default) and one in `aggregated` mode, runs alternated.
#
#   deploy/local/bench-inference.sh [PEERS_DIR]     (models and request bodies come from bench/peers)
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

PEERS_DIR="$(cd "${1:-$TESSERA_ROOT/../shared/bench/peers}" && pwd)"
PORT="${TESSERA_BENCH_PORT:-18990}"
BARE_PORT="${BARE_PORT:-18991}"
DURATION="${DURATION:-10}"

ensure_packages
ensure_running
ensure_onnxruntime
command -v wrk >/dev/null 2>&1 || { log "installing wrk"; as_root apt-get install -y -qq wrk >/dev/null; }
[ -x /tmp/peer-tools/bin/python ] || VENVS=tools "$PEERS_DIR/setup_venvs.sh"

owner_password="$(local_secret db-owner-password)"
app_password="$(local_secret db-app-password)"
ensure_role tessera "" "$owner_password"
ensure_role tessera_app "NOSUPERUSER NOBYPASSRLS" "$app_password"
psql_super -d postgres -c "DROP DATABASE IF EXISTS tessera_bench WITH (FORCE)" >/dev/null
psql_super -d postgres -c "CREATE DATABASE tessera_bench OWNER tessera" >/dev/null

log "building Tessera and the bare handler (release)"
cargo build --locked --release --quiet --bin tessera
bare="$(cargo bench --locked --quiet --bench bare_oip --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "bare_oip" and m.get("executable"):
        print(m["executable"])')"
bin="${CARGO_TARGET_DIR:-$TESSERA_ROOT/target}/release/tessera"

work="$(mktemp -d /tmp/tessera-bench-inference.XXXXXX)"
/tmp/peer-tools/bin/python "$PEERS_DIR/make_models.py" "$work/models" >/dev/null
/tmp/peer-tools/bin/python "$PEERS_DIR/make_requests.py" "$work/models" "$work/req" >/dev/null
cp tests/fixtures/models/slow_fp32.onnx "$work/models/slow.onnx"
python3 -c 'import json; print(json.dumps({"inputs":[{"name":"x","shape":[16,128],"datatype":"FP32","data":[0.25]*2048}]}))' > "$work/req/slow.json"

export TESSERA_ENV=development
export TESSERA__DATABASE__URL="postgres://tessera_app@127.0.0.1:5432/tessera_bench"
export TESSERA__DATABASE__PASSWORD_FILE="$app_password"
export TESSERA__DATABASE__MIGRATION_URL="postgres://tessera:$(cat "$owner_password")@127.0.0.1:5432/tessera_bench"
export TESSERA__REDIS__KEY_PREFIX="tessera-bench"
export TESSERA__SERVER__PORT="$PORT"
export TESSERA__REGISTRY__STORAGE__PATH="$work/artifacts"
export TESSERA__TELEMETRY__LOG_FILTER=warn
"$bin" migrate >/dev/null
"$bin" tenant create --slug bench --name "Benchmark tenant" >/dev/null
"$bin" tenant create --slug bench-agg --name "Benchmark tenant, aggregated audit" >/dev/null
psql_super -d tessera_bench -c "UPDATE tenants SET rate_limit_per_second = 10000000, rate_limit_burst = 10000000" >/dev/null
psql_super -d tessera_bench -c "INSERT INTO audit_settings (tenant_id, inference_mode) SELECT id, 'aggregated' FROM tenants WHERE slug = 'bench-agg'" >/dev/null
secret() { "$bin" apikey create --tenant "${3:-bench}" --name "$1" --role "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'; }
uploader="$(secret uploader ml_engineer)"
caller="$(secret caller inference)"
uploader_agg="$(secret uploader ml_engineer bench-agg)"
caller_agg="$(secret caller inference bench-agg)"

"$bin" serve >"$work/server.log" 2>&1 &
server=$!
BARE_MODEL="$work/models/tiny.onnx" BARE_PORT="$BARE_PORT" "$bare" >"$work/bare.log" 2>&1 &
bare_pid=$!
trap 'kill "$server" "$bare_pid" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for url in "http://127.0.0.1:$PORT/v2/health/ready" "http://127.0.0.1:$BARE_PORT/v2/health/ready"; do
  for _ in $(seq 1 100); do curl -fsS "$url" >/dev/null 2>&1 && break; sleep 0.2; done
done

api="http://127.0.0.1:$PORT"
create() {
  curl -fsS "$api/v1/tenants/bench/models" -H "authorization: Bearer $uploader" -H 'content-type: application/json' -d "$1" >/dev/null
}
create '{"name":"tiny","framework":"onnx"}'
create '{"name":"mlp","framework":"onnx"}'
create '{"name":"mlp-nobatch","framework":"onnx","serving":{"max_batch_size":1}}'
create '{"name":"slow","framework":"onnx","deterministic":true,"serving":{"cache_ttl_seconds":3600}}'
for pair in tiny:tiny mlp:mlp mlp-nobatch:mlp slow:slow; do
  "$bin" model upload "$work/models/${pair#*:}.onnx" --server "$api" --token "$uploader" \
    --tenant bench --model "${pair%%:*}" --no-progress >/dev/null
done
"$bin" model upload "$work/models/tiny.onnx" --server "$api" --token "$uploader_agg" \
  --tenant bench-agg --model tiny --create --no-progress >/dev/null

# run LABEL URL BODY CONNECTIONS [HEADERS]: one wrk run; prints req/s, p50, p99.
run() {
  local out
  out="$(BODY_FILE="$3" HEADERS="${5:-}" wrk -t1 -c"$4" -d"${DURATION}s" --latency -s tests/bench/oip.lua "$2")"
  python3 - "$1" "$4" <<PY
import re, sys
text = """$out"""
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def pct(p):
    m = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)" % p, text)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
bad = re.search(r"non2xx=(\d+) bad=(\d+)", text)
print(f"| {sys.argv[1]} | {sys.argv[2]} | {rps:,.0f} | {pct(50):.3f} | {pct(99):.3f} | {bad.group(1) if bad else '?'} |")
PY
}

auth="Authorization: Bearer $caller"
log "warming up"
for c in 1 16; do
  run warmup "http://127.0.0.1:$BARE_PORT/v2/models/tiny/infer" "$work/req/tiny_b1.json" "$c" >/dev/null
  run warmup "$api/v2/models/tiny/infer" "$work/req/tiny_b1.json" "$c" "$auth" >/dev/null
done
curl -fsS "$api/v2/models/slow/ready" -H "$auth" >/dev/null

echo
echo "| target | connections | req/s | p50 ms | p99 ms | non-2xx |"
echo "|---|---:|---:|---:|---:|---:|"
for c in 1 16 64; do
  run "bare handler, tiny" "http://127.0.0.1:$BARE_PORT/v2/models/tiny/infer" "$work/req/tiny_b1.json" "$c"
  run "tessera, tiny" "$api/v2/models/tiny/infer" "$work/req/tiny_b1.json" "$c" "$auth"
done
run "tessera, mlp b1, batching on" "$api/v2/models/mlp/infer" "$work/req/mlp_b1.json" 64 "$auth"
run "tessera, mlp b1, batching off" "$api/v2/models/mlp-nobatch/infer" "$work/req/mlp_b1.json" 64 "$auth"
run "tessera, slow 16 rows, cache hit" "$api/v2/models/slow/infer" "$work/req/slow.json" 1 "$auth"
run "tessera, slow 16 rows, cache bypass (runs)" "$api/v2/models/slow/infer" "$work/req/slow.json" 1 "$auth;;Cache-Control: no-cache"
for round in 1 2; do
  run "tessera, tiny, every call audited ($round)" "$api/v2/models/tiny/infer" "$work/req/tiny_b1.json" 16 "$auth"
  run "tessera, tiny, aggregated audit ($round)" "$api/v2/models/tiny/infer" "$work/req/tiny_b1.json" 16 "Authorization: Bearer $caller_agg"
done
