#!/usr/bin/env bash
# Fuzzes a served Tessera with schemathesis, from the committed OpenAPI document (the test
# suite fails when it drifts from what the server serves), in two passes:
#   contract: every credential (none, the platform admin, each role of two tenants, their API
#           keys), every phase; any 5xx fails, and so does any breach of the document: a status,
#           content type, header or body it does not declare, a schema-valid request refused as
#           malformed (400), or a schema-invalid one accepted.
#   isolation: tenant A's credentials, aimed at tenant B's objects; any 5xx, any response that
#           names one of B's identifiers A never sent, or any 2xx to a request naming one of
#           B's objects fails (checks in tests/schemathesis/hooks.py).
# A fresh database, seeded through the public API (tests/schemathesis/seed.py). Called by
# test.sh after the cargo tests; runs alone too. Knobs: TESSERA_FUZZ_EXAMPLES (fuzzing cases
# per operation), TESSERA_FUZZ_SEED, TESSERA_FUZZ_DATABASE (dropped and recreated),
# TESSERA_FUZZ_ONLY (credential names, e.g. "a-owner anonymous": only their runs).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_DIR="${SCHEMATHESIS_DIR:-/var/tmp/tessera-schemathesis}"
EXAMPLES="${TESSERA_FUZZ_EXAMPLES:-100}"
# The isolation pass and the API keys' contract runs (beyond the roles' own tokens).
SIDE_EXAMPLES="${TESSERA_FUZZ_SIDE_EXAMPLES:-25}"
SEED="${TESSERA_FUZZ_SEED:-20240611}"
DB_NAME="${TESSERA_FUZZ_DATABASE:-tessera_schemathesis}"
ADMIN_EMAIL=root@platform.test
ADMIN_PASSWORD="schemathesis platform admin password"

ensure_packages
ensure_running
ensure_onnxruntime
export_test_env

if ! PYTHONPATH="$SCHEMATHESIS_DIR" python3 -c "import schemathesis, sys; sys.exit(schemathesis.__version__ != '$SCHEMATHESIS_VERSION')" 2>/dev/null; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $SCHEMATHESIS_DIR"
  # --upgrade: without it, pip leaves another version already in the directory in place.
  python3 -m pip install --quiet --disable-pip-version-check --upgrade --target "$SCHEMATHESIS_DIR" \
    "schemathesis==$SCHEMATHESIS_VERSION" >&2 || die "could not install schemathesis==$SCHEMATHESIS_VERSION from PyPI"
fi

build_portal
cargo build --locked --quiet --bin tessera

work="$(mktemp -d /tmp/tessera-schemathesis.XXXXXX)"
trap 'stop_fresh "$DB_NAME" "$work"' EXIT
# The seeded access tokens must outlive every run (the default is 15 minutes).
export TESSERA__AUTH__ACCESS_TOKEN_TTL_SECONDS=7200
serve_fresh "$DB_NAME" "$work" "tessera-schemathesis-$$"

log "seeding two tenants through the API"
TESSERA_BOOTSTRAP_PASSWORD="$ADMIN_PASSWORD" "$bin" admin bootstrap --email "$ADMIN_EMAIL" >/dev/null
fixtures="$work/fixtures.json"
python3 tests/schemathesis/seed.py "$base" "$ADMIN_EMAIL" "$ADMIN_PASSWORD" "$TESSERA_ROOT/tests/fixtures/models/add_fp32.onnx" "$fixtures"
mapfile -t credentials < <(python3 -c 'import json, sys; [print(c["name"]) for c in json.load(open(sys.argv[1]))["credentials"]]' "$fixtures")
token_of() { python3 -c 'import json, sys; print(next(c["token"] for c in json.load(open(sys.argv[1]))["credentials"] if c["name"] == sys.argv[2]))' "$fixtures" "$1"; }

# Operations that would dismantle the fixtures the later runs rely on once the hooks point
# them at seeded objects (suspending a tenant, removing members, revoking keys, deleting the
# model), and operations that end the caller's own credential whatever their input (logout
# revokes the access token; a password change ends every session, and wrong current passwords
# lock the account). Both are left out of the main runs and fuzzed last, in that order.
dismantling=(suspend_tenant resume_tenant set_tenant_limits remove_member change_member_role revoke_api_key revoke_invitation
  delete_model delete_version remove_alias cancel_job)
self_ending=(logout change_password)
exclude_last=()
exclude_self_ending=()
only_dismantling=()
only_self_ending=()
for op in "${dismantling[@]}"; do exclude_last+=(--exclude-operation-id "$op"); only_dismantling+=(--include-operation-id "$op"); done
for op in "${self_ending[@]}"; do
  exclude_last+=(--exclude-operation-id "$op")
  exclude_self_ending+=(--exclude-operation-id "$op")
  only_self_ending+=(--include-operation-id "$op")
done

summary="$work/summary.tsv"
: >"$summary"
failed=0

# in_two_lanes LABEL TARGET CHECKS EXAMPLES CREDENTIAL... -- OPTION...: `fuzz` for each
# credential, two at a time (schemathesis is bound by one Python thread; the machine has two
# cores). Failures are read back from the summary.
in_two_lanes() {
  local label="$1" target="$2" checks="$3" examples="$4" lane pids=()
  shift 4
  local creds=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do creds+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  for lane in 0 1; do
    (
      for i in "${!creds[@]}"; do
        [ $((i % 2)) -eq "$lane" ] || continue
        FUZZ_EXAMPLES="$examples" fuzz "$label" "${creds[$i]}" "$target" "$checks" "$@"
      done
    ) &
    pids+=($!)
  done
  wait "${pids[@]}"
}

# fuzz LABEL CREDENTIAL TARGET CHECKS [schemathesis options...]; CREDENTIAL `anonymous` sends none.
# One schemathesis worker: with more, Hypothesis parses lambdas' source from several threads at
# once, which CPython 3.11's `ast` does not survive ("AST constructor recursion depth mismatch").
fuzz() {
  local label="$1" credential="$2" target="$3" checks="$4" report="$work/$1-$2.xml" status=0 auth=()
  shift 4
  if [ -n "${TESSERA_FUZZ_ONLY:-}" ] && [[ " $TESSERA_FUZZ_ONLY " != *" $credential "* ]]; then return 0; fi
  [ "$credential" = anonymous ] || auth=(--header "Authorization: Bearer $(token_of "$credential")")
  (
    cd "$work" # schemathesis and Hypothesis leave nothing in the checkout
    PYTHONPATH="$SCHEMATHESIS_DIR" PYTHONDONTWRITEBYTECODE=1 \
      SCHEMATHESIS_HOOKS="$TESSERA_ROOT/tests/schemathesis/hooks.py" \
      TESSERA_FUZZ_FIXTURES="$fixtures" TESSERA_FUZZ_CREDENTIAL="$credential" TESSERA_FUZZ_TARGET="$target" \
      TESSERA_FUZZ_SENT="$work/sent-by-tenant-a" \
      python3 -m schemathesis.cli --config-file "$TESSERA_ROOT/tests/schemathesis/schemathesis.toml" \
      run "$TESSERA_ROOT/openapi/openapi.json" --url "$base" \
      "${auth[@]}" \
      --checks "$checks" \
      --phases examples,coverage,fuzzing \
      --max-examples "${FUZZ_EXAMPLES:-$EXAMPLES}" \
      --seed "$SEED" \
      --workers 1 \
      --request-timeout 20 \
      --generation-database none \
      --report junit --report-junit-path "$report" \
      --no-color \
      "$@"
  ) >"$work/$label-$credential.log" 2>&1 || status=$?
  python3 - "$label" "$credential" "$status" "$report" "$work/$label-$credential.log" >>"$summary" <<'PY'
import re, sys, xml.etree.ElementTree as ET
label, credential, status, report, log = sys.argv[1:6]
tested = failing = 0
try:
    for case in ET.parse(report).getroot().iter("testcase"):
        tested += 1
        failing += any(child.tag in ("failure", "error") for child in case)
except (OSError, ET.ParseError):
    pass
cases = re.findall(r"^\s*(\d+) generated", open(log, errors="replace").read(), re.M)
print(f"{label}\t{credential}\t{tested}\t{cases[-1] if cases else 0}\t{failing}\t{status}")
PY
  if [ "$status" -ne 0 ]; then
    failed=1
    log "$label $credential: schemathesis exited $status"
    # Its ERRORS and FAILURES sections, with a curl reproduction for each failure; the end of
    # its output when it has neither (a usage or schema loading error).
    if grep -qE '^=+ (ERRORS|FAILURES) =+$' "$work/$label-$credential.log"; then
      sed -n '/^=* ERRORS =*$/,/^=* WARNINGS =*$/p; /^=* FAILURES =*$/,/^=* WARNINGS =*$/p' \
        "$work/$label-$credential.log" | grep -v '^=* WARNINGS =*$' >&2 || true
    else
      tail -n 20 "$work/$label-$credential.log" >&2
    fi
  fi
}

started=$SECONDS
# Isolation first, on the fixtures as seeded: the platform admin's runs below may legitimately
# copy B's identifiers into A (inviting an email it read from B, say), which would then show up
# in A's responses without any leak. The dismantling operations are in: aimed at B's objects,
# they must fail.
tenant_a=() roles=(anonymous) keys=()
for credential in "${credentials[@]}"; do
  case "$credential" in a-*) tenant_a+=("$credential") ;; esac
  case "$credential" in *-key-*) keys+=("$credential") ;; *) roles+=("$credential") ;; esac
done
log "isolation pass: tenant A's credentials against tenant B's objects"
in_two_lanes isolation b not_a_server_error,tenant_b_not_leaked,tenant_b_unreachable "$SIDE_EXAMPLES" \
  "${tenant_a[@]}" -- "${exclude_self_ending[@]}"

contract=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance
contract+=,response_schema_conformance,positive_data_acceptance,negative_data_rejection
log "contract pass: every role of both tenants, the platform admin and no credential; the API keys"
in_two_lanes contract own "$contract" "$EXAMPLES" "${roles[@]}" -- "${exclude_last[@]}"
in_two_lanes contract own "$contract" "$SIDE_EXAMPLES" "${keys[@]}" -- "${exclude_last[@]}"
# The owners' runs before the platform admin's: it suspends the tenants.
for credential in b-owner a-owner platform-admin; do
  fuzz contract-dismantling "$credential" own "$contract" "${only_dismantling[@]}"
done
fuzz contract-self-ending platform-admin own "$contract" "${only_self_ending[@]}"

if awk -F'\t' '$6 != "0" { bad = 1 } END { exit !bad }' "$summary"; then
  failed=1
  grep -m 20 'ERROR' "$work/server.log" >&2 || true
fi
# A panic the handler survived, or one in a background task, shows in no response.
if grep -n 'panicked at' "$work/server.log" >&2; then
  failed=1
  log "Tessera panicked during the fuzzing (server log lines above)"
fi
if ! kill -0 "$server_pid" 2>/dev/null; then
  failed=1
  tail -n 40 "$work/server.log" >&2
  log "Tessera exited during the fuzzing"
fi

python3 - "$summary" "$((SECONDS - started))" "$failed" <<'PY'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
print(f"\nschemathesis: {len(rows)} runs in {sys.argv[2]} s")
print(f"{'pass':<27} {'credential':<16} {'operations':>10} {'cases':>7} {'failing':>8}  exit")
for label, credential, tested, cases, failing, status in rows:
    print(f"{label:<27} {credential:<16} {tested:>10} {cases:>7} {failing:>8}  {status}")
operations, cases, failing = (sum(int(r[i]) for r in rows) for i in (2, 3, 4))
# A run that failed with no failing operation (a usage error, say) counts as one failure, and
# so does a panic or exit of the server.
failing += sum(r[5] != "0" and r[4] == "0" for r in rows)
failing += sys.argv[3] == "1" and failing == 0
print(f"{cases} cases over {operations} operations")
print(f"schemathesis: {operations - min(failing, operations)} passed, {failing} failed")
PY

[ "$failed" -eq 0 ] || die "schemathesis found server errors or tenant B's identifiers in tenant A's responses (see above)"
log "schemathesis: no server error, nothing of tenant B reached tenant A"
