# Shared by up.sh and test.sh: make sure Postgres and Redis are installed, running and
# reachable on loopback, with the roles Tessera and its tests use. Idempotent.
# shellcheck shell=bash

TESSERA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL_DIR="$TESSERA_ROOT/.local"
PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_PORT=6379

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_packages() {
  local missing=()
  command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v cc >/dev/null 2>&1 || missing+=(build-essential)
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo is not installed: install a Rust toolchain (1.85 or newer) first"
}

# The portal is built with Node and npm (packages from the npm registry, pinned by
# portal/package-lock.json); its browser tests drive Debian's Chromium, since Playwright's own
# browser downloads are not used.
ensure_node() {
  command -v npm >/dev/null 2>&1 || {
    log "installing nodejs and npm"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  }
}

ensure_browser() {
  [ -x /usr/bin/chromium ] && return 0
  log "installing chromium"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
}

# build_portal: installs the portal's packages when its lock file changed and builds it into
# portal/dist, which the `tessera` binary embeds (build.rs refuses to build without it).
build_portal() {
  ensure_node
  local portal="$TESSERA_ROOT/portal"
  if [ ! -f "$portal/node_modules/.package-lock.json" ] || [ "$portal/package-lock.json" -nt "$portal/node_modules/.package-lock.json" ]; then
    log "installing the portal's npm packages"
    (cd "$portal" && npm ci --no-audit --no-fund --loglevel=error) >&2
  fi
  # Only when a source is newer than the build: a rebuild touches every embedded file, which
  # makes cargo rebuild the crate.
  if [ -f "$portal/dist/index.html" ] && [ -z "$(find "$portal/src" "$portal/index.html" "$portal/vite.config.ts" \
    "$portal/tsconfig.json" "$portal/package-lock.json" -newer "$portal/dist/index.html" -print -quit)" ]; then
    return 0
  fi
  log "building the portal"
  (cd "$portal" && npm run --silent build) >&2
}

# ONNX Runtime comes as a shared library from the official PyPI wheel (no build-time
# download): installed once under /var/tmp, found by Tessera through ORT_DYLIB_PATH.
ONNXRUNTIME_VERSION=1.31.1
ONNXRUNTIME_DIR="${ONNXRUNTIME_DIR:-/var/tmp/onnxruntime-$ONNXRUNTIME_VERSION}"

ensure_onnxruntime() {
  local lib="$ONNXRUNTIME_DIR/onnxruntime/capi/libonnxruntime.so.$ONNXRUNTIME_VERSION"
  if [ ! -f "$lib" ]; then
    command -v python3 >/dev/null 2>&1 || { log "installing python3-pip"; as_root apt-get install -y -qq python3-pip >/dev/null; }
    log "installing ONNX Runtime $ONNXRUNTIME_VERSION into $ONNXRUNTIME_DIR"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$ONNXRUNTIME_DIR" \
      "onnxruntime==$ONNXRUNTIME_VERSION" >&2 || die "could not install onnxruntime==$ONNXRUNTIME_VERSION from PyPI"
  fi
  export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$lib}"
}

# The Triton HTTP client, for the test that drives Tessera with an unmodified OIP client.
PYDEPS_DIR="${PYDEPS_DIR:-/var/tmp/tessera-pydeps}"

ensure_test_python() {
  if ! PYTHONPATH="$PYDEPS_DIR" python3 -c "import tritonclient.http, tritonclient.grpc, numpy" >/dev/null 2>&1; then
    log "installing tritonclient[http,grpc] and numpy into $PYDEPS_DIR"
    python3 -m pip install --quiet --disable-pip-version-check --target "$PYDEPS_DIR" "tritonclient[http,grpc]" numpy >&2 \
      || die "could not install tritonclient[http,grpc] from PyPI"
  fi
  export TESSERA_TEST_PYTHONPATH="$PYDEPS_DIR"
}

# The Kubernetes manifests (deploy/kubernetes) are rendered with Debian's kubectl 1.20, whose
# built-in kustomize v2.0.3 is the oldest they support; a newer kubectl already on the PATH
# renders them too (NEWER_KUBECTL), and kubernetes.sh requires both renderings to agree. Where
# another package owns /usr/bin/kubectl, Debian's is unpacked beside it instead of installed.
# yamllint and kubernetes-validate (which bundles the Kubernetes JSON schemas: no network when
# validating) come from PyPI.
KUBERNETES_CLIENT_DIR="${KUBERNETES_CLIENT_DIR:-/var/tmp/tessera-kubernetes-client}"
K8S_PYDEPS_DIR="${K8S_PYDEPS_DIR:-/var/tmp/tessera-k8s-pydeps}"
KUBERNETES_VALIDATE_VERSION=1.37.0
YAMLLINT_VERSION=1.38.0

ensure_kubernetes_tools() {
  if dpkg-query -W -f='${Status}' kubernetes-client 2>/dev/null | grep -q 'ok installed'; then
    KUSTOMIZE_KUBECTL=/usr/bin/kubectl
  elif ! command -v kubectl >/dev/null 2>&1; then
    log "installing kubernetes-client"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null
    KUSTOMIZE_KUBECTL=/usr/bin/kubectl
  else
    KUSTOMIZE_KUBECTL="$KUBERNETES_CLIENT_DIR/usr/bin/kubectl"
    if [ ! -x "$KUSTOMIZE_KUBECTL" ]; then
      log "unpacking Debian's kubernetes-client into $KUBERNETES_CLIENT_DIR"
      local download
      download="$(mktemp -d)"
      if ! (cd "$download" && apt-get download kubernetes-client >/dev/null 2>&1); then
        as_root apt-get update -qq
        (cd "$download" && apt-get download kubernetes-client >/dev/null 2>&1) || die "could not download Debian's kubernetes-client"
      fi
      dpkg-deb -x "$download"/kubernetes-client_*.deb "$KUBERNETES_CLIENT_DIR"
      rm -rf "$download"
    fi
  fi
  NEWER_KUBECTL=""
  if command -v kubectl >/dev/null 2>&1 && [ "$(readlink -f "$(command -v kubectl)")" != "$(readlink -f "$KUSTOMIZE_KUBECTL")" ]; then
    NEWER_KUBECTL="$(command -v kubectl)"
  fi
  command -v python3 >/dev/null 2>&1 || { log "installing python3-pip"; as_root apt-get install -y -qq python3-pip >/dev/null; }
  if ! PYTHONPATH="$K8S_PYDEPS_DIR" python3 -c "import sys, yamllint, kubernetes_validate.version as v
sys.exit(not (v.__version__ == '$KUBERNETES_VALIDATE_VERSION' and yamllint.__version__ == '$YAMLLINT_VERSION'))" >/dev/null 2>&1; then
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and yamllint $YAMLLINT_VERSION into $K8S_PYDEPS_DIR"
    python3 -m pip install --quiet --disable-pip-version-check --upgrade --target "$K8S_PYDEPS_DIR" \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "yamllint==$YAMLLINT_VERSION" >&2 \
      || die "could not install kubernetes-validate and yamllint from PyPI"
  fi
}

pg_up() { (exec 3<>"/dev/tcp/$PG_HOST/$PG_PORT") 2>/dev/null; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = "PONG" ]; }

ensure_running() {
  if ! pg_up; then
    log "starting PostgreSQL"
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
    pg_up || die "PostgreSQL did not start on $PG_HOST:$PG_PORT"
  fi
  if ! redis_up; then
    log "starting Redis"
    as_root redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
    for _ in $(seq 1 50); do redis_up && break; sleep 0.2; done
    redis_up || die "Redis did not start on 127.0.0.1:$REDIS_PORT"
  fi
}

# Runs SQL as the Postgres superuser: over the local socket as the postgres OS user when we can
# (fresh Debian installs use peer authentication there), else over TCP.
psql_super() {
  if id postgres >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qAt "$@"
  else
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"
  fi
}

# A password generated once per checkout, kept out of git in .local/.
local_secret() {
  local name="$1" file="$LOCAL_DIR/$1"
  mkdir -p "$LOCAL_DIR"
  chmod 700 "$LOCAL_DIR"
  if [ ! -s "$file" ]; then
    (umask 077; openssl rand -hex 24 > "$file")
  fi
  printf '%s' "$file"
}

# Creates (or updates the password of) a login role. $2: extra attributes.
ensure_role() {
  local role="$1" attributes="$2" password_file="$3" password
  password="$(cat "$password_file")"
  psql_super -d postgres <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role') THEN
    CREATE ROLE $role LOGIN $attributes PASSWORD '$password';
  ELSE
    ALTER ROLE $role LOGIN $attributes PASSWORD '$password';
  END IF;
END \$\$;
SQL
}

# The environment the test harness (and the benchmarks, which reuse it) needs: a role that may
# create and drop databases, and the application role the servers under test connect as.
export_test_env() {
  local test_password app_password
  test_password="$(local_secret db-test-password)"
  ensure_role tessera_test "SUPERUSER" "$test_password"
  export TESSERA_TEST_DATABASE_URL="${TESSERA_TEST_DATABASE_URL:-postgres://tessera_test:$(cat "$test_password")@127.0.0.1:5432/postgres}"
  app_password="$(local_secret db-app-password)"
  ensure_role tessera_app "NOSUPERUSER NOBYPASSRLS" "$app_password"
  export TESSERA_TEST_APP_PASSWORD="${TESSERA_TEST_APP_PASSWORD:-$(cat "$app_password")}"
  export TESSERA_TEST_REDIS_URL="${TESSERA_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
}

# For the HTTP benchmarks: a fresh `tessera_bench` database, Tessera's environment pointing at
# it (port $1, artifacts under $2), migrated. Sets `bench_bin` to the release binary.
bench_environment() {
  local port="$1" work="$2" owner_password app_password
  build_portal
  owner_password="$(local_secret db-owner-password)"
  app_password="$(local_secret db-app-password)"
  ensure_role tessera "" "$owner_password"
  ensure_role tessera_app "NOSUPERUSER NOBYPASSRLS" "$app_password"
  psql_super -d postgres -c "DROP DATABASE IF EXISTS tessera_bench WITH (FORCE)" >/dev/null
  psql_super -d postgres -c "CREATE DATABASE tessera_bench OWNER tessera" >/dev/null
  if [ -n "${TESSERA_BENCH_BIN:-}" ]; then
    bench_bin="$TESSERA_BENCH_BIN" # another build of Tessera, for A/B runs
  else
    log "building Tessera (release)"
    cargo build --locked --release --quiet --bin tessera
    bench_bin="${CARGO_TARGET_DIR:-$TESSERA_ROOT/target}/release/tessera"
  fi
  export TESSERA_ENV=development
  export TESSERA__DATABASE__URL="postgres://tessera_app@127.0.0.1:5432/tessera_bench"
  export TESSERA__DATABASE__PASSWORD_FILE="$app_password"
  export TESSERA__DATABASE__MIGRATION_URL="postgres://tessera:$(cat "$owner_password")@127.0.0.1:5432/tessera_bench"
  export TESSERA__REDIS__KEY_PREFIX="tessera-bench"
  export TESSERA__SERVER__PORT="$port"
  # gRPC beside HTTP, 100 ports up (the ports just above are the bare handler's and Burn's).
  export TESSERA__SERVER__GRPC_PORT="$((port + 100))"
  export TESSERA__REGISTRY__STORAGE__PATH="$work/artifacts"
  export TESSERA__TELEMETRY__LOG_FILTER=warn
  # A port of its own for each server measured side by side (A/B runs, peers).
  export TESSERA__TELEMETRY__METRICS_ADDRESS=127.0.0.1:0
  export TESSERA__TELEMETRY__LOG_FORMAT=text
  "$bench_bin" migrate >/dev/null
}

# bench_tenant SLUG [AUDIT_MODE]: a tenant whose rate limit will not be what is measured.
bench_tenant() {
  "$bench_bin" tenant create --slug "$1" --name "Benchmark tenant $1" >/dev/null
  psql_super -d tessera_bench -c "UPDATE tenants SET rate_limit_per_second = 10000000, rate_limit_burst = 10000000 WHERE slug = '$1'" >/dev/null
  psql_super -d tessera_bench -c "INSERT INTO audit_settings (tenant_id, inference_mode) SELECT id, '${2:-every_call}' FROM tenants WHERE slug = '$1'" >/dev/null
}

# bench_key TENANT NAME ROLE: prints a new API key's secret.
bench_key() {
  "$bench_bin" apikey create --tenant "$1" --name "$2" --role "$3" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'
}

# wait_ready URL: polls for up to 20 s.
wait_ready() {
  for _ in $(seq 1 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

# serve_fresh DB_NAME WORK REDIS_PREFIX: the debug build of Tessera on a free port, over a
# database DB_NAME dropped and created anew and a Redis key prefix of its own, artifacts and
# its log (server.log) under WORK. As the test harness does: the maintenance (superuser)
# connection creates the database and the server migrates it as its owner, then connects as
# the RLS-bound application role. Sets `bin`, `base` and `server_pid`; stop_fresh undoes it.
# Job workers: FRESH_JOB_WORKERS (default 0).
serve_fresh() {
  local db="$1" work="$2" owner_url port
  fresh_redis_prefix="$3"
  bin="${CARGO_TARGET_DIR:-$TESSERA_ROOT/target}/debug/tessera"
  server_pid=""
  PGOPTIONS=--client-min-messages=warning psql "$TESSERA_TEST_DATABASE_URL" -v ON_ERROR_STOP=1 -qAt -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  psql "$TESSERA_TEST_DATABASE_URL" -v ON_ERROR_STOP=1 -qAt -c "CREATE DATABASE $db" >/dev/null
  owner_url="$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' \
    "$TESSERA_TEST_DATABASE_URL" "$db")"
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  base="http://127.0.0.1:$port"

  export TESSERA_ENV=test
  export TESSERA_CONFIG_DIR="$TESSERA_ROOT/config"
  export TESSERA__DATABASE__URL="postgres://tessera_app@127.0.0.1:$PG_PORT/$db"
  export TESSERA__DATABASE__PASSWORD="$TESSERA_TEST_APP_PASSWORD"
  export TESSERA__DATABASE__MIGRATION_URL="$owner_url"
  export TESSERA__DATABASE__MIGRATE_ON_START=true
  export TESSERA__REDIS__URL="$TESSERA_TEST_REDIS_URL"
  export TESSERA__REDIS__KEY_PREFIX="$fresh_redis_prefix"
  export TESSERA__SERVER__PORT="$port"
  export TESSERA__TELEMETRY__METRICS_ADDRESS=127.0.0.1:0
  export TESSERA__TELEMETRY__LOG_FILTER=error
  export TESSERA__REGISTRY__STORAGE__PATH="$work/artifacts"
  export TESSERA__INFERENCE__ONNXRUNTIME_PATH="$ORT_DYLIB_PATH"
  export TESSERA__JOBS__WORKERS="${FRESH_JOB_WORKERS:-0}"

  log "serving Tessera on $base (database $db)"
  "$bin" serve >"$work/server.log" 2>&1 &
  server_pid=$!
  wait_ready "$base/readyz" || { tail -n 40 "$work/server.log" >&2; die "Tessera did not become ready"; }
}

# stop_fresh DB_NAME WORK: stops what serve_fresh started and drops its database, Redis keys
# and WORK.
stop_fresh() {
  if [ -n "${server_pid:-}" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  psql "$TESSERA_TEST_DATABASE_URL" -qAt -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" >/dev/null 2>&1 || true
  if [ -n "${fresh_redis_prefix:-}" ]; then
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" --scan --pattern "$fresh_redis_prefix:*" 2>/dev/null \
      | xargs -r redis-cli -h 127.0.0.1 -p "$REDIS_PORT" del >/dev/null 2>&1 || true
  fi
  rm -rf "$2"
}

# bench_load_tools PEERS_DIR: what the wrk benchmarks need besides the services: ONNX Runtime,
# wrk, and the peers' tools virtualenv (numpy and onnx, to make models and request bodies).
bench_load_tools() {
  ensure_packages
  ensure_running
  ensure_onnxruntime
  build_portal
  command -v wrk >/dev/null 2>&1 || { log "installing wrk"; as_root apt-get install -y -qq wrk >/dev/null; }
  [ -x /tmp/peer-tools/bin/python ] || VENVS=tools "$1/setup_venvs.sh"
}

# bench_executable NAME: builds tests/bench/NAME.rs (release) and prints its path.
bench_executable() {
  cargo bench --locked --quiet --bench "$1" --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
}
# cpu_ticks PID...: the user and system CPU time so far of these processes, in USER_HZ ticks.
cpu_ticks() {
  local pid
  for pid in "$@"; do cat "/proc/$pid/stat" 2>/dev/null; done | awk '{ sub(/.*\) /, ""); n += $12 + $13 } END { print n + 0 }'
}

# oip_load_row LABEL CONNECTIONS PIDS COMMAND...: runs COMMAND, an oip_load run at CONNECTIONS
# connections, and prints it as a Markdown row: req/s, p50 and p99 in ms, failed calls, then
# the CPU the processes PIDS (space-separated) and the client each spent per call, in µs.
oip_load_row() {
  local label="$1" connections="$2" out before after pids
  read -ra pids <<<"$3"
  shift 3
  before="$(cpu_ticks "${pids[@]}")"
  out="$("$@")"
  after="$(cpu_ticks "${pids[@]}")"
  python3 - "$label" "$connections" "$out" "$((after - before))" <<'PY'
import re, sys
label, connections, text, ticks = sys.argv[1:5]
f = dict(re.findall(r"(\w+)=([\d.]+)", text))
failed = sum(int(f[k]) for k in ("bad", "limited", "other", "errors"))
calls = max(int(f["ok"]) + failed, 1)
print(f"| {label} | {connections} | {float(f['rps']):,.0f} | {float(f['p50_ms']):.3f} | {float(f['p99_ms']):.3f} | {failed} "
      f"| {int(ticks) * 1e4 / calls:.1f} | {float(f['cpu_s']) * 1e6 / calls:.1f} |")
PY
}

# wrk_run LABEL URL BODY CONNECTIONS [HEADERS]: one wrk run of DURATION seconds (default 10)
# with tests/bench/oip.lua; prints a Markdown row: req/s, p50 and p99 in ms, non-2xx count.
# HEADERS: `Name: value` pairs separated by `;;`.
wrk_run() {
  local out
  out="$(BODY_FILE="$3" HEADERS="${5:-}" wrk -t1 -c"$4" -d"${DURATION:-10}s" --latency -s "$TESSERA_ROOT/tests/bench/oip.lua" "$2")"
  python3 - "$1" "$4" "$out" <<'PY'
import re, sys
label, connections, text = sys.argv[1], sys.argv[2], sys.argv[3]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def pct(p):
    m = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)" % p, text)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
bad = re.search(r"non2xx=(\d+) bad=(\d+)", text)
print(f"| {label} | {connections} | {rps:,.0f} | {pct(50):.3f} | {pct(99):.3f} | {bad.group(1) if bad else '?'} |")
PY
}
