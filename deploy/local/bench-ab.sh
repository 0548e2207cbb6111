#!/usr/bin/env bash
# Two builds of Tessera on the inference path, in one run: the tiny model at each of CONNS
# connections, served by build A and by build B in alternated rounds (A first in odd rounds,
# B first in even ones, so a drift of the machine favours neither), each on a fresh
# `tessera_bench` database. Prints a Markdown row per wrk run, then B against A per
# connection count (means over the rounds).
#
#   deploy/local/bench-ab.sh BIN_A BIN_B [PEERS_DIR]
#
# ROUNDS (default 2), CONNS (default "1 16 64"), DURATION seconds per wrk run (10),
# LABEL_A / LABEL_B (default A / B).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

BIN_A="$(realpath "$1")"
BIN_B="$(realpath "$2")"
PEERS_DIR="$(cd "${3:-$TESSERA_ROOT/../shared/bench/peers}" && pwd)"
PORT="${TESSERA_BENCH_PORT:-18990}"
ROUNDS="${ROUNDS:-2}"
CONNS="${CONNS:-1 16 64}"
LABEL_A="${LABEL_A:-A}"
LABEL_B="${LABEL_B:-B}"

bench_load_tools "$PEERS_DIR"
work="$(mktemp -d /tmp/tessera-bench-ab.XXXXXX)"
/tmp/peer-tools/bin/python "$PEERS_DIR/make_models.py" "$work/models" >/dev/null
/tmp/peer-tools/bin/python "$PEERS_DIR/make_requests.py" "$work/models" "$work/req" >/dev/null
server=""
trap 'if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi' EXIT

# measure LABEL BIN ROUND: serves BIN on a fresh database and runs wrk at each of CONNS.
measure() {
  local label="$1" api="http://127.0.0.1:$PORT" uploader caller auth
  TESSERA_BENCH_BIN="$2" bench_environment "$PORT" "$work/$label-$3"
  bench_tenant bench
  uploader="$(bench_key bench uploader ml_engineer)"
  caller="$(bench_key bench caller inference)"
  "$bench_bin" serve >"$work/$label-$3.log" 2>&1 &
  server=$!
  wait_ready "$api/v2/health/ready" || { tail -n 20 "$work/$label-$3.log" >&2; die "$label did not become ready"; }
  curl -fsS "$api/v1/tenants/bench/models" -H "authorization: Bearer $uploader" -H 'content-type: application/json' \
    -d '{"name":"tiny","framework":"onnx"}' >/dev/null
  "$bench_bin" model upload "$work/models/tiny.onnx" --server "$api" --token "$uploader" --tenant bench --model tiny \
    --no-progress >/dev/null
  auth="Authorization: Bearer $caller"
  for c in $CONNS; do
    DURATION=2 wrk_run warmup "$api/v2/models/tiny/infer" "$work/req/tiny_b1.json" "$c" "$auth" >/dev/null
  done
  for c in $CONNS; do
    wrk_run "$label (round $3)" "$api/v2/models/tiny/infer" "$work/req/tiny_b1.json" "$c" "$auth" | tee -a "$work/rows.md"
  done
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=""
}

echo "| build | connections | req/s | p50 ms | p99 ms | non-2xx |"
echo "|---|---:|---:|---:|---:|---:|"
for round in $(seq 1 "$ROUNDS"); do
  if (( round % 2 )); then
    measure "$LABEL_A" "$BIN_A" "$round"
    measure "$LABEL_B" "$BIN_B" "$round"
  else
    measure "$LABEL_B" "$BIN_B" "$round"
    measure "$LABEL_A" "$BIN_A" "$round"
  fi
done

python3 - "$work/rows.md" "$LABEL_A" "$LABEL_B" <<'PY'
import collections, re, sys
rows, a, b = open(sys.argv[1]).read().splitlines(), sys.argv[2], sys.argv[3]
rps = collections.defaultdict(list)
for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    label = re.sub(r" \(round \d+\)$", "", cells[0])
    rps[(label, int(cells[1]))].append(float(cells[2].replace(",", "")))
print()
print(f"| connections | {a} req/s (mean) | {b} req/s (mean) | {b} against {a} |")
print("|---:|---:|---:|---:|")
for conns in sorted({c for _, c in rps}):
    ma = sum(rps[(a, conns)]) / len(rps[(a, conns)])
    mb = sum(rps[(b, conns)]) / len(rps[(b, conns)])
    print(f"| {conns} | {ma:,.0f} | {mb:,.0f} | {100 * (mb / ma - 1):+.1f}% |")
PY
