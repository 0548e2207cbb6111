//! Every route of the OpenAPI document against every kind of caller. A route missing from
//! `EXPECTED` fails the test, so no route ships without a decided guard.

use std::collections::HashMap;

use crate::helpers::{As, spawn_app};

/// Who may call what. `Public`: no credential needed. `Any`: any authenticated caller.
/// `Only(..)`: exactly these callers (everyone else gets 403, anonymous gets 401).
enum Rule {
    Public,
    Any,
    Only(&'static [As]),
}

use As::*;

const TENANT_ADMINS: &[As] = &[PlatformAdmin, Owner, Admin, AdminKey];

const EXPECTED: &[(&str, &str, Rule)] = &[
    ("GET", "/healthz", Rule::Public),
    ("GET", "/readyz", Rule::Public),
    ("GET", "/.well-known/jwks.json", Rule::Public),
    ("POST", "/v1/auth/login", Rule::Public),
    ("POST", "/v1/auth/refresh", Rule::Public),
    ("POST", "/v1/auth/logout", Rule::Any),
    ("GET", "/v1/me", Rule::Any),
    ("GET", "/v1/auth/verify", Rule::Any),
    ("POST", "/v1/me/password", Rule::Any),
    ("POST", "/v1/password-resets", Rule::Only(&[PlatformAdmin])),
    ("POST", "/v1/password-resets/redeem", Rule::Public),
    ("POST", "/v1/tenants", Rule::Only(&[PlatformAdmin])),
    ("GET", "/v1/tenants", Rule::Only(&[PlatformAdmin])),
    ("GET", "/v1/tenants/{tenant}", Rule::Any),
    ("PATCH", "/v1/tenants/{tenant}", Rule::Only(&[PlatformAdmin])),
    ("POST", "/v1/tenants/{tenant}/suspend", Rule::Only(&[PlatformAdmin])),
    ("POST", "/v1/tenants/{tenant}/resume", Rule::Only(&[PlatformAdmin])),
    ("GET", "/v1/tenants/{tenant}/members", Rule::Only(TENANT_ADMINS)),
    ("POST", "/v1/tenants/{tenant}/invitations", Rule::Only(TENANT_ADMINS)),
    ("GET", "/v1/tenants/{tenant}/invitations", Rule::Only(TENANT_ADMINS)),
    ("DELETE", "/v1/tenants/{tenant}/invitations/{invitation_id}", Rule::Only(TENANT_ADMINS)),
    ("POST", "/v1/invitations/accept", Rule::Public),
    ("PATCH", "/v1/tenants/{tenant}/members/{user_id}", Rule::Only(TENANT_ADMINS)),
    ("DELETE", "/v1/tenants/{tenant}/members/{user_id}", Rule::Only(TENANT_ADMINS)),
    ("POST", "/v1/tenants/{tenant}/api-keys", Rule::Only(TENANT_ADMINS)),
    ("GET", "/v1/tenants/{tenant}/api-keys", Rule::Only(TENANT_ADMINS)),
    ("DELETE", "/v1/tenants/{tenant}/api-keys/{key_id}", Rule::Only(TENANT_ADMINS)),
    ("GET", "/v1/tenants/{tenant}/audit/events", Rule::Only(AUDITORS)),
    ("GET", "/v1/tenants/{tenant}/audit/export", Rule::Only(AUDITORS)),
    ("GET", "/v1/platform/audit/events", Rule::Only(&[PlatformAdmin])),
    ("GET", "/v1/platform/audit/export", Rule::Only(&[PlatformAdmin])),
    ("GET", "/v1/audit/keys", Rule::Public),
    ("POST", "/v1/audit/verify", Rule::Only(AUDITORS)),
    ("GET", "/v1/tenants/{tenant}/audit/settings", Rule::Only(AUDITORS)),
    ("PUT", "/v1/tenants/{tenant}/audit/settings", Rule::Only(&[PlatformAdmin, Owner])),
    ("POST", "/v1/tenants/{tenant}/models", Rule::Only(MODEL_WRITERS)),
    ("GET", "/v1/tenants/{tenant}/models", Rule::Only(MODEL_READERS)),
    ("GET", "/v1/tenants/{tenant}/models/{model}", Rule::Only(MODEL_READERS)),
    ("DELETE", "/v1/tenants/{tenant}/models/{model}", Rule::Only(MODEL_WRITERS)),
    ("POST", "/v1/tenants/{tenant}/models/{model}/versions", Rule::Only(MODEL_WRITERS)),
    ("GET", "/v1/tenants/{tenant}/models/{model}/versions", Rule::Only(MODEL_READERS)),
    ("GET", "/v1/tenants/{tenant}/models/{model}/versions/{version}", Rule::Only(MODEL_READERS)),
    ("GET", "/v1/tenants/{tenant}/models/{model}/versions/{version}/artifact", Rule::Only(MODEL_WRITERS)),
    ("DELETE", "/v1/tenants/{tenant}/models/{model}/versions/{version}", Rule::Only(MODEL_WRITERS)),
    ("PUT", "/v1/tenants/{tenant}/models/{model}/aliases/{alias}", Rule::Only(MODEL_WRITERS)),
    ("DELETE", "/v1/tenants/{tenant}/models/{model}/aliases/{alias}", Rule::Only(MODEL_WRITERS)),
    ("POST", "/v1/tenants/{tenant}/keys/rotate", Rule::Only(&[PlatformAdmin, Owner])),
    ("POST", "/v1/tenants/{tenant}/datasets", Rule::Only(JOB_RUNNERS)),
    ("GET", "/v1/tenants/{tenant}/datasets", Rule::Only(JOB_RUNNERS)),
    ("GET", "/v1/tenants/{tenant}/datasets/{id}", Rule::Only(JOB_RUNNERS)),
    ("POST", "/v1/tenants/{tenant}/jobs", Rule::Only(JOB_RUNNERS)),
    ("GET", "/v1/tenants/{tenant}/jobs", Rule::Only(JOB_RUNNERS)),
    ("GET", "/v1/tenants/{tenant}/jobs/{id}", Rule::Only(JOB_RUNNERS)),
    ("POST", "/v1/tenants/{tenant}/jobs/{id}/cancel", Rule::Only(JOB_RUNNERS)),
    ("GET", "/v1/tenants/{tenant}/jobs/{id}/events", Rule::Only(JOB_RUNNERS)),
    ("GET", "/v1/tenants/{tenant}/jobs/{id}/output", Rule::Only(JOB_RUNNERS)),
    ("GET", "/v1/tenants/{tenant}/usage", Rule::Only(USAGE_READERS)),
    ("GET", "/v1/tenants/{tenant}/usage/export", Rule::Only(USAGE_READERS)),
    ("GET", "/v2", Rule::Public),
    ("GET", "/v2/health/live", Rule::Public),
    ("GET", "/v2/health/ready", Rule::Public),
    ("GET", "/v2/models/{name}", Rule::Only(INFERENCE)),
    ("GET", "/v2/models/{name}/versions/{version}", Rule::Only(INFERENCE)),
    ("GET", "/v2/models/{name}/ready", Rule::Only(INFERENCE)),
    ("GET", "/v2/models/{name}/versions/{version}/ready", Rule::Only(INFERENCE)),
    ("POST", "/v2/models/{name}/infer", Rule::Only(INFERENCE)),
    ("POST", "/v2/models/{name}/versions/{version}/infer", Rule::Only(INFERENCE)),
];

/// Everyone with `inference.run` in the tenant. A platform administrator's token names no
/// tenant, so it has no models to call (403 `tenant_required`).
const INFERENCE: &[As] = &[Owner, Admin, MlEngineer, AdminKey, Inference, InferenceKey];

const MODEL_WRITERS: &[As] = &[PlatformAdmin, Owner, Admin, MlEngineer, AdminKey];
const MODEL_READERS: &[As] = &[PlatformAdmin, Owner, Admin, MlEngineer, AdminKey, Inference, InferenceKey];

/// `ml_engineer` or higher.
const JOB_RUNNERS: &[As] = &[PlatformAdmin, Owner, Admin, MlEngineer, AdminKey];

const AUDITORS: &[As] = &[PlatformAdmin, Owner, Auditor];

/// Owners, admins (and their keys) and auditors: `inference` and `ml_engineer` see no usage.
const USAGE_READERS: &[As] = &[PlatformAdmin, Owner, Admin, AdminKey, Auditor];

pub fn spec_routes() -> Vec<(String, String, bool)> {
    let spec: serde_json::Value = serde_json::from_str(&tessera::api::openapi::spec_json()).unwrap();
    let mut routes = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let secured = operation.get("security").is_some_and(|s| !s.as_array().unwrap().is_empty());
            routes.push((method.to_uppercase(), path.clone(), secured));
        }
    }
    routes
}

pub fn fill(path: &str, tenant: &str) -> String {
    path.replace("{tenant}", tenant)
        .replace("{user_id}", &uuid::Uuid::new_v4().to_string())
        .replace("{key_id}", &uuid::Uuid::new_v4().to_string())
        .replace("{invitation_id}", &uuid::Uuid::new_v4().to_string())
        .replace("{name}", "no-such-model")
        .replace("{model}", "no-such-model")
        .replace("{alias}", "production")
        .replace("{version}", "1")
        .replace("{id}", &uuid::Uuid::new_v4().to_string())
}

#[tokio::test]
async fn every_route_enforces_its_permission_for_every_role() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let expected: HashMap<(&str, &str), &Rule> = EXPECTED.iter().map(|(m, p, r)| ((*m, *p), r)).collect();

    let mut failures = Vec::new();
    for (method, path, secured) in spec_routes() {
        let Some(rule) = expected.get(&(method.as_str(), path.as_str())) else {
            failures.push(format!("{method} {path} is not in the authorization matrix (tests/api/authz_matrix.rs)"));
            continue;
        };
        if secured == matches!(rule, Rule::Public) {
            failures.push(format!("{method} {path}: the OpenAPI security declaration disagrees with the matrix"));
        }
        for who in As::ALL {
            let token = app.credential(who, &acme, &admin).await;
            let body = matches!(method.as_str(), "POST" | "PATCH" | "PUT").then(|| serde_json::json!({}));
            let status = app.call(&method, &fill(&path, &acme.slug), token.as_deref(), body).await.status().as_u16();
            if path.ends_with("/suspend") && status == 200 {
                app.call("POST", "/v1/tenants/acme/resume", Some(&admin), None).await;
            }
            let allowed = match rule {
                Rule::Public => true,
                Rule::Any => who != Anonymous,
                Rule::Only(roles) => roles.contains(&who),
            };
            let ok = if allowed {
                // A public route's 401 judges the credential its body carries (a refresh
                // token), not the caller's permission.
                (status != 401 || matches!(rule, Rule::Public)) && status != 403
            } else if who == Anonymous {
                status == 401
            } else {
                status == 403
            };
            if !ok {
                failures.push(format!("{method} {path} as {who:?}: got {status}, allowed = {allowed}"));
            }
        }
    }
    assert!(failures.is_empty(), "authorization matrix violations:\n{}", failures.join("\n"));
}
