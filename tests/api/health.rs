use crate::helpers::{Outage, assert_problem, db_host_port, eventually, redis_host_port, spawn_app, spawn_app_with};

#[tokio::test]
async fn healthz_answers_200_without_touching_dependencies() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn readyz_answers_200_when_postgres_and_redis_answer() {
    let app = spawn_app().await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["redis"], "ok");
}

async fn ready(app: &crate::helpers::TestApp) -> u16 {
    app.get("/readyz").await.status().as_u16()
}

/// Redis down leaves the pod serving, so readiness stays 200 and says what is degraded: a
/// Service would otherwise take every pod out of rotation at once.
#[tokio::test]
async fn readyz_stays_ready_but_degraded_while_redis_is_down() {
    let mut redis = Outage::start(&redis_host_port()).await;
    let port = redis.port;
    let app = spawn_app_with(|s| s.redis.url = format!("redis://127.0.0.1:{port}")).await;
    assert_eq!(ready(&app).await, 200);
    assert!(app.metrics_text().await.contains(r#"tessera_dependency_up{dependency="redis"} 1"#));

    redis.cut();
    let response = app.get("/readyz").await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "degraded", "{body}");
    assert_ne!(body["checks"]["redis"], "ok");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["degraded"], serde_json::json!(["redis"]), "only the name: what is off is not for anonymous callers");
    let metrics = app.metrics_text().await;
    assert!(metrics.contains(r#"tessera_dependency_up{dependency="redis"} 0"#), "{metrics}");
    assert!(metrics.contains(r#"tessera_dependency_up{dependency="postgres"} 1"#), "{metrics}");
    assert_eq!(app.get("/healthz").await.status(), 200, "liveness must not depend on Redis");

    redis.restore().await;
    let recovered = eventually(10, || async {
        let body: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
        body["status"] == "ready" && body["degraded"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    assert!(recovered, "readiness did not report ready after Redis came back");
}

#[tokio::test]
async fn readyz_names_postgres_while_it_is_down_and_recovers_without_restart() {
    let mut postgres = Outage::start(&db_host_port()).await;
    let port = postgres.port;
    let app = spawn_app_with(|s| {
        let mut url = url::Url::parse(&s.database.url).unwrap();
        url.set_port(Some(port)).unwrap();
        s.database.url = url.to_string();
    })
    .await;
    assert_eq!(ready(&app).await, 200);

    postgres.cut();
    let response = app.get("/readyz").await;
    let body = assert_problem(response, 503, "service_unavailable").await;
    assert!(body["detail"].as_str().unwrap().contains("postgres"), "{body}");
    assert_eq!(body["checks"]["redis"], "ok");
    assert!(app.metrics_text().await.contains(r#"tessera_dependency_up{dependency="postgres"} 0"#));
    assert_eq!(app.get("/healthz").await.status(), 200, "liveness must not depend on Postgres");

    postgres.restore().await;
    assert!(eventually(10, || async { ready(&app).await == 200 }).await, "readyz did not recover after Postgres came back");
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_report_build_info() {
    let app = spawn_app().await;
    app.get("/healthz").await;
    app.get("/no/such/route").await;
    let response = app.client.get(app.metrics_url()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains(r#"tessera_http_requests_total{method="GET",route="/healthz",status="200"} 1"#), "{text}");
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(text.contains("tessera_http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("tessera_build_info"), "{text}");
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/healthz")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");

    let response = app.get("/healthz").await;
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok_and(|id| id.get_version_num() == 7), "{generated}");

    let response = app.client.get(app.url("/healthz")).header("x-request-id", "bad id with spaces").send().await.unwrap();
    assert_ne!(response.headers()["x-request-id"], "bad id with spaces");
}

/// Responses are compressed as the client asks (gzip, zstd), streamed ones included; an
/// inference answer goes out as it is.
#[tokio::test]
async fn responses_are_compressed_as_the_client_accepts() {
    use std::io::Read;
    let app = spawn_app().await;
    let plain = app.client.get(app.url("/openapi.json")).send().await.unwrap().bytes().await.unwrap();
    for (encoding, decode) in [
        ("gzip", &(|b: &[u8]| {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(b).read_to_end(&mut out).unwrap();
            out
        }) as &dyn Fn(&[u8]) -> Vec<u8>),
        ("zstd", &|b: &[u8]| zstd::decode_all(b).unwrap()),
    ] {
        let response =
            app.client.get(app.url("/openapi.json")).header("accept-encoding", encoding).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-encoding"], encoding);
        let body = response.bytes().await.unwrap();
        assert!(body.len() * 4 < plain.len(), "{encoding}: {} of {} bytes", body.len(), plain.len());
        assert_eq!(decode(&body), plain.to_vec(), "{encoding} decodes to the document");
    }
    let identity = app.client.get(app.url("/openapi.json")).send().await.unwrap();
    assert!(identity.headers().get("content-encoding").is_none());
}
