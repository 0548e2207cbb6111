//! Tenants' limits, as platform administrators change them.

use serde_json::json;

use crate::helpers::{As, assert_problem, spawn_app};

#[tokio::test]
async fn platform_admins_change_quotas_and_the_new_ones_hold_at_once() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;

    let response = app.call("PATCH", "/v1/tenants/acme", Some(&admin), Some(json!({ "max_models": 1, "rate_limit_burst": 50 }))).await;
    assert_eq!(response.status(), 200);
    let view: serde_json::Value = response.json().await.unwrap();
    assert_eq!((view["max_models"].as_i64(), view["rate_limit_burst"].as_i64()), (Some(1), Some(50)));
    assert_eq!(view["rate_limit_per_second"], 1000, "fields left out keep their values");

    let owner = app.credential(As::Owner, &acme, &admin).await.unwrap();
    let first = app.post_json("/v1/tenants/acme/models", Some(&owner), &json!({ "name": "one", "framework": "onnx" })).await;
    assert_eq!(first.status(), 201);
    let second = app.post_json("/v1/tenants/acme/models", Some(&owner), &json!({ "name": "two", "framework": "onnx" })).await;
    assert_problem(second, 403, "quota_exceeded").await;

    let events: serde_json::Value =
        app.get_as("/v1/tenants/acme/audit/events?action=tenant.limits_changed", &owner).await.json().await.unwrap();
    assert_eq!(events["items"][0]["details"], json!({ "max_models": 1, "rate_limit_burst": 50 }));
}

#[tokio::test]
async fn limits_are_refused_to_tenants_and_out_of_range_values() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let owner = app.credential(As::Owner, &acme, &admin).await.unwrap();
    let raise = app.call("PATCH", "/v1/tenants/acme", Some(&owner), Some(json!({ "max_models": 100000 }))).await;
    assert_problem(raise, 403, "forbidden").await;
    for body in [json!({ "max_models": -1 }), json!({ "rate_limit_per_second": 0 }), json!({ "max_storage_bytes": -5 })] {
        let response = app.call("PATCH", "/v1/tenants/acme", Some(&admin), Some(body.clone())).await;
        assert_problem(response, 400, "invalid_request").await;
    }
    let unknown = app.call("PATCH", "/v1/tenants/acme", Some(&admin), Some(json!({ "status": "active" }))).await;
    assert_problem(unknown, 400, "invalid_request").await;
    let missing = app.call("PATCH", "/v1/tenants/nowhere", Some(&admin), Some(json!({}))).await;
    assert_problem(missing, 404, "not_found").await;
}
