use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn unknown_routes_answer_404_problem_json() {
    let app = spawn_app().await;
    let body = assert_problem(app.get("/v1/nothing-here").await, 404, "route_not_found").await;
    assert!(body["detail"].as_str().unwrap().contains("/v1/nothing-here"));
}

#[tokio::test]
async fn wrong_methods_answer_405_problem_json() {
    let app = spawn_app().await;
    let response = app.client.post(app.url("/healthz")).body("{bad").send().await.unwrap();
    assert_eq!(response.headers()["allow"], "GET");
    assert_problem(response, 405, "method_not_allowed").await;
    let response = app.client.delete(app.url("/readyz")).send().await.unwrap();
    assert_problem(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn docs_render_from_the_local_server_alone() {
    let app = spawn_app().await;
    let page = app.get("/docs/").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(!html.contains("https://"), "the docs page must not load anything from the internet");
    for asset in ["/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js", "/docs/swagger-initializer.js"] {
        let response = app.get(asset).await;
        assert_eq!(response.status(), 200, "{asset}");
    }
    let initializer = app.get("/docs/swagger-initializer.js").await.text().await.unwrap();
    assert!(initializer.contains("/openapi.json"), "{initializer}");
    let spec: serde_json::Value = app.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
}

/// What the document says of a tenant's fields is what the server holds to: a name is up to
/// 200 characters (not bytes), and out-of-range limits are refused with `invalid_request`.
#[tokio::test]
async fn tenant_fields_are_checked_as_documented() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let create = |body: serde_json::Value| {
        let app = &app;
        let admin = admin.clone();
        async move { app.post_json("/v1/tenants", Some(&admin), &body).await }
    };
    let wide = "é".repeat(200);
    assert_eq!(create(serde_json::json!({ "slug": "wide", "name": wide })).await.status(), 201);
    for (field, value) in [("rate_limit_per_second", 0), ("rate_limit_burst", 0), ("max_models", -1), ("max_storage_bytes", -1)] {
        let mut body = serde_json::json!({ "slug": "limits", "name": "Limits" });
        body[field] = value.into();
        assert_problem(create(body).await, 400, "invalid_request").await;
    }
    assert_problem(create(serde_json::json!({ "slug": "blank", "name": "   " })).await, 400, "invalid_request").await;
    assert_problem(create(serde_json::json!({ "slug": "long", "name": "x".repeat(201) })).await, 400, "invalid_request").await;
}

#[tokio::test]
async fn nul_characters_are_refused_wherever_they_come() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    app.create_tenant(&admin, "acme", serde_json::json!({})).await;
    let refused = app.get_as("/v1/tenants/acme/audit/events?actor_id=a%00b", &admin).await;
    assert_problem(refused, 400, "invalid_query").await;
    assert_problem(app.get_as("/v1/tenants/ac%00me/models", &admin).await, 400, "invalid_path").await;
    // Routing decodes a path once and path parameters are decoded once more, so these are NULs
    // by the time a handler sees them (a model name that would reach the audit log).
    for path in ["/v2/models/a%%300b/infer", "/v2/models/a%0%30b/infer", "/v2/models/a%%30%30b/infer", "/v2/models/m/versions/1%%300/infer"] {
        let response = app.client.post(app.url(path)).bearer_auth(&admin).json(&serde_json::json!({ "inputs": [] })).send().await.unwrap();
        assert_problem(response, 400, "invalid_path").await;
    }
    let body = serde_json::json!({ "name": "key\u{0}", "role": "inference" });
    assert_problem(app.post_json("/v1/tenants/acme/api-keys", Some(&admin), &body).await, 400, "invalid_request").await;
    let body = serde_json::json!({ "email": "a\u{0}@example.com" });
    assert_problem(app.post_json("/v1/password-resets", Some(&admin), &body).await, 400, "invalid_request").await;
}
