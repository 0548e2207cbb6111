"""Schemathesis hooks for fuzzing a served Tessera (loaded through SCHEMATHESIS_HOOKS).

Environment (set by deploy/local/schemathesis.sh):
  TESSERA_FUZZ_FIXTURES   the JSON written by seed.py
  TESSERA_FUZZ_CREDENTIAL the name of the credential this run sends (e.g. `a-owner`)
  TESSERA_FUZZ_TARGET     `own`: path parameters name the caller's own objects (both tenants'
                          for the platform admin); `b`: they name tenant B's objects, under B's
                          slug or the caller's own (the cross-tenant probes of the isolation pass)

Random strings almost never hit a real tenant, model, key or member, so a share of the
cases sent get their path parameters (and a few query and body fields) replaced by the
identifiers of seeded objects: fuzzing then reaches the handlers behind the lookups.

Two checks for the isolation pass, run with tenant A's credentials only:
  tenant_b_not_leaked   no response (body or headers) contains an identifier of tenant B that
                        none of A's requests carried (an echo reveals nothing; TESSERA_FUZZ_SENT
                        names the file that remembers what A's requests carried)
  tenant_b_unreachable  no request naming one of B's objects in its path, or B in `?tenant=`,
                        succeeds (2xx)
"""

import hashlib
import json
import os
from urllib.parse import unquote, unquote_plus

import schemathesis

_FIXTURES_PATH = os.environ.get("TESSERA_FUZZ_FIXTURES")
_FIXTURES = {}
if _FIXTURES_PATH:
    with open(_FIXTURES_PATH) as f:
        _FIXTURES = json.load(f)
_CREDENTIAL = os.environ.get("TESSERA_FUZZ_CREDENTIAL", "")
_TARGET = os.environ.get("TESSERA_FUZZ_TARGET", "own")
_KNOWN = _FIXTURES.get("known", {})
_FORBIDDEN = [s for s in _FIXTURES.get("forbidden_b", []) if s]
_SENT_PATH = os.environ.get("TESSERA_FUZZ_SENT")
# The caller's tenant key (`a`, `b`) or None for the platform admin.
_OWN = _CREDENTIAL.split("-", 1)[0] if _CREDENTIAL[:2] in ("a-", "b-") else None


@schemathesis.hook
def before_load_schema(context, raw_schema):
    """Repairs two defects of the committed document that stop generation, not the server.

    - `ExportFormat` (the `format` query parameter of the audit exports) is referenced but not
      defined under `components.schemas`.
    - Each `JobRequest` branch is `allOf: [X, {kind}]` where X forbids additional properties,
      so no body satisfies it; merged into one object per branch, as the server reads it.
    """
    schemas = raw_schema.get("components", {}).get("schemas", {})
    schemas.setdefault("ExportFormat", {"type": "string", "enum": ["jsonl", "csv"]})
    job = schemas.get("JobRequest", {})
    for index, branch in enumerate(job.get("oneOf", [])):
        parts = branch.get("allOf", [])
        if len(parts) != 2 or "$ref" not in parts[0]:
            continue
        base = schemas.get(parts[0]["$ref"].rsplit("/", 1)[-1])
        if not base or base.get("additionalProperties", True) is not False:
            continue
        merged = json.loads(json.dumps(base))
        merged["properties"].update(parts[1].get("properties", {}))
        merged["required"] = list(dict.fromkeys(merged.get("required", []) + parts[1].get("required", [])))
        job["oneOf"][index] = merged


def _pick(seed, options):
    return options[seed % len(options)]


def _values_for(tenant_key, seed):
    """A consistent set of one tenant's identifiers, keyed by the names the API uses.

    Tenant B's tenant id, model id and version id are never among them: they stay identifiers
    that only a leak can show tenant A (see `tenant_b_not_leaked`), as do B's emails, API key
    prefixes and names, tenant name and dataset name.
    """
    known = _KNOWN[tenant_key]
    resources = [known["dataset_id"], known["job_id"]]
    if tenant_key != "b":
        resources += [known["model_id"], known["tenant_id"]]
    members = list(known["members"].values())
    keys = list(known["api_keys"].values())
    return {
        "tenant": known["tenant"],
        "model": known["model"],
        "name": known["model"],
        "version": _pick(seed >> 3, [known["version"], "production"]),
        "alias": "production",
        "user_id": _pick(seed >> 5, members)["user_id"],
        "key_id": _pick(seed >> 8, keys)["id"],
        "invitation_id": known["pending_invitation_id"],
        "dataset_id": known["dataset_id"],
        "job_id": known["job_id"],
        "actor_id": _pick(seed >> 5, members)["user_id"],
        "resource_id": _pick(seed >> 10, resources),
    }


_MODEL_BYTES = b""
if _FIXTURES.get("model_file"):
    with open(_FIXTURES["model_file"], "rb") as f:
        _MODEL_BYTES = f.read()


def _tensor(name, shape, datatype="FP32", data=None):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data if data is not None else [1.0, 2.0, 3.0, 4.0]}


def _inference_body(seed, generated):
    """A request the seeded model (z = x + y, FP32 [batch, 4]) accepts, or a near miss of one.

    A generated body is almost never a valid OIP request, so it stops at the first check; near
    misses reach the decoding, shape and batching code behind it.
    """
    x, y = _tensor("x", [1, 4]), _tensor("y", [1, 4])
    variants = [
        {"inputs": [x, y]},
        {"inputs": [x, y], "outputs": [{"name": "z"}]},
        {"inputs": [x, y], "outputs": [{"name": "nope"}]},
        {"inputs": [x]},
        {"inputs": [x, _tensor("y", [1, 3])]},
        {"inputs": [x, _tensor("y", [2, 4])]},
        {"inputs": [x, _tensor("y", [1, 4], "FP64")]},
        {"inputs": [x, _tensor("y", [1, 4], "BYTES", ["a", "b", "c", "d"])]},
        {"inputs": [x, _tensor("y", [1, 4], "FP32", [[1, 2], [3, 4]])]},
        {"inputs": [x, _tensor("y", [1, 4], "FP32", ["1", None, True, 3.5e38 * 10])]},
        {"inputs": [x, _tensor("y", [-1, 4])]},
        {"inputs": [x, _tensor("y", [0, 4], "FP32", [])]},
        {"inputs": [x, _tensor("y", [4294967296, 4])]},
        {"inputs": [x, _tensor("y", [9223372036854775807, 9223372036854775807])]},
        {"inputs": [_tensor("x", [2, 4], data=list(range(8))), _tensor("y", [2, 4], data=list(range(8)))]},
        {"inputs": [x, x]},
        {"inputs": [x, y], "parameters": {"binary_data_output": True}},
        # A deadline that parses but does not expire: a 504 for a deadline the client set
        # itself would be Tessera working as designed.
        {"id": "r", "inputs": [x, y], "parameters": {"timeout": 30_000_000}},
    ]
    body = json.loads(json.dumps(variants[seed % len(variants)]))
    if (seed >> 20) % 4 == 0 and isinstance(generated, dict):
        body.update(generated)  # the generated keys on top of a request that was valid
    return body


def _artifact_body(seed):
    """The seeded model's bytes, or a damaged copy: the ONNX validation has to refuse each."""
    data = _MODEL_BYTES
    if not data:
        return data
    where = (seed >> 7) % len(data)
    variants = [
        data,
        data[:where],
        data[:where] + bytes([data[where] ^ 0xFF]) + data[where + 1 :],
        data + data[where:],
        data[where:],
        b"",
    ]
    return variants[seed % len(variants)]


def _seed(case):
    parameters = sorted((case.path_parameters or {}).items(), key=str)
    query = sorted((case.query or {}).items(), key=str)
    material = repr((case.method, case.path, parameters, query))
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big")


@schemathesis.hook
def before_call(context, case, kwargs):
    # Here rather than in `map_case`: rewriting cases while they are generated collapses many
    # of them into one, which Hypothesis then filters at great cost.
    if not _KNOWN:
        return
    seed = _seed(case)
    # One case in three keeps its generated values, so the lookups' own parsing is fuzzed too.
    if seed % 3 == 0:
        return
    if _TARGET == "b":
        values = _values_for("b", seed)
        # Under B's own slug, or under the caller's tenant with B's object ids (object-level
        # authorization: an id from another tenant must not resolve).
        tenant = _pick(seed >> 13, [_KNOWN["b"]["tenant"], _KNOWN[_OWN or "a"]["tenant"]])
    else:
        values = _values_for(_OWN or _pick(seed >> 13, ["a", "b"]), seed)
        tenant = values["tenant"]
    for name in list(case.path_parameters):
        if name == "tenant":
            case.path_parameters[name] = tenant
        elif name == "id":
            case.path_parameters[name] = values["job_id" if "/jobs/" in case.path else "dataset_id"]
        elif name in values:
            case.path_parameters[name] = values[name]
    if isinstance(case.query, dict):
        for name in ("tenant", "actor_id", "resource_id"):
            if name in case.query:
                case.query[name] = values[name]
    if case.path.startswith("/v2/") and case.path.endswith("/infer"):
        case.body = _inference_body(seed >> 2, case.body)
    elif case.method == "POST" and case.path == "/v1/tenants/{tenant}/models/{model}/versions" and _MODEL_BYTES:
        case.body = _artifact_body(seed >> 2)
    # A job over another tenant's dataset or model is the same question asked through a body.
    if _TARGET == "b" and case.path == "/v1/tenants/{tenant}/jobs" and isinstance(case.body, dict):
        if "dataset" in case.body:
            case.body["dataset"] = values["dataset_id"]
        if "model" in case.body:
            case.body["model"] = values["model"]


def _request_text(request):
    """Everything the request carried, decoded, to tell an echo from a leak."""
    parts = [unquote(request.url or ""), unquote_plus(request.url or "")]
    body = request.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        parts.append(body)
        try:
            # JSON escapes (`\u00e9`, `\/`) must not hide an echoed value.
            parts.append(json.dumps(json.loads(body), ensure_ascii=False))
        except ValueError:
            pass
    for name, value in (request.headers or {}).items():
        parts.append(f"{name}: {value}")
    return "\n".join(parts).lower()


def _response_text(response):
    text = response.content.decode("utf-8", "replace")
    try:
        text += "\n" + json.dumps(json.loads(text), ensure_ascii=False)
    except ValueError:
        pass
    for name, values in response.headers.items():
        for value in values if isinstance(values, list) else [values]:
            text += f"\n{name}: {value}"
    return text.lower()


def _sent_before(now):
    """B's identifiers tenant A's requests have carried so far, this one's included.

    Kept in a file shared by the isolation runs: what A's callers send stays in A's data (its
    audit log records the names they asked for; a fuzzed body may store them), so it comes back
    in later responses without anything of B having been revealed.
    """
    if not _SENT_PATH:
        return now
    try:
        with open(_SENT_PATH) as f:
            before = {line.rstrip("\n") for line in f}
    except FileNotFoundError:
        before = set()
    if now - before:
        with open(_SENT_PATH, "a") as f:
            f.writelines(f"{s}\n" for s in sorted(now - before))
    return before | now


@schemathesis.check
def tenant_b_not_leaked(ctx, response, case):
    """No response to tenant A contains an identifier of tenant B that A's requests never carried."""
    if not _FORBIDDEN:
        return None
    request = _request_text(response.request)
    sent = _sent_before({s.lower() for s in _FORBIDDEN if s.lower() in request})
    received = _response_text(response)
    leaked = [s for s in _FORBIDDEN if s.lower() in received and s.lower() not in sent]
    if leaked:
        raise AssertionError(
            f"Response ({response.status_code}) to {_CREDENTIAL} contains tenant B identifiers: {', '.join(leaked)}"
        )
    return None


@schemathesis.check
def tenant_b_unreachable(ctx, response, case):
    """A request naming one of tenant B's objects in its path (or B in `?tenant=`) is refused."""
    if not _FORBIDDEN or not 200 <= response.status_code < 300:
        return None
    forbidden = {s.lower() for s in _FORBIDDEN}
    named = [str(v) for v in case.path_parameters.values() if str(v).lower() in forbidden]
    if isinstance(case.query, dict) and str(case.query.get("tenant", "")).lower() in forbidden:
        named.append(str(case.query["tenant"]))
    if named:
        raise AssertionError(
            f"{_CREDENTIAL} reached tenant B's {', '.join(named)} ({response.status_code})"
        )
    return None
