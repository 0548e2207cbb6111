#!/usr/bin/env bash
# Three `tessera serve` and two `tessera worker` processes behind HAProxy over one Postgres,
# one Redis of their own and an S3-compatible store (moto), checked as one Tessera
# (tests/scale/scale_out.py says what is checked), then the same processes through PgBouncer in
# session mode. Run by test.sh after the suite.
#
#   deploy/local/scale-out.sh            the checks, on the debug build
#   deploy/local/scale-out.sh --bench    throughput with 1, 2 and 3 API processes (release build;
#                                        SECONDS_PER_RUN, default 10)
#
# Extra arguments go to scale_out.py (--keep keeps the processes' logs).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

SCALE_PYDEPS="${SCALE_PYDEPS:-/var/tmp/tessera-scale-pydeps}"

ensure_packages
ensure_running
ensure_onnxruntime
export_test_env
missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! PYTHONPATH="$SCALE_PYDEPS" python3 -c "import moto.server, opentelemetry.proto.collector.trace.v1" >/dev/null 2>&1; then
  log "installing moto[server] and opentelemetry-proto into $SCALE_PYDEPS"
  python3 -m pip install --quiet --disable-pip-version-check --target "$SCALE_PYDEPS" "moto[server]==5.*" "opentelemetry-proto==1.*" >&2 \
    || die "could not install moto[server] and opentelemetry-proto from PyPI"
fi
export PYTHONPATH="$SCALE_PYDEPS"

target="${CARGO_TARGET_DIR:-$TESSERA_ROOT/target}"
if [[ " $* " == *" --bench "* ]]; then
  build_portal
  log "building Tessera (release)"
  cargo build --locked --release --quiet --bin tessera
  exec python3 tests/scale/scale_out.py --bin "$target/release/tessera" --seconds "${SECONDS_PER_RUN:-10}" "$@"
fi
[ -x "$target/debug/tessera" ] || { build_portal; cargo build --locked --quiet --bin tessera; }
log "scale-out checks"
started=$SECONDS
python3 tests/scale/scale_out.py --bin "$target/debug/tessera" "$@"
log "the same processes through PgBouncer in session mode"
PATH="$PATH:/usr/sbin" python3 tests/scale/scale_out.py --bin "$target/debug/tessera" --pgbouncer "$@"
log "scale-out checks took $((SECONDS - started)) s"
