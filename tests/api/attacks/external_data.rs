//! 10. A model cannot make Tessera read the server's files through ONNX external data.

use serde_json::json;

use crate::helpers::{As, spawn_app};
use crate::onnx_builder::{field_bytes as fb, field_varint as fv};

/// A `Constant` node whose FP32 value lives "in" `location`, feeding output `y` ([4]);
/// `data_location` as given (1 is EXTERNAL, and so is 2^32 + 1 to a 32-bit reader).
fn constant_model(location: &str, in_subgraph: bool, data_location: u64) -> Vec<u8> {
    let external = [fb(1, b"location"), fb(2, location.as_bytes())].concat();
    let tensor = [fv(1, 4), fv(2, 1), fb(8, b"c"), fb(13, &external), fv(14, data_location)].concat();
    let attribute = [fb(1, b"value"), fb(5, &tensor), fv(20, 4)].concat();
    let constant = [fb(2, b"y"), fb(4, b"Constant"), fb(5, &attribute)].concat();
    let node = if in_subgraph {
        // An `If` whose branch holds the constant.
        let branch = [fb(1, &constant), fb(2, b"branch"), fb(12, &value_info("y"))].concat();
        let then_branch = [fb(1, b"then_branch"), fb(6, &branch), fv(20, 5)].concat();
        let else_branch = [fb(1, b"else_branch"), fb(6, &branch), fv(20, 5)].concat();
        [fb(1, b"cond"), fb(2, b"y"), fb(4, b"If"), fb(5, &then_branch), fb(5, &else_branch)].concat()
    } else {
        constant
    };
    let graph = [fb(1, &node), fb(2, b"g"), fb(12, &value_info("y"))].concat();
    let opset = [fb(1, b""), fv(2, 17)].concat();
    [fv(1, 8), fb(2, b"attacker"), fb(7, &graph), fb(8, &opset)].concat()
}

fn value_info(name: &str) -> Vec<u8> {
    let dim = fb(1, &fv(1, 4));
    let tensor = [fv(1, 1), fb(2, &dim)].concat();
    [fb(1, name.as_bytes()), fb(2, &fb(1, &tensor))].concat()
}

#[tokio::test]
async fn attack_10_models_pointing_at_server_files_are_refused_at_upload() {
    let app = spawn_app().await;
    let root = app.platform_admin().await;
    let acme = app.tenant_with_members(&root, "acme").await;
    let engineer = app.credential(As::MlEngineer, &acme, &root).await.unwrap();
    let created = app.post_json("/v1/tenants/acme/models", Some(&engineer), &json!({ "name": "reader", "framework": "onnx" })).await;
    assert_eq!(created.status(), 201);

    let cases = [
        ("/etc/passwd", false, 1),
        ("../../../../etc/passwd", false, 1),
        ("/etc/passwd", true, 1),
        ("/etc/passwd", false, (1 << 32) + 1),
        ("/etc/passwd", false, 0),
    ];
    for (location, nested, data_location) in cases {
        let response = app
            .client
            .post(app.url("/v1/tenants/acme/models/reader/versions"))
            .bearer_auth(&engineer)
            .header("content-type", "application/octet-stream")
            .body(constant_model(location, nested, data_location))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(status, 422, "{location} (nested: {nested}, data_location: {data_location}): {body}");
        assert_eq!(body["code"], "invalid_model");
        assert!(body["detail"].as_str().unwrap().contains("external file"), "{body}");
    }
    // Nothing was stored: no version row, no ciphertext.
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions").fetch_one(&app.db).await.unwrap();
    assert_eq!(versions, 0);
    let stored = std::fs::read_dir(&app.database.artifact_dir).map(|d| d.count()).unwrap_or(0);
    let stored_files = walk(&app.database.artifact_dir);
    assert_eq!(stored_files, 0, "{stored} entries, {stored_files} files under the artifact store");
}

fn walk(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 })
        .sum()
}

#[test]
fn attack_10_the_engine_refuses_such_a_model_even_if_it_was_stored() {
    let path = std::env::var("ORT_DYLIB_PATH")
        .unwrap_or_else(|_| "/var/tmp/onnxruntime-1.31.1/onnxruntime/capi/libonnxruntime.so.1.31.1".to_owned());
    let runtime = tessera::inference::engine::OnnxRuntime::load(Some(std::path::Path::new(&path))).unwrap();
    let error = runtime.session(&constant_model("/etc/passwd", false, (1 << 32) + 1), 1).err().expect("refused");
    assert!(error.contains("external file"), "{error}");
}
