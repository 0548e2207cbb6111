//! 5. Metrics are for operators: the public port reveals nothing about tenants.

use crate::helpers::{assert_problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn attack_05_the_public_port_serves_no_metrics() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    app.tenant_with_members(&root, "acme").await;
    let tenant_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE slug = 'acme'").fetch_one(&app.db).await.unwrap();

    let public = app.get("/metrics").await;
    assert_problem(public, 404, "route_not_found").await;

    // The operators' listener has them, tenant ids included.
    let text = app.client.get(app.metrics_url()).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("tessera_http_requests_total"), "{text}");
    assert!(text.contains("tessera_build_info"), "{text}");
    let _ = tenant_id;
}

#[tokio::test]
async fn attack_05_a_configured_metrics_token_is_required_on_the_metrics_listener() {
    let app = spawn_app_with(|s| {
        s.telemetry.metrics_token = Some(secrecy::SecretString::from("scrape-token-0123456789abcdef"));
    })
    .await;
    let anonymous = app.client.get(app.metrics_url()).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = app.client.get(app.metrics_url()).bearer_auth("scrape-token-0123456789abcdeX").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right = app.client.get(app.metrics_url()).bearer_auth("scrape-token-0123456789abcdef").send().await.unwrap();
    assert_eq!(right.status(), 200);
    assert!(right.text().await.unwrap().contains("tessera_build_info"));
}
