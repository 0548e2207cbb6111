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
#      auditing every call (the default) and one in `aggregated` mode, in rounds that swap
#      which of the two runs first;
#   5. HTTP against gRPC, both driven by the same client (tests/bench/oip_load.rs) with the same
#      tensors: the tiny model at 1 and 16 connections (gRPC with raw contents), and the MLP with
#      8 rows at 16 (HTTP JSON, gRPC raw and typed). Every answer is checked against the first.
#
#   deploy/local/bench-inference.sh [PEERS_DIR]     (models and request bodies come from bench/peers)
#
# SECTIONS picks some of them (default "floor batching cache audit grpc"); AUDIT_ROUNDS sets how
# many alternated rounds section 4 runs (default 2); DURATION is seconds per wrk run;
# TESSERA_BENCH_BIN runs another build of Tessera instead of building this tree (A/B runs).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

PEERS_DIR="$(cd "${1:-$TESSERA_ROOT/../shared/bench/peers}" && pwd)"
PORT="${TESSERA_BENCH_PORT:-18990}"
BARE_PORT="${BARE_PORT:-18991}"
DURATION="${DURATION:-10}"
SECTIONS=" ${SECTIONS:-floor batching cache audit grpc} "
AUDIT_ROUNDS="${AUDIT_ROUNDS:-2}"
section() { [[ "$SECTIONS" == *" $1 "* ]]; }

bench_load_tools "$PEERS_DIR"

work="$(mktemp -d /tmp/tessera-bench-inference.XXXXXX)"
bench_environment "$PORT" "$work"
bin="$bench_bin"
# bench_executable NAME: builds tests/bench/NAME.rs (release) and prints its path.
bench_executable() {
  cargo bench --locked --quiet --bench "$1" --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
}
log "building the bare handler and the load generator (release)"
bare="$(bench_executable bare_oip)"
load="$(bench_executable oip_load)"
/tmp/peer-tools/bin/python "$PEERS_DIR/make_models.py" "$work/models" >/dev/null
/tmp/peer-tools/bin/python "$PEERS_DIR/make_requests.py" "$work/models" "$work/req" >/dev/null
cp tests/fixtures/models/slow_fp32.onnx "$work/models/slow.onnx"
# 160 rows of the heavy fixture (about a millisecond of ONNX Runtime here), as binary tensor
# data both ways, so that parsing and encoding cost the same little whether the answer comes
# from the cache or from the model.
slow_header_len="$(python3 - "$work/req/slow.bin" <<'PY'
import json, struct, sys
rows = 160
header = json.dumps({"inputs": [{"name": "x", "shape": [rows, 128], "datatype": "FP32",
                                 "parameters": {"binary_data_size": rows * 128 * 4}}],
                     "parameters": {"binary_data_output": True}}).encode()
with open(sys.argv[1], "wb") as f:
    f.write(header + struct.pack("<%df" % (rows * 128), *([0.25] * (rows * 128))))
print(len(header))
PY
)"

bench_tenant bench
bench_tenant bench-agg aggregated
uploader="$(bench_key bench uploader ml_engineer)"
caller="$(bench_key bench caller inference)"
uploader_agg="$(bench_key bench-agg uploader ml_engineer)"
caller_agg="$(bench_key bench-agg caller inference)"

"$bin" serve >"$work/server.log" 2>&1 &
server=$!
BARE_MODEL="$work/models/tiny.onnx" BARE_PORT="$BARE_PORT" "$bare" >"$work/bare.log" 2>&1 &
bare_pid=$!
trap 'kill "$server" "$bare_pid" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
wait_ready "http://127.0.0.1:$PORT/v2/health/ready"
wait_ready "http://127.0.0.1:$BARE_PORT/v2/health/ready"

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


auth="Authorization: Bearer $caller"
log "warming up"
for c in 1 16; do
  wrk_run warmup "http://127.0.0.1:$BARE_PORT/v2/models/tiny/infer" "$work/req/tiny_b1.json" "$c" >/dev/null
  wrk_run warmup "$api/v2/models/tiny/infer" "$work/req/tiny_b1.json" "$c" "$auth" >/dev/null
done
curl -fsS "$api/v2/models/slow/ready" -H "$auth" >/dev/null

echo
echo "| target | connections | req/s | p50 ms | p99 ms | non-2xx |"
echo "|---|---:|---:|---:|---:|---:|"
if section floor; then
  for c in 1 16 64; do
    wrk_run "bare handler, tiny" "http://127.0.0.1:$BARE_PORT/v2/models/tiny/infer" "$work/req/tiny_b1.json" "$c"
    wrk_run "tessera, tiny" "$api/v2/models/tiny/infer" "$work/req/tiny_b1.json" "$c" "$auth"
  done
fi
if section batching; then
  wrk_run "tessera, mlp b1, batching on" "$api/v2/models/mlp/infer" "$work/req/mlp_b1.json" 64 "$auth"
  wrk_run "tessera, mlp b1, batching off" "$api/v2/models/mlp-nobatch/infer" "$work/req/mlp_b1.json" 64 "$auth"
fi
if section cache; then
  slow_headers="$auth;;Inference-Header-Content-Length: $slow_header_len"
  wrk_run "tessera, heavy model 160 rows, cache hit" "$api/v2/models/slow/infer" "$work/req/slow.bin" 1 "$slow_headers"
  wrk_run "tessera, heavy model 160 rows, cache bypass (runs)" "$api/v2/models/slow/infer" "$work/req/slow.bin" 1 "$slow_headers;;Cache-Control: no-cache"
fi
# load_run LABEL PROTOCOL ADDRESS MODEL BODY CONNECTIONS [TOKEN]: one oip_load run as a table row.
load_run() {
  local out
  out="$("$load" "$2" "$3" "$4" "$5" "$6" "${DURATION}" ${7:+"$7"})"
  python3 - "$1" "$6" "$out" <<'PY'
import re, sys
label, connections, text = sys.argv[1:4]
f = dict(re.findall(r"(\w+)=([\d.]+)", text))
failed = sum(int(f[k]) for k in ("bad", "limited", "other", "errors"))
print(f"| {label} | {connections} | {float(f['rps']):,.0f} | {float(f['p50_ms']):.3f} | {float(f['p99_ms']):.3f} | {failed} |")
PY
}
if section grpc; then
  grpc="127.0.0.1:$TESSERA__SERVER__GRPC_PORT"
  for c in 1 16; do
    load_run "tessera HTTP, tiny (oip_load)" http "127.0.0.1:$PORT" tiny "$work/req/tiny_b1.json" "$c" "$caller"
    load_run "tessera gRPC raw, tiny (oip_load)" grpc "$grpc" tiny "$work/req/tiny_b1.json" "$c" "$caller"
  done
  load_run "tessera HTTP JSON, mlp 8 rows (oip_load)" http "127.0.0.1:$PORT" mlp "$work/req/mlp_b8.json" 16 "$caller"
  load_run "tessera gRPC raw, mlp 8 rows (oip_load)" grpc "$grpc" mlp "$work/req/mlp_b8.json" 16 "$caller"
  load_run "tessera gRPC typed, mlp 8 rows (oip_load)" grpc-typed "$grpc" mlp "$work/req/mlp_b8.json" 16 "$caller"
fi
if section audit; then
  every() { wrk_run "tessera, tiny, every call audited ($1)" "$api/v2/models/tiny/infer" "$work/req/tiny_b1.json" 16 "$auth"; }
  aggregated() { wrk_run "tessera, tiny, aggregated audit ($1)" "$api/v2/models/tiny/infer" "$work/req/tiny_b1.json" 16 "Authorization: Bearer $caller_agg"; }
  # Each round swaps which runs first, so a drift of the machine during the run favours neither.
  for round in $(seq 1 "$AUDIT_ROUNDS"); do
    if (( round % 2 )); then every "$round"; aggregated "$round"; else aggregated "$round"; every "$round"; fi
  done
fi

# Nothing was lost on the way: every chain the run wrote verifies, from the database.
sleep 2
if "$bin" audit verify --database >"$work/verify.txt" 2>&1; then
  log "audit: $(grep -c ': OK' "$work/verify.txt") chains verify after the run"
else
  cat "$work/verify.txt" >&2
  die "the audit chain does not verify after the run"
fi
