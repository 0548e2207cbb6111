"""Seeds a served Tessera through its public API for the schemathesis pass.

Usage: seed.py BASE_URL ADMIN_EMAIL ADMIN_PASSWORD MODEL_FILE OUT_JSON

Creates two tenants (A, `acme`, and B, whose identifiers are distinctive enough that random
fuzz strings never contain them by chance), a member of every role in each (by invitation),
an inference and an admin API key, a model with an uploaded ONNX version and a `production`
alias, a dataset, a batch job (cancelled while queued) and a pending invitation. Writes OUT_JSON: the
credentials to fuzz with, the identifiers of each tenant's objects (path parameters the hooks
substitute so that fuzzing reaches real objects) and tenant B's identifiers, which no response
to tenant A may contain. Standard library only.
"""

import json
import sys
import urllib.error
import urllib.request

ROLES = ["owner", "admin", "ml_engineer", "auditor", "inference"]
# Long enough for the 12-character minimum; the same for every member (test data only).
MEMBER_PASSWORD = "schemathesis member password"

TENANTS = {
    "a": {"slug": "acme", "name": "Acme Corp", "domain": "acme.test", "model": "acme-adder"},
    "b": {
        "slug": "zq-beta-7x4k",
        "name": "Zq Beta 7x4k Holdings",
        "domain": "zq-beta-7x4k.test",
        "model": "zq-beta-7x4k-model",
    },
}


def call(base, method, path, token=None, body=None, content_type="application/json", expect=(200, 201, 204)):
    data = None
    headers = {"accept": "application/json"}
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["content-type"] = content_type
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    if status not in expect:
        sys.exit(f"seed: {method} {path} answered {status}: {raw[:500].decode(errors='replace')}")
    return json.loads(raw) if raw else None


def login(base, email, password, tenant=None):
    body = {"email": email, "password": password}
    if tenant:
        body["tenant"] = tenant
    return call(base, "POST", "/v1/auth/login", body=body)["access_token"]


def seed_tenant(base, admin, key, spec, model_bytes):
    slug = spec["slug"]
    tenant = call(
        base,
        "POST",
        "/v1/tenants",
        admin,
        # A high rate limit: the fuzzing should meet the handlers, not mostly 429s.
        {"slug": slug, "name": spec["name"], "rate_limit_per_second": 100000, "rate_limit_burst": 100000},
    )
    known = {"tenant": slug, "tenant_id": tenant["id"], "tenant_name": spec["name"], "members": {}, "api_keys": {}}
    credentials = []

    for role in ROLES:
        email = f"{role}@{spec['domain']}"
        invitation = call(base, "POST", f"/v1/tenants/{slug}/invitations", admin, {"email": email, "role": role})
        accepted = call(base, "POST", "/v1/invitations/accept", body={"token": invitation["token"], "password": MEMBER_PASSWORD})
        known["members"][role] = {"user_id": accepted["user_id"], "email": email, "invitation_id": invitation["id"]}
        credentials.append(
            {"name": f"{key}-{role}", "tenant": key, "kind": "user", "token": login(base, email, MEMBER_PASSWORD, slug)}
        )

    pending = call(
        base, "POST", f"/v1/tenants/{slug}/invitations", admin, {"email": f"pending@{spec['domain']}", "role": "auditor"}
    )
    known["pending_invitation_id"] = pending["id"]
    known["pending_email"] = f"pending@{spec['domain']}"

    for role in ("inference", "admin"):
        created = call(base, "POST", f"/v1/tenants/{slug}/api-keys", admin, {"name": f"{slug}-{role}-key", "role": role})
        known["api_keys"][role] = {"id": created["id"], "prefix": created["prefix"], "name": created["name"]}
        credentials.append({"name": f"{key}-key-{role}", "tenant": key, "kind": "api_key", "token": created["secret"]})

    owner = credentials[0]["token"]
    model = call(base, "POST", f"/v1/tenants/{slug}/models", owner, {"name": spec["model"], "framework": "onnx"})
    version = call(
        base,
        "POST",
        f"/v1/tenants/{slug}/models/{spec['model']}/versions",
        owner,
        model_bytes,
        content_type="application/octet-stream",
    )
    call(base, "PUT", f"/v1/tenants/{slug}/models/{spec['model']}/aliases/production", owner, {"version": version["version"]})
    known.update(model=spec["model"], model_id=model["id"], version=str(version["version"]), version_id=version["id"])

    dataset_name = f"{slug}-rows"
    dataset = call(
        base,
        "POST",
        f"/v1/tenants/{slug}/datasets?name={dataset_name}",
        owner,
        b"a,b\n1,2\n3,4\n",
        content_type="text/csv",
    )
    job = call(
        base,
        "POST",
        f"/v1/tenants/{slug}/jobs",
        owner,
        {"kind": "batch_infer", "model": spec["model"], "version": "production", "dataset": dataset["id"]},
        expect=(200, 201, 202),
    )
    # No job workers run here: cancelled while queued, the job is final, so its event stream
    # ends instead of holding each request that follows it until the client's timeout.
    call(base, "POST", f"/v1/tenants/{slug}/jobs/{job['id']}/cancel", owner, expect=(200, 202, 204))
    known.update(dataset_id=dataset["id"], dataset_name=dataset_name, job_id=job["id"])
    return known, credentials


def forbidden_strings(known):
    """Every identifier of a tenant that another tenant's responses must never contain."""
    values = [
        known["tenant"],
        known["tenant_id"],
        known["tenant_name"],
        known["model"],
        known["model_id"],
        known["version_id"],
        known["pending_invitation_id"],
        known["pending_email"],
        known["dataset_id"],
        known["dataset_name"],
        known["job_id"],
    ]
    for member in known["members"].values():
        values += [member["user_id"], member["email"], member["invitation_id"]]
    for key in known["api_keys"].values():
        values += [key["id"], key["prefix"], key["name"]]
    return sorted(set(values))


def main():
    base, admin_email, admin_password, model_file, out = sys.argv[1:6]
    base = base.rstrip("/")
    with open(model_file, "rb") as f:
        model_bytes = f.read()
    admin = login(base, admin_email, admin_password)
    credentials = [{"name": "platform-admin", "tenant": None, "kind": "user", "token": admin}]
    known = {}
    for key, spec in TENANTS.items():
        known[key], tenant_credentials = seed_tenant(base, admin, key, spec, model_bytes)
        credentials += tenant_credentials
    fixtures = {
        "credentials": credentials,
        "known": known,
        "forbidden_b": forbidden_strings(known["b"]),
        "model_file": model_file,
    }
    with open(out, "w") as f:
        json.dump(fixtures, f, indent=2)


if __name__ == "__main__":
    main()
