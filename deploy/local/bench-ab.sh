#!/usr/bin/env bash
# Two builds of Tessera on the inference path, in one run: the tiny model at each of CONNS
# connections, served by build A and by build B in alternated rounds (A first in odd rounds,
# B first in even ones, so a drift of the machine favours neither), each on a fresh
# `tessera_bench` database. Prints a Markdown row per run, then B against A per connection
# count (means over the rounds).
#
#   deploy/local/bench-ab.sh BIN_A BIN_B [PEERS_DIR]
#
# ROUNDS (default 2), CONNS (default "1 16 64"), DURATION seconds per run (10), LABEL_A /
# LABEL_B (default A / B). PROTOCOL: `http` (default) drives HTTP with wrk; `grpc` drives gRPC
# (raw contents) with tests/bench/oip_load.rs. Each row also gives the CPU time the server's
# process spent per call, which a busy machine moves less than the calls a second. TRACES_A /
# TRACES_B: that side exports traces, sampled at this ratio (0.0 to 1.0), to an OTLP/HTTP
# receiver the script runs, which answers every export and counts what it got; unset, that side
# exports nothing (no endpoint).
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
PROTOCOL="${PROTOCOL:-http}"
case "$PROTOCOL" in http | grpc) ;; *) die "PROTOCOL is http or grpc" ;; esac

bench_load_tools "$PEERS_DIR"
work="$(mktemp -d /tmp/tessera-bench-ab.XXXXXX)"
if [ "$PROTOCOL" = grpc ]; then
  log "building the load generator (release)"
  load="$(bench_executable oip_load)"
fi
/tmp/peer-tools/bin/python "$PEERS_DIR/make_models.py" "$work/models" >/dev/null
/tmp/peer-tools/bin/python "$PEERS_DIR/make_requests.py" "$work/models" "$work/req" >/dev/null
server=""
receiver=""
trap 'if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
      if [ -n "$receiver" ]; then kill "$receiver" 2>/dev/null || true; fi' EXIT
traces_port="$((PORT + 300))"
if [ -n "${TRACES_A:-}${TRACES_B:-}" ]; then
  python3 - "$traces_port" "$work/exported" <<'PY' &
import http.server, sys, threading
got, lock = [0, 0], threading.Lock()
class Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with lock:
            got[0] += 1
            got[1] += len(body)
            with open(sys.argv[2], "w") as f:
                f.write(f"{got[0]} exports, {got[1]} bytes\n")
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
PY
  receiver=$!
fi

# grpc_run LABEL CONNECTIONS TOKEN: one oip_load run against the gRPC port as a table row,
# with the server's CPU per call.
grpc_run() {
  oip_load_row "$1" "$2" "$server" "$load" grpc "127.0.0.1:$((PORT + 100))" tiny "$work/req/tiny_b1.json" "$2" "${DURATION:-10}" "$3" \
    | cut -d'|' -f1-8 | sed 's/ $/ |/'
}

# http_run LABEL CONNECTIONS AUTH_HEADER: one wrk run against the HTTP port as a table row, with
# the server's CPU per call (its CPU time over the run's requests at the rate wrk reports).
http_run() {
  local before after row
  before="$(cpu_ticks "$server")"
  row="$(wrk_run "$1" "http://127.0.0.1:$PORT/v2/models/tiny/infer" "$work/req/tiny_b1.json" "$2" "$3")"
  after="$(cpu_ticks "$server")"
  python3 - "$row" "$((after - before))" "${DURATION:-10}" <<'PY'
import sys
row, ticks, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
calls = max(float(row.strip("|").split("|")[2].replace(",", "")) * seconds, 1)
print(f"{row} {ticks * 1e4 / calls:.1f} |")
PY
}

# measure LABEL BIN ROUND [TRACE_RATIO]: serves BIN on a fresh database and drives it at each
# of CONNS.
measure() {
  local label="$1" api="http://127.0.0.1:$PORT" uploader caller auth traces=()
  TESSERA_BENCH_BIN="$2" bench_environment "$PORT" "$work/$label-$3"
  bench_tenant bench
  uploader="$(bench_key bench uploader ml_engineer)"
  caller="$(bench_key bench caller inference)"
  if [ -n "${4:-}" ]; then
    traces=("TESSERA__TELEMETRY__OTLP__ENDPOINT=http://127.0.0.1:$traces_port/v1/traces" "TESSERA__TELEMETRY__OTLP__SAMPLE_RATIO=$4")
  fi
  env "${traces[@]}" "$bench_bin" serve >"$work/$label-$3.log" 2>&1 &
  server=$!
  wait_ready "$api/v2/health/ready" || { tail -n 20 "$work/$label-$3.log" >&2; die "$label did not become ready"; }
  curl -fsS "$api/v1/tenants/bench/models" -H "authorization: Bearer $uploader" -H 'content-type: application/json' \
    -d '{"name":"tiny","framework":"onnx"}' >/dev/null
  "$bench_bin" model upload "$work/models/tiny.onnx" --server "$api" --token "$uploader" --tenant bench --model tiny \
    --no-progress >/dev/null
  auth="Authorization: Bearer $caller"
  for c in $CONNS; do
    if [ "$PROTOCOL" = grpc ]; then
      DURATION=2 grpc_run warmup "$c" "$caller" >/dev/null
    else
      DURATION=2 wrk_run warmup "$api/v2/models/tiny/infer" "$work/req/tiny_b1.json" "$c" "$auth" >/dev/null
    fi
  done
  for c in $CONNS; do
    if [ "$PROTOCOL" = grpc ]; then
      grpc_run "$label (round $3)" "$c" "$caller"
    else
      http_run "$label (round $3)" "$c" "$auth"
    fi | tee -a "$work/rows.md"
  done
  kill "$server"
  wait "$server" 2>/dev/null || true
  server=""
}

if [ "$PROTOCOL" = grpc ]; then
  echo "| build | connections | req/s | p50 ms | p99 ms | failed | server CPU µs per call |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
else
  echo "| build | connections | req/s | p50 ms | p99 ms | non-2xx | server CPU µs per call |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
fi
for round in $(seq 1 "$ROUNDS"); do
  if (( round % 2 )); then
    measure "$LABEL_A" "$BIN_A" "$round" "${TRACES_A:-}"
    measure "$LABEL_B" "$BIN_B" "$round" "${TRACES_B:-}"
  else
    measure "$LABEL_B" "$BIN_B" "$round" "${TRACES_B:-}"
    measure "$LABEL_A" "$BIN_A" "$round" "${TRACES_A:-}"
  fi
done

python3 - "$work/rows.md" "$LABEL_A" "$LABEL_B" <<'PY'
import collections, re, sys
rows, a, b = open(sys.argv[1]).read().splitlines(), sys.argv[2], sys.argv[3]
rps, cpu = collections.defaultdict(list), collections.defaultdict(list)
for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    label = re.sub(r" \(round \d+\)$", "", cells[0])
    rps[(label, int(cells[1]))].append(float(cells[2].replace(",", "")))
    if len(cells) > 6:
        cpu[(label, int(cells[1]))].append(float(cells[6]))
mean = lambda xs: sum(xs) / len(xs)
print()
if cpu:
    print(f"| connections | {a} req/s (mean) | {b} req/s (mean) | {b} against {a} | server CPU µs per call ({a}) | server CPU µs per call ({b}) |")
    print("|---:|---:|---:|---:|---:|---:|")
else:
    print(f"| connections | {a} req/s (mean) | {b} req/s (mean) | {b} against {a} |")
    print("|---:|---:|---:|---:|")
for conns in sorted({c for _, c in rps}):
    ma, mb = mean(rps[(a, conns)]), mean(rps[(b, conns)])
    row = f"| {conns} | {ma:,.0f} | {mb:,.0f} | {100 * (mb / ma - 1):+.1f}% |"
    if cpu:
        row += f" {mean(cpu[(a, conns)]):.1f} | {mean(cpu[(b, conns)]):.1f} |"
    print(row)
PY
if [ -s "$work/exported" ]; then
  log "the trace receiver got $(cat "$work/exported")"
fi
