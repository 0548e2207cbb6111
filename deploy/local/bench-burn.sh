#!/usr/bin/env bash
# Burn models beside ONNX ones, all in one run on this machine:
#   1. in process (tests/bench/burn.rs): the same MLP shape through the Burn and the ONNX
#      Runtime engines, and training throughput of the job runner's trainer;
#   2. through the API: a training job (CSV upload, `tessera job submit`, samples/s from its
#      result) that trains the MLP 256-1024-1024-10, then that Burn version and the peers'
#      ONNX MLP of the same shape served side by side over OIP with wrk.
#
#   deploy/local/bench-burn.sh [PEERS_DIR]     (the ONNX MLP and request bodies come from bench/peers)
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

PEERS_DIR="$(cd "${1:-$TESSERA_ROOT/../shared/bench/peers}" && pwd)"
PORT="${TESSERA_BENCH_PORT:-18992}"
DURATION="${DURATION:-10}"

bench_load_tools "$PEERS_DIR"

work="$(mktemp -d /tmp/tessera-bench-burn.XXXXXX)"
/tmp/peer-tools/bin/python "$PEERS_DIR/make_models.py" "$work/models" >/dev/null
/tmp/peer-tools/bin/python "$PEERS_DIR/make_requests.py" "$work/models" "$work/req" >/dev/null

log "in process (release)"
BENCH_MLP_ONNX="$work/models/mlp.onnx" cargo bench --locked --quiet --bench burn

bench_environment "$PORT" "$work"
bin="$bench_bin"
bench_tenant bench
engineer="$(bench_key bench engineer ml_engineer)"
caller="$(bench_key bench caller inference)"

# A separable problem in the MLP's input size: 10 classes, 8,000 rows, 256 features.
/tmp/peer-tools/bin/python - "$work/blobs256.csv" <<'PY'
import sys
import numpy as np
rng = np.random.default_rng(7)
centres = rng.normal(0, 1.0, size=(10, 256))
with open(sys.argv[1], "w") as f:
    f.write(",".join([f"f{i}" for i in range(256)] + ["label"]) + "\n")
    for i in range(8000):
        c = i % 10
        row = centres[c] + rng.normal(0, 1.0, size=256)
        f.write(",".join(f"{v:.4f}" for v in row) + f",{c}\n")
PY
cat >"$work/train.json" <<'JSON'
{"kind": "train", "model": "mlp-burn", "architecture": "mlp",
 "config": {"inputs": 256, "hidden": [1024, 1024], "outputs": 10},
 "dataset": "00000000-0000-0000-0000-000000000000", "target": "label",
 "epochs": 2, "learning_rate": 0.001, "batch_size": 64, "validation_split": 0.2, "seed": 1}
JSON

"$bin" serve >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
wait_ready "http://127.0.0.1:$PORT/v2/health/ready"
api="http://127.0.0.1:$PORT"

log "training the MLP through the jobs API"
job="$("$bin" job submit "$work/train.json" --dataset "$work/blobs256.csv" --server "$api" --token "$engineer" --detach)"
for _ in $(seq 1 600); do
  status="$("$bin" job status "$job" --server "$api" --token "$engineer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')"
  [ "$status" = queued ] || [ "$status" = running ] || break
  sleep 1
done
"$bin" job status "$job" --server "$api" --token "$engineer" | python3 -c '
import json, sys
job = json.load(sys.stdin)
assert job["status"] == "succeeded", job
m = job["result"]["metrics"]
print(f"\n## Training job through the API (MLP 256-1024-1024-10, 6,400 training rows x 2 epochs)\n")
rate, accuracy, seconds = m["samples_per_second"], m["accuracy"], m["seconds"]
print(f"samples/s {rate:,.0f}, validation accuracy {accuracy:.3f}, {seconds:.1f} s")'

curl -fsS "$api/v1/tenants/bench/models" -H "authorization: Bearer $engineer" -H 'content-type: application/json' \
  -d '{"name":"mlp-onnx","framework":"onnx"}' >/dev/null
"$bin" model upload "$work/models/mlp.onnx" --server "$api" --token "$engineer" --tenant bench --model mlp-onnx --no-progress >/dev/null
for b in 1 8; do
  sed 's/"name":"x"/"name":"input"/' "$work/req/mlp_b$b.json" >"$work/req/burn_b$b.json"
done


# Models trained by a job are deterministic, so their results would be cached: every request
# here runs its engine.
auth="Authorization: Bearer $caller;;Cache-Control: no-cache"
log "warming up"
wrk_run warmup "$api/v2/models/mlp-burn/infer" "$work/req/burn_b1.json" 4 "$auth" >/dev/null
wrk_run warmup "$api/v2/models/mlp-onnx/infer" "$work/req/mlp_b1.json" 4 "$auth" >/dev/null

echo
echo "## Over OIP: the same MLP shape, Burn worker vs ONNX Runtime worker"
echo
echo "| target | connections | req/s | p50 ms | p99 ms | non-2xx |"
echo "|---|---:|---:|---:|---:|---:|"
for c in 1 16; do
  for b in 1 8; do
    wrk_run "burn mlp b$b" "$api/v2/models/mlp-burn/infer" "$work/req/burn_b$b.json" "$c" "$auth"
    wrk_run "onnx mlp b$b" "$api/v2/models/mlp-onnx/infer" "$work/req/mlp_b$b.json" "$c" "$auth"
  done
done
