//! 9. One tenant cannot starve the others: threads, cache lifetime and storage are capped
//! by the platform, and the storage quota is held from the start of an upload.

use serde_json::json;

use crate::helpers::{As, TestApp, spawn_app_with};

async fn create(app: &TestApp, token: &str, name: &str, serving: serde_json::Value) -> reqwest::Response {
    let body = json!({ "name": name, "framework": "onnx", "deterministic": true, "serving": serving });
    app.post_json("/v1/tenants/acme/models", Some(token), &body).await
}

#[tokio::test]
async fn attack_09_serving_settings_beyond_the_platform_caps_are_refused() {
    let app = spawn_app_with(|s| {
        s.inference.tenant_max_threads = 4;
        s.inference.max_cache_ttl_seconds = 3600;
    })
    .await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let engineer = app.credential(As::MlEngineer, &acme, &root).await.unwrap();
    let greedy = create(&app, &engineer, "greedy", json!({ "instances": 64, "intra_op_threads": 1 })).await;
    assert_eq!(greedy.status(), 422, "{}", greedy.text().await.unwrap());
    let threads = create(&app, &engineer, "threads", json!({ "instances": 2, "intra_op_threads": 4 })).await;
    assert_eq!(threads.status(), 422);
    let forever = create(&app, &engineer, "forever", json!({ "cache_ttl_seconds": 30 * 24 * 3600 })).await;
    assert_eq!(forever.status(), 422);
    assert_eq!(create(&app, &engineer, "fair", json!({ "instances": 2, "intra_op_threads": 2 })).await.status(), 201);
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM models ORDER BY name").fetch_all(&app.db).await.unwrap();
    assert_eq!(names, ["fair"]);
}

#[tokio::test]
async fn attack_09_a_tenants_loaded_models_stay_within_its_thread_cap() {
    let app = spawn_app_with(|s| s.inference.tenant_max_threads = 4).await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let engineer = app.credential(As::MlEngineer, &acme, &root).await.unwrap();
    let model = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/add_fp32.onnx")).unwrap();
    for name in ["a", "b", "c"] {
        assert_eq!(create(&app, &engineer, name, json!({ "instances": 2 })).await.status(), 201);
        let url = app.url(&format!("/v1/tenants/acme/models/{name}/versions"));
        let uploaded = app.client.post(url).bearer_auth(&engineer).header("content-type", "application/octet-stream").body(model.clone()).send().await.unwrap();
        assert_eq!(uploaded.status(), 201, "{}", uploaded.text().await.unwrap());
    }
    let tenant = tessera::tenancy::TenantId(acme.id.parse().unwrap());
    for name in ["a", "b", "c", "a"] {
        let ready = app.get_as(&format!("/v2/models/{name}/ready"), &acme.inference_key).await;
        assert_eq!(ready.status(), 200, "{name}");
        let threads = app.state.inference.models.tenant_threads(tenant);
        assert!(threads <= 4, "{threads} threads loaded for one tenant after {name}");
    }
}

#[tokio::test]
async fn attack_09_the_storage_quota_is_held_from_the_start_of_an_upload() {
    let app = spawn_app_with(|_| {}).await;
    let root = app.platform_admin().await;
    app.create_tenant(&root, "acme", json!({ "max_storage_bytes": 100_000 })).await;
    app.add_member(&root, "acme", "owner@acme.test", "owner").await;
    let owner = app.session("owner@acme.test", Some("acme")).await.0;
    let body = json!({ "name": "big", "framework": "onnx" });
    assert_eq!(app.post_json("/v1/tenants/acme/models", Some(&owner), &body).await.status(), 201);

    // A first upload of a 60 kB model declares its length and stalls halfway.
    let mut model = Vec::new();
    crate::onnx_builder::write_identity_model(&mut model, 59_000, |_, buf| buf.fill(7)).unwrap();
    let total = model.len();
    let rest = model.split_off(30_000);
    let (release, stalled) = tokio::sync::oneshot::channel::<()>();
    let first_half = futures::stream::once(async move { Ok::<_, std::io::Error>(model) });
    let second_half = futures::stream::once(async move {
        let _ = stalled.await;
        Ok::<_, std::io::Error>(rest)
    });
    let url = app.url("/v1/tenants/acme/models/big/versions");
    let first = app
        .client
        .post(&url)
        .bearer_auth(&owner)
        .header("content-type", "application/octet-stream")
        .header("content-length", total.to_string())
        .body(reqwest::Body::wrap_stream(futures::StreamExt::chain(first_half, second_half)))
        .send();
    let first = tokio::spawn(first);
    let held = crate::helpers::eventually(5, || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM storage_reservations").fetch_one(&app.db).await.unwrap() == 1
    })
    .await;
    assert!(held, "the first upload holds its room");

    // A second one that would fit only if the first were not counted is refused at once.
    let second = app
        .client
        .post(&url)
        .bearer_auth(&owner)
        .header("content-type", "application/octet-stream")
        .body(vec![0u8; 60_000])
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 403);
    let problem: serde_json::Value = second.json().await.unwrap();
    assert_eq!(problem["code"], "quota_exceeded");

    let _ = release.send(());
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 201, "{}", first.text().await.unwrap());
    // Its reservation became its row.
    let (left, stored): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM storage_reservations), (SELECT coalesce(sum(size_bytes), 0)::bigint FROM model_versions)",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((left, stored), (0, total as i64));
}
