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

work="$(mktemp -d /tmp/tessera-bench-peers.XXXXXX)"
bench_environment "$PORT" "$work"
bin="$bench_bin"
bench_tenant bench "${TESSERA_AUDIT_MODE:-every_call}"
uploader="$(bench_key bench uploader ml_engineer)"
caller="$(bench_key bench caller inference)"

"$bin" serve >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
wait_ready "http://127.0.0.1:$PORT/v2/health/ready"

/tmp/peer-tools/bin/python "$PEERS_DIR/make_models.py" "$work/models" >/dev/null
for model in tiny mlp; do
  "$bin" model upload "$work/models/$model.onnx" --server "http://127.0.0.1:$PORT" --token "$uploader" \
    --tenant bench --model "$model" --create --no-progress >/dev/null
done

log "running the side-by-side benchmark (server log: $work/server.log)"
EXTRA_URL="http://127.0.0.1:$PORT" EXTRA_NAME=tessera EXTRA_HEADERS="Authorization: Bearer $caller" \
  EXTRA_TINY_MODEL=tiny EXTRA_MLP_MODEL=mlp "$PEERS_DIR/run.sh"
