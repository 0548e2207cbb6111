#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests (deploy/kubernetes), in seconds and without a
# cluster: renders the base and every overlay with kustomize v2.0.3 (Debian's kubectl 1.20)
# and, when a newer kubectl is on the PATH, with its kustomize too (both must agree); lints the
# sources and the renderings (yamllint); validates the renderings against the Kubernetes
# schemas (kubernetes-validate --strict); runs the security and consistency checks of
# tests/kubernetes/check_manifests.py and their self-test, which proves they fail on broken
# copies. Renderings are left in .local/kubernetes/. Exits non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$TESSERA_ROOT"

# The oldest Kubernetes the manifests target (preStop's sleep action is 1.30's).
KUBERNETES_VERSION=1.30.0
# Kinds kubernetes-validate has no schema for (CRDs): check_manifests.py checks their structure.
CRD_KINDS='(ServiceMonitor with api version monitoring\.coreos\.com/v1|ScaledObject with api version keda\.sh/v1alpha1|TriggerAuthentication with api version keda\.sh/v1alpha1)'

ensure_kubernetes_tools
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python3 3.11 or newer is needed (tomllib)"

manifests=deploy/kubernetes
out="$LOCAL_DIR/kubernetes"
rm -rf "$out"
mkdir -p "$out"
py() { PYTHONPATH="$K8S_PYDEPS_DIR" python3 "$@"; }

passed=0
failed=0
summary=()
record() { # record NAME STATUS
  if [ "$2" -eq 0 ]; then
    passed=$((passed + 1))
    summary+=("  ok    $1")
  else
    failed=$((failed + 1))
    summary+=("  FAIL  $1")
  fi
}

targets=(base)
for dir in "$manifests"/overlays/*/; do
  targets+=("overlays/$(basename "$dir")")
done

if [ -n "$NEWER_KUBECTL" ]; then
  newer_kustomize="$("$NEWER_KUBECTL" version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')"
fi
rendered=()
overlays=()
for target in "${targets[@]}"; do
  name="$(basename "$target")"
  status=0
  "$KUSTOMIZE_KUBECTL" kustomize "$manifests/$target" >"$out/$name.yaml" 2>"$out/$name.err" || status=$?
  [ "$status" -eq 0 ] || cat "$out/$name.err" >&2
  record "render $target (kustomize v2.0.3)" "$status"
  [ "$status" -eq 0 ] || continue
  rendered+=("$out/$name.yaml")
  [ "$target" = base ] || overlays+=("$out/$name.yaml")

  if [ -n "$NEWER_KUBECTL" ]; then
    status=0
    { "$NEWER_KUBECTL" kustomize "$manifests/$target" >"$out/$name.newer.yaml" 2>"$out/$name.newer.err" \
      && py tests/kubernetes/check_manifests.py --compare "$out/$name.yaml" "$out/$name.newer.yaml" >&2; } || status=$?
    [ "$status" -eq 0 ] || cat "$out/$name.newer.err" >&2
    record "render $target (kustomize $newer_kustomize of $NEWER_KUBECTL) agrees" "$status"
  fi
done

status=0
py -m yamllint --strict -c "$manifests/.yamllint" "$manifests" "${rendered[@]}" >&2 || status=$?
record "yamllint (sources and renderings)" "$status"

for file in "${rendered[@]}"; do
  status=0
  report="$(py -m kubernetes_validate --strict --quiet -k "$KUBERNETES_VERSION" "$file" 2>&1)" || status=$?
  # kubernetes-validate only warns about a kind it has no schema for: anything but the CRDs
  # above (a typo in apiVersion, say) fails here.
  unexpected="$(printf '%s\n' "$report" | grep -v -E "^WARN .* Couldn't find schema for kind $CRD_KINDS for kubernetes version" | grep -v '^$' || true)"
  if [ -n "$unexpected" ]; then
    printf '%s\n' "$unexpected" >&2
    status=1
  fi
  record "kubernetes-validate --strict $KUBERNETES_VERSION $(basename "$file")" "$status"
done

if [ -f "$out/base.yaml" ]; then
  status=0
  py tests/kubernetes/check_manifests.py --base "$out/base.yaml" >&2 || status=$?
  record "security and consistency checks: base" "$status"
fi
for file in "${overlays[@]}"; do
  status=0
  py tests/kubernetes/check_manifests.py "$file" >&2 || status=$?
  record "security and consistency checks: $(basename "$file" .yaml)" "$status"
done
status=0
if [ ${#overlays[@]} -gt 0 ]; then
  py tests/kubernetes/check_manifests.py --self-test "${overlays[@]}" >&2 || status=$?
else
  status=1
fi
record "self-test: the checks refuse broken copies" "$status"

kubectl_version="$("$KUSTOMIZE_KUBECTL" version --client 2>/dev/null | sed -n 's/.*GitVersion:"\([^"]*\)".*/\1/p')"
echo "Kubernetes manifests (kubectl ${kubectl_version:-?} with kustomize v2.0.3; kubernetes-validate" \
  "$KUBERNETES_VALIDATE_VERSION against Kubernetes $KUBERNETES_VERSION; yamllint $YAMLLINT_VERSION):"
printf '%s\n' "${summary[@]}"
echo "kubernetes: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
