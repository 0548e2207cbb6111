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
#      8 rows at 16 (HTTP JSON, gRPC raw and typed). Every answer is checked against the first;
#   6. memory: the server's resident memory once an 84 MB model is loaded, against the model's
#      size, and its peak while 16 connections each send 4 MiB batches (4,096 rows of 256
#      features, binary);
#   7. mlserver: Seldon MLServer's gRPC server (../shared/bench/peers' runtime, ONNX Runtime
#      in-process) driven by the same client on the same models, beside Tessera's gRPC.
# The run ends with the targets, each a ratio of two figures from this run.
#
#   deploy/local/bench-inference.sh [PEERS_DIR]     (models and request bodies come from bench/peers)
#
# SECTIONS picks some of them (default "floor batching cache audit grpc memory mlserver");
# AUDIT_ROUNDS sets how many alternated rounds section 4 runs (default 2); DURATION is seconds
# per wrk run; MLSERVER_VENV is MLServer's virtualenv (default /tmp/peer-mlserver, made if missing);
# TESSERA_BENCH_BIN runs another build of Tessera instead of building this tree (A/B runs).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

PEERS_DIR="$(cd "${1:-$TESSERA_ROOT/../shared/bench/peers}" && pwd)"
PORT="${TESSERA_BENCH_PORT:-18990}"
BARE_PORT="${BARE_PORT:-18991}"
DURATION="${DURATION:-10}"
SECTIONS=" ${SECTIONS:-floor batching cache audit grpc memory mlserver} "
AUDIT_ROUNDS="${AUDIT_ROUNDS:-2}"
section() { [[ "$SECTIONS" == *" $1 "* ]]; }

bench_load_tools "$PEERS_DIR"

work="$(mktemp -d /tmp/tessera-bench-inference.XXXXXX)"
bench_environment "$PORT" "$work"
bin="$bench_bin"
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
# The servers by name: a bare `wait` would also wait for the `tee` below, which waits for us.
trap 'kill "$server" "$bare_pid" 2>/dev/null || true; wait "$server" "$bare_pid" 2>/dev/null || true' EXIT
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

# Everything below is also kept for the targets at the end.
exec > >(tee "$work/report.md")
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
# load_run LABEL PROTOCOL ADDRESS MODEL BODY CONNECTIONS [TOKEN]: one oip_load run as a table
# row; the CPU the server's processes ($measured, default Tessera's) and the client each spent
# per call goes to cpu.md.
load_run() {
  local row
  row="$(oip_load_row "$1" "$6" "${measured:-$server}" "$load" "$2" "$3" "$4" "$5" "$6" "${DURATION}" ${7:+"$7"})"
  echo "$row" | cut -d'|' -f1-7 | sed 's/ $/ |/'
  [ "$1" = warmup ] || echo "$row" | awk -F'|' '{ print "|" $2 "|" $3 "|" $8 "|" $9 "|" }' >>"$work/cpu.md"
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

if section memory; then
  # Three dense layers, 84.0 MB of FP32 weights; and a 256-feature model for batch-sized bodies.
  /tmp/peer-tools/bin/python - "$work/models" "$work/req" <<'PY'
import json, sys
import numpy as np, onnx
from onnx import helper, numpy_helper, TensorProto
models, req = sys.argv[1:3]
rng = np.random.default_rng(7)
def dense(name, sizes):
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        last = i == len(sizes) - 2
        inits.append(numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], ["y" if last else f"m{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", sizes[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, f"{models}/{name}.onnx")
dense("big", [1024, 4096, 4096, 8])
dense("wide", [256, 8])
rows = 4096
header = json.dumps({"inputs": [{"name": "x", "shape": [rows, 256], "datatype": "FP32",
                                 "parameters": {"binary_data_size": rows * 256 * 4}}],
                     "parameters": {"binary_data_output": True}}).encode()
with open(f"{req}/wide.bin", "wb") as f:
    f.write(header + rng.standard_normal(rows * 256).astype(np.float32).tobytes())
with open(f"{req}/wide.header", "w") as f:
    f.write(str(len(header)))
with open(f"{req}/big_b1.json", "w") as f:
    json.dump({"inputs": [{"name": "x", "shape": [1, 1024], "datatype": "FP32", "data": [0.5] * 1024}]}, f)
PY
  rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$server/status"; }
  create '{"name":"big","framework":"onnx"}'
  create '{"name":"wide","framework":"onnx"}'
  for m in big wide; do
    "$bin" model upload "$work/models/$m.onnx" --server "$api" --token "$uploader" --tenant bench --model "$m" --no-progress >/dev/null
  done
  # A fresh server, so that nothing the uploads left behind counts for or against the load.
  kill "$server"; wait "$server" 2>/dev/null || true
  "$bin" serve >>"$work/server.log" 2>&1 &
  server=$!
  wait_ready "$api/v2/health/ready"
  sleep 2
  before="$(rss_kib)"
  curl -fsS "$api/v2/models/big/infer" -H "$auth" -H 'content-type: application/json' -d @"$work/req/big_b1.json" >/dev/null
  sleep 2
  loaded="$(rss_kib)"
  for _ in 1 2 3 4 5; do
    curl -fsS "$api/v2/models/big/infer" -H "$auth" -H 'content-type: application/json' -d @"$work/req/big_b1.json" >/dev/null
  done
  sleep 2
  served="$(rss_kib)"
  # Peak resident memory while 16 connections send 4 MiB bodies, sampled every 20 ms.
  curl -fsS "$api/v2/models/wide/ready" -H "$auth" >/dev/null
  sleep 1
  idle="$(rss_kib)"
  (peak="$idle"; while kill -0 "$server" 2>/dev/null && [ ! -e "$work/peak.stop" ]; do
     now="$(rss_kib)"; (( now > peak )) && peak="$now"; echo "$peak" >"$work/peak.kib"; sleep 0.02
   done) &
  sampler=$!
  wrk_run "tessera, 4,096 rows x 256 FP32 binary (4 MiB)" "$api/v2/models/wide/infer" "$work/req/wide.bin" 16 \
    "$auth;;Inference-Header-Content-Length: $(cat "$work/req/wide.header")"
  touch "$work/peak.stop"; wait "$sampler" 2>/dev/null || true
  python3 - "$work/models/big.onnx" "$before" "$loaded" "$served" "$idle" "$(cat "$work/peak.kib")" "$work/req/wide.bin" <<'PY'
import os, sys
model, before, loaded, served, idle, peak, body = sys.argv[1], *map(int, sys.argv[2:7]), sys.argv[7]
size = os.path.getsize(model) / 2**20
print()
print("| memory | MiB | per model MiB |")
print("|---|---:|---:|")
print(f"| model file (84 MB of weights) | {size:.1f} | |")
print(f"| resident growth once loaded | {(loaded - before) / 1024:.1f} | **{(loaded - before) / 1024 / size:.2f}x** |")
print(f"| resident growth after 5 more calls | {(served - before) / 1024:.1f} | {(served - before) / 1024 / size:.2f}x |")
print(f"| peak growth, 16 connections x {os.path.getsize(body) / 2**20:.1f} MiB bodies | {(peak - idle) / 1024:.1f} | {(peak - idle) / 1024 / 16:.1f} per connection |")
PY
fi

if section mlserver; then
  mlserver_venv="${MLSERVER_VENV:-/tmp/peer-mlserver}"
  [ -x "$mlserver_venv/bin/mlserver" ] || VENV_ROOT="$(dirname "$mlserver_venv")" VENVS=mlserver "$PEERS_DIR/setup_venvs.sh" >&2
  repo="$work/mlserver"
  cp -r "$PEERS_DIR/servers/mlserver" "$repo"
  for m in tiny mlp; do cp "$work/models/$m.onnx" "$repo/models/$m/"; done
  mlserver_port="$((PORT + 200))"
  (cd "$repo" && MLSERVER_HTTP_PORT="$mlserver_port" MLSERVER_GRPC_PORT="$((mlserver_port + 1))" \
     PYTHONPATH="$PEERS_DIR/servers" exec setsid "$mlserver_venv/bin/mlserver" start . >"$work/mlserver.log" 2>&1) &
  mlserver_pid=$!
  trap 'kill "$server" "$bare_pid" 2>/dev/null || true; kill -- -"$mlserver_pid" 2>/dev/null || true
        wait "$server" "$bare_pid" "$mlserver_pid" 2>/dev/null || true' EXIT
  wait_ready "http://127.0.0.1:$mlserver_port/v2/health/ready"
  echo
  echo "| target | connections | req/s | p50 ms | p99 ms | failed |"
  echo "|---|---:|---:|---:|---:|---:|"
  load_run warmup grpc "127.0.0.1:$((mlserver_port + 1))" tiny "$work/req/tiny_b1.json" 16 >/dev/null
  mlserver_processes="$(pgrep -s "$mlserver_pid" | tr '\n' ' ')"
  measured="$mlserver_processes" load_run "mlserver gRPC raw, tiny (oip_load)" grpc "127.0.0.1:$((mlserver_port + 1))" tiny "$work/req/tiny_b1.json" 16
  load_run "tessera gRPC raw, tiny (beside mlserver)" grpc "127.0.0.1:$TESSERA__SERVER__GRPC_PORT" tiny "$work/req/tiny_b1.json" 16 "$caller"
  measured="$mlserver_processes" load_run "mlserver gRPC raw, mlp 8 rows (oip_load)" grpc "127.0.0.1:$((mlserver_port + 1))" mlp "$work/req/mlp_b8.json" 16
  load_run "tessera gRPC raw, mlp 8 rows (beside mlserver)" grpc "127.0.0.1:$TESSERA__SERVER__GRPC_PORT" mlp "$work/req/mlp_b8.json" 16 "$caller"
  kill -- -"$mlserver_pid" 2>/dev/null || true
fi

if [ -s "$work/cpu.md" ]; then
  # Tessera's process alone: Postgres and Redis serve it (audit, rate limits) apart.
  echo
  echo "| oip_load run | connections | server CPU µs per call | client CPU µs per call |"
  echo "|---|---:|---:|---:|"
  cat "$work/cpu.md"
fi

# Nothing was lost on the way: every chain the run wrote verifies, from the database.
sleep 2
if "$bin" audit verify --database >"$work/verify.txt" 2>&1; then
  log "audit: $(grep -c ': OK' "$work/verify.txt") chains verify after the run"
else
  cat "$work/verify.txt" >&2
  die "the audit chain does not verify after the run"
fi

# The targets, as ratios of figures from this run (a section that did not run is skipped).
sleep 0.5
python3 - "$work/report.md" <<'PY'
import re, sys
rows, memory = {}, None
for line in open(sys.argv[1]):
    cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
    if len(cells) >= 5 and re.fullmatch(r"\d+", cells[1]) and (cells[0], cells[1]) not in rows:
        rows[(cells[0], cells[1])] = (float(cells[2].replace(",", "")), float(cells[4]))
    if cells[0] == "resident growth once loaded":
        memory = float(cells[2].rstrip("x"))
def ratio(a, b, conn, p99=False):
    x, y = rows.get((a, conn)), rows.get((b, conn))
    return None if x is None or y is None else (x[1] / y[1] if p99 else x[0] / y[0])
targets = [
    ("HTTP tiny, 16 connections: req/s against the bare handler", ratio("tessera, tiny", "bare handler, tiny", "16"), ">=", 0.70),
    ("HTTP tiny, 16 connections: p99 against the bare handler's", ratio("tessera, tiny", "bare handler, tiny", "16", True), "<=", 2.0),
    ("HTTP tiny, 1 connection: req/s against the bare handler", ratio("tessera, tiny", "bare handler, tiny", "1"), ">=", 0.85),
    ("gRPC raw tiny, 16 connections: req/s against HTTP", ratio("tessera gRPC raw, tiny (oip_load)", "tessera HTTP, tiny (oip_load)", "16"), ">=", 1.0),
    ("gRPC raw MLP 8 rows, 16 connections: req/s against HTTP JSON",
     ratio("tessera gRPC raw, mlp 8 rows (oip_load)", "tessera HTTP JSON, mlp 8 rows (oip_load)", "16"), ">=", 1.2),
    ("gRPC tiny, 16 connections: req/s against MLServer's gRPC",
     ratio("tessera gRPC raw, tiny (beside mlserver)", "mlserver gRPC raw, tiny (oip_load)", "16"), ">=", 10.0),
    ("gRPC MLP 8 rows, 16 connections: req/s against MLServer's gRPC",
     ratio("tessera gRPC raw, mlp 8 rows (beside mlserver)", "mlserver gRPC raw, mlp 8 rows (oip_load)", "16"), ">=", 10.0),
    ("resident memory per loaded model against its size", memory, "<=", 2.0),
]
print()
print("| target | this run | goal | |")
print("|---|---:|---:|---|")
for name, value, op, goal in targets:
    if value is not None:
        met = value >= goal if op == ">=" else value <= goal
        print(f"| {name} | {value:.2f}x | {op} {goal:g}x | {'met' if met else 'not met'} |")
PY
