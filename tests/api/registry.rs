//! The encrypted model registry end to end: upload → list → alias → download, what is stored
//! (ciphertext only), tampering, key rotation, quotas, bad artifacts and tenant isolation.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tessera::audit::AuditActor;
use tessera::request::RequestInfo;
use tessera::crypto::generate_key_entry;
use tessera::error::Code;
use tessera::registry::model::{ModelName, VersionRef};
use tessera::tenancy::TenantId;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};
use crate::onnx_builder::write_identity_model;

const ADD: &[u8] = include_bytes!("../fixtures/models/add_fp32.onnx");
const MARKER_MODEL: &[u8] = include_bytes!("../fixtures/models/marker.onnx");
const MARKER: &[u8] = b"TESSERA-PLAINTEXT-MARKER-0123456789abcdef";

struct Setup {
    app: TestApp,
    admin: String,
    owner: String,
    tenant: TenantId,
}

async fn setup_with(app: TestApp, extra: Value) -> Setup {
    let admin = app.platform_admin().await;
    let t = app.create_tenant(&admin, "acme", extra).await;
    app.add_member(&admin, "acme", "owner@acme.test", "owner").await;
    let owner = app.session("owner@acme.test", Some("acme")).await.0;
    Setup { app, admin, owner, tenant: TenantId(t["id"].as_str().unwrap().parse().unwrap()) }
}

async fn setup() -> Setup {
    setup_with(spawn_app().await, json!({})).await
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A valid ONNX model of about `payload` bytes (several 64 KiB chunks when large).
fn big_model(payload: u64) -> Vec<u8> {
    let mut out = Vec::new();
    write_identity_model(&mut out, payload, |offset, buf| {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = ((offset + i as u64) * 31 % 251) as u8;
        }
    })
    .unwrap();
    out
}

impl Setup {
    async fn create_model(&self, name: &str) -> reqwest::Response {
        let body = json!({ "name": name, "framework": "onnx", "description": "test", "tags": ["t"] });
        self.app.post_json("/v1/tenants/acme/models", Some(&self.owner), &body).await
    }

    async fn upload(&self, model: &str, bytes: Vec<u8>, query: &str) -> reqwest::Response {
        let url = self.app.url(&format!("/v1/tenants/acme/models/{model}/versions{query}"));
        let request = self.app.client.post(url).bearer_auth(&self.owner).header("content-type", "application/octet-stream");
        request.body(bytes).send().await.unwrap()
    }

    /// The same upload with no Content-Length: the server learns the size only by reading.
    async fn upload_chunked(&self, model: &str, bytes: Vec<u8>) -> reqwest::Response {
        let url = self.app.url(&format!("/v1/tenants/acme/models/{model}/versions"));
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(7000).map(|c| Ok(c.to_vec())).collect();
        let body = reqwest::Body::wrap_stream(futures::stream::iter(pieces));
        self.app.client.post(url).bearer_auth(&self.owner).header("content-type", "application/octet-stream").body(body).send().await.unwrap()
    }

    async fn load(&self, model: &str, version: Option<&str>) -> Result<Vec<u8>, tessera::error::ApiError> {
        let version = version.map(|v| VersionRef::parse(v).unwrap());
        let loaded = self
            .app
            .state
            .registry
            .load(AuditActor { kind: "system", id: None }, self.tenant, &ModelName::parse(model).unwrap(), version.as_ref(), &RequestInfo::default())
            .await?;
        Ok(loaded.bytes)
    }

    async fn actions(&self) -> Vec<(String, String)> {
        sqlx::query_as("SELECT action, outcome FROM audit_events WHERE tenant_id = $1 ORDER BY seq")
            .bind(self.tenant.0)
            .fetch_all(&self.app.db)
            .await
            .unwrap()
    }
}

fn stored_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() { stack.push(path) } else { out.push(path) }
        }
    }
    out
}

async fn problem(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(content_type, "application/problem+json", "{body}");
    (status, body["code"].as_str().unwrap().to_owned(), body["detail"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn upload_list_alias_download_round_trip() {
    let s = setup().await;
    assert_eq!(s.create_model("adder").await.status(), 201);
    assert_eq!(problem(s.create_model("adder").await).await.1, "already_exists");

    let response = s.upload("adder", ADD.to_vec(), &format!("?sha256={}", sha256_hex(ADD))).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let v1: Value = response.json().await.unwrap();
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["sha256"], sha256_hex(ADD));
    assert_eq!(v1["size_bytes"], ADD.len());
    assert_eq!(v1["signature"]["inputs"][0], json!({ "name": "x", "datatype": "FP32", "shape": [-1, 4] }));
    assert_eq!(v1["signature"]["outputs"][0]["name"], "z");
    let v2: Value = s.upload("adder", MARKER_MODEL.to_vec(), "").await.json().await.unwrap();
    assert_eq!(v2["version"], 2);

    let models = s.app.items("/v1/tenants/acme/models", &s.owner).await;
    assert_eq!(models[0]["name"], "adder");
    assert_eq!(models[0]["latest_version"], 2);
    let versions = s.app.items("/v1/tenants/acme/models/adder/versions", &s.owner).await;
    assert_eq!(versions.len(), 2);

    let response = s.app.call("PUT", "/v1/tenants/acme/models/adder/aliases/production", Some(&s.owner), Some(json!({ "version": 1 }))).await;
    assert_eq!(response.status(), 200);
    let model: Value = response.json().await.unwrap();
    assert_eq!(model["aliases"]["production"], 1);
    let by_alias: Value = s.app.get_as("/v1/tenants/acme/models/adder/versions/production", &s.owner).await.json().await.unwrap();
    assert_eq!(by_alias["version"], 1);
    assert_eq!(by_alias["aliases"], json!(["production"]));

    let response = s.app.get_as("/v1/tenants/acme/models/adder/versions/production/artifact", &s.owner).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-checksum-sha256"], sha256_hex(ADD).as_str());
    assert_eq!(&response.bytes().await.unwrap()[..], ADD);

    // The alias moves atomically; loading by alias follows it.
    s.app.call("PUT", "/v1/tenants/acme/models/adder/aliases/production", Some(&s.owner), Some(json!({ "version": 2 }))).await;
    assert_eq!(s.load("adder", Some("production")).await.unwrap(), MARKER_MODEL);
    assert_eq!(s.load("adder", None).await.unwrap(), MARKER_MODEL);
    assert_eq!(s.load("adder", Some("1")).await.unwrap(), ADD);

    let actions: Vec<String> = s.actions().await.into_iter().map(|(a, _)| a).collect();
    for expected in ["model.created", "model.version_uploaded", "model.alias_set", "model.version_downloaded", "model.loaded"] {
        assert!(actions.iter().any(|a| a == expected), "no {expected} event in {actions:?}");
    }
    assert_eq!(actions.iter().filter(|a| *a == "model.version_uploaded").count(), 2);
}

#[tokio::test]
async fn the_stored_object_holds_no_window_of_the_plaintext() {
    let s = setup().await;
    s.create_model("marked").await;
    assert_eq!(s.upload("marked", MARKER_MODEL.to_vec(), "").await.status(), 201);
    assert!(MARKER_MODEL.windows(MARKER.len()).any(|w| w == MARKER), "the fixture carries the marker");

    let files = stored_files(&s.app.database.artifact_dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let stored = std::fs::read(&files[0]).unwrap();
    let plaintext_windows: HashSet<&[u8]> = MARKER_MODEL.windows(32).collect();
    assert!(!stored.windows(32).any(|w| plaintext_windows.contains(w)), "a 32-byte window of the plaintext is stored");
    // Names and versions live in Postgres only.
    assert!(!files[0].to_string_lossy().contains("marked"));
}

#[tokio::test]
async fn tampered_objects_refuse_to_load_and_are_audited() {
    let s = setup().await;
    s.create_model("big").await;
    let model = big_model(300_000);
    assert_eq!(s.upload("big", model.clone(), "").await.status(), 201);
    let file = stored_files(&s.app.database.artifact_dir).remove(0);
    let original = std::fs::read(&file).unwrap();
    assert_eq!(s.load("big", None).await.unwrap(), model);

    let sealed = 64 * 1024 + 16;
    let header = 16;
    let mut flipped = original.clone();
    flipped[header + 100] ^= 1;
    let mut swapped = original.clone();
    let (a, b) = (header..header + sealed, header + sealed..header + 2 * sealed);
    let chunk_a = original[a.clone()].to_vec();
    swapped[a].copy_from_slice(&original[b.clone()]);
    swapped[b].copy_from_slice(&chunk_a);
    let truncated = original[..header + 2 * sealed].to_vec();
    let mut shortened_tail = original.clone();
    shortened_tail.truncate(original.len() - 1);

    for (what, bytes) in [("flipped", flipped), ("swapped", swapped), ("truncated", truncated), ("short", shortened_tail)] {
        std::fs::write(&file, &bytes).unwrap();
        let error = s.load("big", None).await.expect_err(what);
        assert_eq!(error.code(), Code::ArtifactIntegrity, "{what}: {error}");
        // A download never hands over a complete-looking wrong file.
        let url = s.app.url("/v1/tenants/acme/models/big/versions/1/artifact");
        match s.app.client.get(url).bearer_auth(&s.owner).send().await {
            Ok(response) if response.status() == 200 => {
                let body = response.bytes().await;
                assert!(body.map(|b| b[..] != model[..]).unwrap_or(true), "{what}: download delivered the artifact");
            }
            Ok(response) => assert_eq!(problem(response).await.1, "artifact_integrity", "{what}"),
            Err(_) => {} // cut mid-transfer
        }
    }
    let failures = s.actions().await.into_iter().filter(|(a, o)| a == "model.load_failed" && o == "failure").count();
    assert_eq!(failures, 4);

    std::fs::write(&file, &original).unwrap();
    assert_eq!(s.load("big", None).await.unwrap(), model);
}

#[tokio::test]
async fn key_rotation_rewraps_and_artifacts_still_load() {
    let m1 = generate_key_entry("m1");
    let m2 = generate_key_entry("m2");
    let first = m1.clone();
    let s = setup_with(spawn_app_with(|c| c.registry.master_keys = first.into()).await, json!({})).await;
    s.create_model("adder").await;
    s.upload("adder", ADD.to_vec(), "").await;
    let file = stored_files(&s.app.database.artifact_dir).remove(0);
    let ciphertext = std::fs::read(&file).unwrap();

    let response = s.app.call("POST", "/v1/tenants/acme/keys/rotate", Some(&s.owner), None).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["rewrapped_data_keys"], 1);
    assert_eq!(std::fs::read(&file).unwrap(), ciphertext, "rotation must not re-encrypt the artifact");
    assert_eq!(s.load("adder", None).await.unwrap(), ADD);
    let keys: Vec<(bool,)> = sqlx::query_as("SELECT retired_at IS NULL FROM tenant_keys ORDER BY created_at").fetch_all(&s.app.db).await.unwrap();
    assert_eq!(keys, vec![(false,), (true,)]);

    // Then the master key: a new one first in the list, rotate, and the old one can go.
    let both = format!("{m2},{m1}");
    let mut settings = s.app.settings.clone();
    settings.registry.master_keys = both.into();
    let rotated = tessera::startup::AppState::new(settings.clone()).unwrap();
    let owner_pool = sqlx::PgPool::connect(&s.app.database.url).await.unwrap();
    rotated.keys.rotate_master(&owner_pool, &rotated.auditor).await.unwrap();
    settings.registry.master_keys = m2.into();
    let only_new = tessera::startup::AppState::new(settings).unwrap();
    let loaded = only_new
        .registry
        .load(AuditActor { kind: "system", id: None }, s.tenant, &ModelName::parse("adder").unwrap(), None, &RequestInfo::default())
        .await
        .unwrap();
    assert_eq!(loaded.bytes, ADD);
    assert!(s.actions().await.iter().any(|(a, _)| a == "keys.tenant_rotated"));
}

#[tokio::test]
async fn bad_artifacts_are_refused_and_nothing_is_stored() {
    let s = setup().await;
    s.create_model("adder").await;
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0".to_vec();
    let cases: Vec<(&str, Vec<u8>, &str, u16, &str)> = vec![
        ("empty", vec![], "", 422, "invalid_model"),
        ("text", b"hello, this is not a model".to_vec(), "", 422, "invalid_model"),
        ("png", png, "", 422, "invalid_model"),
        ("truncated", ADD[..ADD.len() - 10].to_vec(), "", 422, "invalid_model"),
        ("wrong checksum", ADD.to_vec(), "?sha256=00000000000000000000000000000000000000000000000000000000000000ff", 422, "checksum_mismatch"),
        ("bad checksum", ADD.to_vec(), "?sha256=xyz", 400, "invalid_request"),
        ("burn params on onnx", ADD.to_vec(), "?architecture=mlp", 422, "unprocessable"),
    ];
    for (what, bytes, query, status, code) in cases {
        let (got_status, got_code, detail) = problem(s.upload("adder", bytes, query).await).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "{what}: {detail}");
    }
    let response = s.app.client.post(s.app.url("/v1/tenants/acme/models/adder/versions")).bearer_auth(&s.owner).json(&json!({})).send().await.unwrap();
    assert_eq!(problem(response).await.1, "unsupported_media_type");
    assert_eq!(problem(s.upload("nothing-here", ADD.to_vec(), "").await).await.0, 404);

    assert!(stored_files(&s.app.database.artifact_dir).is_empty());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions").fetch_one(&s.app.db).await.unwrap();
    assert_eq!(rows, 0);
    let rejected = s.actions().await.into_iter().filter(|(a, _)| a == "model.version_upload_rejected").count();
    // The malformed checksum never reached the registry: it is a request error, not an upload.
    assert_eq!(rejected, 6);
}

#[tokio::test]
async fn quotas_are_enforced_before_anything_is_stored() {
    let s = setup_with(spawn_app().await, json!({ "max_storage_bytes": 5000, "max_models": 2 })).await;
    s.create_model("a").await;
    s.create_model("b").await;
    assert_eq!(problem(s.create_model("c").await).await.1, "quota_exceeded");

    assert_eq!(s.upload("a", MARKER_MODEL.to_vec(), "").await.status(), 201); // 4258 of 5000 bytes
    let (status, code, _) = problem(s.upload("b", big_model(10_000), "").await).await;
    assert_eq!((status, code.as_str()), (403, "quota_exceeded"));
    // Without Content-Length the server finds out while reading, and still stores nothing.
    let (status, code, _) = problem(s.upload_chunked("b", big_model(10_000)).await).await;
    assert_eq!((status, code.as_str()), (403, "quota_exceeded"));
    assert_eq!(stored_files(&s.app.database.artifact_dir).len(), 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions").fetch_one(&s.app.db).await.unwrap();
    assert_eq!(rows, 1);

    // Deleting frees the quota.
    let response = s.app.call("DELETE", "/v1/tenants/acme/models/a/versions/1", Some(&s.owner), None).await;
    assert_eq!(response.status(), 204);
    // The row stays for the audit trail; the ciphertext goes, so the quota is free for real.
    assert!(stored_files(&s.app.database.artifact_dir).is_empty());
    assert_eq!(s.upload_chunked("b", ADD.to_vec()).await.status(), 201);
}

#[tokio::test]
async fn a_version_behind_an_alias_cannot_be_deleted() {
    let s = setup().await;
    s.create_model("adder").await;
    s.upload("adder", ADD.to_vec(), "").await;
    s.app.call("PUT", "/v1/tenants/acme/models/adder/aliases/production", Some(&s.owner), Some(json!({ "version": 1 }))).await;

    let (status, code, _) = problem(s.app.call("DELETE", "/v1/tenants/acme/models/adder/versions/1", Some(&s.owner), None).await).await;
    assert_eq!((status, code.as_str()), (409, "version_has_alias"));
    let (_, code, _) = problem(s.app.call("DELETE", "/v1/tenants/acme/models/adder", Some(&s.owner), None).await).await;
    assert_eq!(code, "version_has_alias");
    // Not even the database lets it happen behind the service's back.
    let direct = sqlx::query("UPDATE model_versions SET deleted_at = now()").execute(&s.app.db).await;
    assert!(direct.is_err());
    let (status, _, _) = problem(s.app.call("PUT", "/v1/tenants/acme/models/adder/aliases/staging", Some(&s.owner), Some(json!({ "version": 7 }))).await).await;
    assert_eq!(status, 404);

    assert_eq!(s.app.call("DELETE", "/v1/tenants/acme/models/adder/aliases/production", Some(&s.owner), None).await.status(), 204);
    assert_eq!(s.app.call("DELETE", "/v1/tenants/acme/models/adder/versions/1", Some(&s.owner), None).await.status(), 204);
    assert_eq!(s.app.get_as("/v1/tenants/acme/models/adder/versions/1", &s.owner).await.status(), 404);
    assert_eq!(s.load("adder", Some("1")).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(s.app.call("DELETE", "/v1/tenants/acme/models/adder", Some(&s.owner), None).await.status(), 204);
    assert_eq!(s.app.get_as("/v1/tenants/acme/models/adder", &s.owner).await.status(), 404);
    // The name can be used again, and numbering starts afresh for the new model.
    assert_eq!(s.create_model("adder").await.status(), 201);
    let actions: Vec<String> = s.actions().await.into_iter().map(|(a, _)| a).collect();
    for expected in ["model.alias_removed", "model.version_deleted", "model.deleted"] {
        assert!(actions.iter().any(|a| a == expected), "no {expected} in {actions:?}");
    }
}

#[tokio::test]
async fn concurrent_uploads_get_distinct_versions() {
    let s = setup().await;
    s.create_model("adder").await;
    let uploads = (0..6).map(|_| s.upload("adder", ADD.to_vec(), ""));
    let mut versions: Vec<i64> = Vec::new();
    for response in futures::future::join_all(uploads).await {
        assert_eq!(response.status(), 201);
        versions.push(response.json::<Value>().await.unwrap()["version"].as_i64().unwrap());
    }
    versions.sort();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn another_tenant_sees_none_of_it() {
    let s = setup().await;
    s.create_model("secret-model").await;
    s.upload("secret-model", ADD.to_vec(), "").await;
    s.app.create_tenant(&s.admin, "globex", json!({})).await;
    s.app.add_member(&s.admin, "globex", "owner@globex.test", "owner").await;
    let globex = s.app.session("owner@globex.test", Some("globex")).await.0;

    for (method, path) in [
        ("GET", "/v1/tenants/acme/models"),
        ("GET", "/v1/tenants/acme/models/secret-model"),
        ("GET", "/v1/tenants/acme/models/secret-model/versions/1"),
        ("GET", "/v1/tenants/acme/models/secret-model/versions/1/artifact"),
        ("DELETE", "/v1/tenants/acme/models/secret-model/versions/1"),
        ("POST", "/v1/tenants/acme/keys/rotate"),
        // In its own tenant the name means nothing.
        ("GET", "/v1/tenants/globex/models/secret-model"),
        ("GET", "/v1/tenants/globex/models/secret-model/versions/1/artifact"),
    ] {
        let response = s.app.call(method, path, Some(&globex), None).await;
        assert_eq!(response.status(), 404, "{method} {path}");
    }
    let listed: Value = s.app.get_as("/v1/tenants/globex/models", &globex).await.json().await.unwrap();
    assert_eq!(listed, json!({ "items": [] }));
    let response = s.app.client.post(s.app.url("/v1/tenants/acme/models/secret-model/versions")).bearer_auth(&globex)
        .header("content-type", "application/octet-stream").body(ADD.to_vec()).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions").fetch_one(&s.app.db).await.unwrap();
    assert_eq!(versions, 1);
}
