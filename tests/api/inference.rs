//! The Open Inference Protocol end to end: JSON and binary tensors, versions and aliases,
//! validation before work, tenant scoping, the result cache (and Redis going away),
//! backpressure, deadlines, dynamic batching, auditing, and the unmodified Triton client.

use serde_json::{Value, json};

use crate::helpers::{Outage, TestApp, redis_url, spawn_app, spawn_app_with};

const ADD: &[u8] = include_bytes!("../fixtures/models/add_fp32.onnx");
const MARKER_MODEL: &[u8] = include_bytes!("../fixtures/models/marker.onnx");
const MLP: &[u8] = include_bytes!("../fixtures/models/mlp_fp32.onnx");
const DTYPES: &[u8] = include_bytes!("../fixtures/models/dtypes.onnx");
const SLOW: &[u8] = include_bytes!("../fixtures/models/slow_fp32.onnx");

struct Tenant {
    slug: String,
    owner: String,
    /// An API key with the inference role.
    key: String,
}

async fn tenant(app: &TestApp, admin: &str, slug: &str) -> Tenant {
    app.create_tenant(admin, slug, json!({})).await;
    app.add_member(admin, slug, &format!("owner@{slug}.test"), "owner").await;
    let owner = app.session(&format!("owner@{slug}.test"), Some(slug)).await.0;
    let key = app.create_api_key(&owner, slug, "inference").await["secret"].as_str().unwrap().to_owned();
    Tenant { slug: slug.to_owned(), owner, key }
}

impl Tenant {
    async fn model(&self, app: &TestApp, name: &str, bytes: &[u8], extra: Value) {
        let mut body = json!({ "name": name, "framework": "onnx" });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let response = app.post_json(&format!("/v1/tenants/{}/models", self.slug), Some(&self.owner), &body).await;
        assert!(response.status() == 201 || response.status() == 409);
        self.upload(app, name, bytes).await;
    }

    async fn upload(&self, app: &TestApp, name: &str, bytes: &[u8]) -> Value {
        let url = app.url(&format!("/v1/tenants/{}/models/{name}/versions", self.slug));
        let response = app.client.post(url).bearer_auth(&self.owner).header("content-type", "application/octet-stream").body(bytes.to_vec()).send().await.unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }

    async fn alias(&self, app: &TestApp, name: &str, alias: &str, version: i64) {
        let path = format!("/v1/tenants/{}/models/{name}/aliases/{alias}", self.slug);
        assert_eq!(app.call("PUT", &path, Some(&self.owner), Some(json!({ "version": version }))).await.status(), 200);
    }
}

fn add_request(rows: usize, offset: f32) -> Value {
    let x: Vec<f32> = (0..rows * 4).map(|i| i as f32 + offset).collect();
    let y: Vec<f32> = vec![0.5; rows * 4];
    json!({ "id": "r1", "inputs": [
        { "name": "x", "shape": [rows, 4], "datatype": "FP32", "data": x },
        { "name": "y", "shape": [rows, 4], "datatype": "FP32", "data": y },
    ]})
}

async fn infer(app: &TestApp, token: &str, path: &str, body: &Value) -> reqwest::Response {
    app.client.post(app.url(path)).bearer_auth(token).json(body).send().await.unwrap()
}

async fn problem(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], body["detail"], "OIP clients read `error`: {body}");
    (status, body["code"].as_str().unwrap_or_default().to_owned(), body["error"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn json_and_binary_inference_by_version_and_alias() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.model(&app, "adder", ADD, json!({})).await;
    acme.alias(&app, "adder", "production", 1).await;

    for path in ["/v2/models/adder/infer", "/v2/models/adder/versions/1/infer", "/v2/models/adder/versions/production/infer"] {
        let response = infer(&app, &acme.key, path, &add_request(2, 0.0)).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["tessera-cache"], "bypass");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["model_name"], "adder");
        assert_eq!(body["model_version"], "1");
        assert_eq!(body["id"], "r1");
        assert_eq!(body["outputs"][0]["name"], "z");
        assert_eq!(body["outputs"][0]["datatype"], "FP32");
        assert_eq!(body["outputs"][0]["shape"], json!([2, 4]));
        let z: Vec<f64> = serde_json::from_value(body["outputs"][0]["data"].clone()).unwrap();
        assert_eq!(z, (0..8).map(|i| i as f64 + 0.5).collect::<Vec<_>>());
    }

    // The binary tensor data extension, both ways.
    let x: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0];
    let header = json!({ "inputs": [
        { "name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": { "binary_data_size": 16 } },
        { "name": "y", "shape": [1, 4], "datatype": "FP32", "parameters": { "binary_data_size": 16 } },
    ], "outputs": [{ "name": "z", "parameters": { "binary_data": true } }] })
    .to_string();
    let tensors: Vec<u8> = x.iter().chain(x.iter()).flat_map(|v| v.to_le_bytes()).collect();
    let response = app.infer_binary(&acme.key, "/v2/models/adder/infer", &header, &tensors).await;
    assert_eq!(response.status(), 200);
    let json_len: usize = response.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let bytes = response.bytes().await.unwrap();
    let meta: Value = serde_json::from_slice(&bytes[..json_len]).unwrap();
    assert_eq!(meta["outputs"][0]["parameters"]["binary_data_size"], 16);
    let z: Vec<f32> = bytes[json_len..].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(z, vec![2.0, 4.0, 6.0, 8.0]);

    // Model metadata and readiness.
    let meta: Value = app.get_as("/v2/models/adder", &acme.key).await.json().await.unwrap();
    assert_eq!(meta["inputs"][0], json!({ "name": "x", "datatype": "FP32", "shape": [-1, 4] }));
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(app.get_as("/v2/models/adder/versions/production/ready", &acme.key).await.status(), 200);
    assert_eq!(app.client.get(app.url("/v2/health/ready")).send().await.unwrap().status(), 200);
    assert_eq!(app.client.get(app.url("/v2")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn every_datatype_round_trips_as_json() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.model(&app, "dtypes", DTYPES, json!({})).await;
    let inputs = json!([
        { "name": "in_int64", "shape": [1, 2], "datatype": "INT64", "data": [[-9007199254740993i64, 5]] },
        { "name": "in_int32", "shape": [2], "datatype": "INT32", "data": [-2147483648i64, 2147483647] },
        { "name": "in_bool", "shape": [1, 3], "datatype": "BOOL", "data": [true, false, true] },
        { "name": "in_fp64", "shape": [2], "datatype": "FP64", "data": [1.0e300, -0.125] },
        { "name": "in_uint8", "shape": [1, 5], "datatype": "UINT8", "data": [0, 1, 2, 254, 255] },
        { "name": "in_fp16", "shape": [1, 2], "datatype": "FP16", "data": [0.5, -1024.0] },
        { "name": "in_int8", "shape": [2], "datatype": "INT8", "data": [-128, 127] },
        { "name": "in_string", "shape": [2], "datatype": "BYTES", "data": ["tessera", "café"] },
    ]);
    let response = infer(&app, &acme.key, "/v2/models/dtypes/infer", &json!({ "inputs": inputs })).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let body: Value = response.json().await.unwrap();
    for input in inputs.as_array().unwrap() {
        let name = input["name"].as_str().unwrap().replace("in_", "out_");
        let output = body["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name.as_str()).unwrap();
        assert_eq!(output["datatype"], input["datatype"], "{name}");
        let flat: Vec<Value> = match &input["data"] {
            Value::Array(a) => a.iter().flat_map(|v| v.as_array().cloned().unwrap_or_else(|| vec![v.clone()])).collect(),
            _ => unreachable!(),
        };
        assert_eq!(output["data"], Value::Array(flat), "{name}");
    }
}

#[tokio::test]
async fn a_string_tensor_that_is_not_utf8_is_refused_before_any_run() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.model(&app, "dtypes", DTYPES, json!({})).await;
    // Binary BYTES elements (a length, then the bytes) may hold anything: here "ok" and 0xFF.
    let strings: &[u8] = &[2, 0, 0, 0, b'o', b'k', 1, 0, 0, 0, 0xff];
    let header = json!({ "inputs": [
        { "name": "in_int64", "shape": [1, 2], "datatype": "INT64", "data": [1, 2] },
        { "name": "in_int32", "shape": [2], "datatype": "INT32", "data": [1, 2] },
        { "name": "in_bool", "shape": [1, 3], "datatype": "BOOL", "data": [true, false, true] },
        { "name": "in_fp64", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0] },
        { "name": "in_uint8", "shape": [1, 5], "datatype": "UINT8", "data": [0, 1, 2, 3, 4] },
        { "name": "in_fp16", "shape": [1, 2], "datatype": "FP16", "data": [0.5, 1.0] },
        { "name": "in_int8", "shape": [2], "datatype": "INT8", "data": [1, 2] },
        { "name": "in_string", "shape": [2], "datatype": "BYTES", "parameters": { "binary_data_size": strings.len() } },
    ] })
    .to_string();
    let response = app.infer_binary(&acme.key, "/v2/models/dtypes/infer", &header, strings).await;
    let (status, code, error) = problem(response).await;
    assert_eq!((status, code.as_str()), (422, "invalid_input"), "{error}");
    assert!(error.contains("input 'in_string': element 1 is not UTF-8"), "{error}");
}

#[tokio::test]
async fn inputs_are_checked_before_any_work() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.model(&app, "adder", ADD, json!({})).await;
    let x = |shape: Value, datatype: &str, data: Value| json!({ "name": "x", "shape": shape, "datatype": datatype, "data": data });
    let y = json!({ "name": "y", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0] });
    let cases = [
        (json!({ "inputs": [x(json!([1, 4]), "INT32", json!([1, 2, 3, 4])), y.clone()] }), "input 'x': datatype INT32"),
        (json!({ "inputs": [x(json!([1, 5]), "FP32", json!([1, 2, 3, 4, 5])), y.clone()] }), "input 'x': shape [1, 5]"),
        (json!({ "inputs": [x(json!([1, 4]), "FP32", json!([1, 2, 3])), y.clone()] }), "input 'x'"),
        (json!({ "inputs": [x(json!([1, 4]), "FP32", json!([1, 2, 3, 4]))] }), "input 'y' is missing"),
        (json!({ "inputs": [x(json!([1, 4]), "FP32", json!([1, 2, 3, 4])), y.clone(), json!({ "name": "w", "shape": [1], "datatype": "FP32", "data": [1] })] }), "unknown input 'w'"),
        (json!({ "inputs": [x(json!([1, 4]), "FP32", json!([1, 2, 3, 4])), y.clone()], "outputs": [{ "name": "nope" }] }), "unknown output 'nope'"),
        (json!({ "inputs": [x(json!([1, 4]), "FP32", json!([1, 2, "a", 4])), y.clone()] }), "input 'x'"),
        (json!({ "inputs": [x(json!([1, 4]), "FP99", json!([1, 2, 3, 4])), y.clone()] }), "input 'x'"),
        (json!({ "inputs": "nope" }), ""),
    ];
    for (body, expected) in cases {
        let (status, code, error) = problem(infer(&app, &acme.key, "/v2/models/adder/infer", &body).await).await;
        assert_eq!((status, code.as_str()), (422, "invalid_input"), "{body}: {error}");
        assert!(error.contains(expected), "{error:?} should mention {expected:?}");
    }
    let response = app.client.post(app.url("/v2/models/adder/infer")).bearer_auth(&acme.key).body("{not json").send().await.unwrap();
    assert_eq!(problem(response).await.0, 400);
    let response = app
        .client
        .post(app.url("/v2/models/adder/infer"))
        .bearer_auth(&acme.key)
        .header("inference-header-content-length", "999")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.0, 400);
    let (status, code, _) = problem(infer(&app, &acme.key, "/v2/models/missing/infer", &add_request(1, 0.0)).await).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
}

#[tokio::test]
async fn models_resolve_in_the_callers_tenant_only() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    let globex = tenant(&app, &admin, "globex").await;
    acme.model(&app, "adder", ADD, json!({})).await;
    for path in ["/v2/models/adder", "/v2/models/adder/ready", "/v2/models/adder/versions/1"] {
        assert_eq!(app.get_as(path, &globex.key).await.status(), 404, "{path}");
    }
    assert_eq!(infer(&app, &globex.key, "/v2/models/adder/infer", &add_request(1, 0.0)).await.status(), 404);
    assert_eq!(app.client.post(app.url("/v2/models/adder/infer")).json(&add_request(1, 0.0)).send().await.unwrap().status(), 401);
    app.add_member(&admin, "acme", "auditor@acme.test", "auditor").await;
    let auditor = app.session("auditor@acme.test", Some("acme")).await.0;
    assert_eq!(infer(&app, &auditor, "/v2/models/adder/infer", &add_request(1, 0.0)).await.status(), 403);
    assert_eq!(infer(&app, &acme.key, "/v2/models/adder/infer", &add_request(1, 0.0)).await.status(), 200);
}

#[tokio::test]
async fn deterministic_models_are_cached_per_version_and_never_stale() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.model(&app, "adder", ADD, json!({ "deterministic": true, "serving": { "cache_ttl_seconds": 60 } })).await;
    let cache = |r: &reqwest::Response| r.headers()["tessera-cache"].to_str().unwrap().to_owned();
    let request = add_request(1, 0.0);
    let first = infer(&app, &acme.key, "/v2/models/adder/infer", &request).await;
    assert_eq!(cache(&first), "miss");
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["parameters"]["cache"], "miss");
    // The store is asynchronous: give it a moment.
    let mut status = String::new();
    for _ in 0..50 {
        let again = infer(&app, &acme.key, "/v2/models/adder/infer", &request).await;
        status = cache(&again);
        if status == "hit" {
            let again: Value = again.json().await.unwrap();
            assert_eq!(again["outputs"], first["outputs"]);
            assert_eq!(again["parameters"]["cache"], "hit");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, "hit");
    let bypass = app.client.post(app.url("/v2/models/adder/infer")).bearer_auth(&acme.key).header("cache-control", "no-cache").json(&request).send().await.unwrap();
    assert_eq!(cache(&bypass), "bypass");
    // Different inputs: a miss.
    assert_eq!(cache(&infer(&app, &acme.key, "/v2/models/adder/infer", &add_request(1, 1.0)).await), "miss");
    // A new version: "latest" resolves to it, and its results are its own.
    acme.upload(&app, "adder", MARKER_MODEL).await;
    let v2 = infer(&app, &acme.key, "/v2/models/adder/infer", &request).await;
    assert_eq!(cache(&v2), "miss");
    assert_eq!(v2.json::<Value>().await.unwrap()["model_version"], "2");
    // Another tenant with the same model and inputs never sees acme's entries.
    let globex = tenant(&app, &admin, "globex").await;
    globex.model(&app, "adder", ADD, json!({ "deterministic": true, "serving": { "cache_ttl_seconds": 60 } })).await;
    assert_eq!(cache(&infer(&app, &globex.key, "/v2/models/adder/infer", &request).await), "miss");
}

/// A result larger than `inference.cache_max_entry_bytes` is served but not cached, so one
/// tenant's large outputs cannot fill the Redis every tenant shares; smaller ones still are.
#[tokio::test]
async fn results_too_large_for_the_cache_are_served_and_not_stored() {
    let app = spawn_app_with(|s| s.inference.cache_max_entry_bytes = 1024).await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.model(&app, "adder", ADD, json!({ "deterministic": true, "serving": { "cache_ttl_seconds": 60 } })).await;
    let cache = |r: &reqwest::Response| r.headers()["tessera-cache"].to_str().unwrap().to_owned();
    // 64 rows of 4 FP32: a 1 KiB output, over the limit once encoded. One row: far under.
    let (large, small) = (add_request(64, 0.0), add_request(1, 0.0));
    let mut statuses = Vec::new();
    for _ in 0..10 {
        for request in [&large, &small] {
            let response = infer(&app, &acme.key, "/v2/models/adder/infer", request).await;
            assert_eq!(response.status(), 200);
            statuses.push(cache(&response));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (large, small): (Vec<_>, Vec<_>) = statuses.chunks(2).map(|pair| (pair[0].clone(), pair[1].clone())).unzip();
    assert!(large.iter().all(|s| s == "miss"), "the large result was cached: {large:?}");
    assert_eq!(small.last().map(String::as_str), Some("hit"), "{small:?}");
}

#[tokio::test]
async fn inference_goes_on_without_redis_and_the_cache_comes_back() {
    let mut proxy = Outage::start(&redis_url().trim_start_matches("redis://").trim_end_matches('/').to_owned()).await;
    let port = proxy.port;
    let app = spawn_app_with(|s| s.redis.url = format!("redis://127.0.0.1:{port}")).await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.model(&app, "adder", ADD, json!({ "deterministic": true, "serving": { "cache_ttl_seconds": 60 } })).await;
    proxy.cut();
    for i in 0..3 {
        let response = infer(&app, &acme.key, "/v2/models/adder/infer", &add_request(1, i as f32)).await;
        assert_eq!(response.status(), 200);
    }
    proxy.restore().await;
    // After the back-off the cache is used again, by itself.
    let mut hit = false;
    for _ in 0..100 {
        let response = infer(&app, &acme.key, "/v2/models/adder/infer", &add_request(1, 42.0)).await;
        assert_eq!(response.status(), 200);
        if response.headers()["tessera-cache"] == "hit" {
            hit = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(hit, "the cache never came back");
}

#[tokio::test]
async fn a_full_queue_answers_at_once_and_deadlines_cancel() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    let serving = json!({ "serving": { "instances": 1, "queue_capacity": 1, "max_batch_size": 1 } });
    acme.model(&app, "slow", SLOW, serving).await;
    let rows = 512;
    let request = json!({ "inputs": [{ "name": "x", "shape": [rows, 128], "datatype": "FP32", "data": vec![0.5f32; rows * 128] }] });
    assert_eq!(infer(&app, &acme.key, "/v2/models/slow/infer", &request).await.status(), 200);
    let calls = (0..12).map(|_| infer(&app, &acme.key, "/v2/models/slow/infer", &request));
    let responses = futures::future::join_all(calls).await;
    let mut overloaded = 0;
    for response in responses {
        match response.status().as_u16() {
            200 => {}
            503 => {
                assert!(response.headers().contains_key("retry-after"));
                assert_eq!(problem(response).await.1, "overloaded");
                overloaded += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(overloaded > 0, "twelve heavy requests at once never filled a queue of one");

    let response = app
        .client
        .post(app.url("/v2/models/slow/infer"))
        .bearer_auth(&acme.key)
        .header("tessera-timeout-ms", "1")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(problem(response).await.1, "deadline_exceeded");
}

#[tokio::test]
async fn dynamic_batching_returns_each_request_its_own_rows() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.model(&app, "solo", MLP, json!({ "serving": { "max_batch_size": 1 } })).await;
    acme.model(&app, "batched", MLP, json!({ "serving": { "max_batch_size": 32, "max_queue_delay_us": 20000, "instances": 1 } })).await;
    let request = |i: usize| {
        let rows = 1 + i % 3;
        let data: Vec<f32> = (0..rows * 8).map(|j| ((i * 31 + j * 7) % 17) as f32 / 4.0 - 2.0).collect();
        json!({ "inputs": [{ "name": "input", "shape": [rows, 8], "datatype": "FP32", "data": data }] })
    };
    let mut expected = Vec::new();
    for i in 0..12 {
        let body: Value = infer(&app, &acme.key, "/v2/models/solo/infer", &request(i)).await.json().await.unwrap();
        expected.push(body["outputs"][0].clone());
    }
    let bodies: Vec<Value> = (0..12).map(request).collect();
    let calls = bodies.iter().map(|b| infer(&app, &acme.key, "/v2/models/batched/infer", b));
    let responses = futures::future::join_all(calls).await;
    for (i, response) in responses.into_iter().enumerate() {
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["outputs"][0], expected[i], "request {i} got another request's rows");
    }
    let metrics = app.metrics_text().await;
    let batched_runs: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tessera_inference_batch_rows_count") && l.contains("model=\"batched\""))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    assert!(batched_runs > 0.0 && batched_runs < 12.0, "12 concurrent requests ran in {batched_runs} engine runs");
}

#[tokio::test]
async fn every_call_is_audited() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.model(&app, "adder", ADD, json!({})).await;
    for i in 0..5 {
        assert_eq!(infer(&app, &acme.key, "/v2/models/adder/infer", &add_request(1, i as f32)).await.status(), 200);
    }
    let bad = json!({ "inputs": [] });
    assert_eq!(infer(&app, &acme.key, "/v2/models/adder/infer", &bad).await.status(), 422);
    app.state.audit_sink.flush().await;
    let records: Vec<Value> =
        sqlx::query_scalar("SELECT details FROM audit_events WHERE action = 'inference.call'").fetch_all(&app.db).await.unwrap();
    let calls: Vec<(String, String)> = records
        .iter()
        .flat_map(tessera::audit::sink::expand_calls)
        .map(|c| (c["outcome"].as_str().unwrap().to_owned(), c["details"]["cache"].as_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(calls.iter().filter(|(o, _)| o == "success").count(), 5, "{calls:?}");
    assert_eq!(calls.iter().filter(|(o, _)| o == "denied").count(), 1, "{calls:?}");
    // Loading the model for serving is itself audited.
    let loaded: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = 'model.loaded'").fetch_one(&app.db).await.unwrap();
    assert_eq!(loaded, 1);
}

/// Where deploy/local/test.sh installed the Triton clients; `None` outside it (never in CI).
fn triton_pythonpath() -> Option<std::ffi::OsString> {
    let path = std::env::var_os("TESSERA_TEST_PYTHONPATH");
    if path.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI must provide tritonclient (deploy/local/test.sh installs it)");
        eprintln!("skipped: TESSERA_TEST_PYTHONPATH is not set (deploy/local/test.sh sets it)");
    }
    path
}

/// Runs `tests/oip/<script>` with `args`; it exits non-zero on the first mismatch.
async fn triton_check(pythonpath: std::ffi::OsString, script: &str, args: Vec<String>) {
    let path = format!("{}/tests/oip/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(path)
            .args(args)
            .env("PYTHONPATH", pythonpath)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
    })
    .await
    .unwrap()
    .expect("python3 runs");
    assert!(
        output.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A tenant serving the Triton checks' models: `adder` (alias `production`) and `dtypes`.
async fn triton_tenant(app: &TestApp, admin: &str) -> Tenant {
    let acme = tenant(app, admin, "acme").await;
    acme.model(app, "adder", ADD, json!({})).await;
    acme.alias(app, "adder", "production", 1).await;
    acme.model(app, "dtypes", DTYPES, json!({})).await;
    acme
}

#[tokio::test]
async fn tritonclient_works_unmodified() {
    let Some(pythonpath) = triton_pythonpath() else { return };
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = triton_tenant(&app, &admin).await;
    triton_check(pythonpath, "tritonclient_check.py", vec![format!("127.0.0.1:{}", app.port), acme.key.clone()]).await;
}

#[tokio::test]
async fn tritonclient_grpc_works_unmodified() {
    let Some(pythonpath) = triton_pythonpath() else { return };
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = triton_tenant(&app, &admin).await;
    app.add_member(&admin, "acme", "auditor@acme.test", "auditor").await;
    let auditor = app.session("auditor@acme.test", Some("acme")).await.0;
    let beta = tenant(&app, &admin, "beta").await;
    beta.model(&app, "secret", ADD, json!({})).await;
    // A tenant allowed one call a second: its burst spent, gRPC refuses as HTTP does.
    app.create_tenant(&admin, "slow", json!({ "rate_limit_per_second": 1, "rate_limit_burst": 2 })).await;
    app.add_member(&admin, "slow", "owner@slow.test", "owner").await;
    let slow_owner = app.session("owner@slow.test", Some("slow")).await.0;
    let slow = app.create_api_key(&slow_owner, "slow", "inference").await["secret"].as_str().unwrap().to_owned();

    let url = format!("127.0.0.1:{}", app.grpc_port.expect("gRPC is on in tests"));
    triton_check(pythonpath, "tritonclient_grpc_check.py", vec![url, acme.key.clone(), beta.key.clone(), auditor, slow]).await;

    // The calls went through the same audit as HTTP: successes and refusals, per tenant.
    app.state.audit_sink.flush().await;
    let records: Vec<Value> =
        sqlx::query_scalar("SELECT details FROM audit_events WHERE action = 'inference.call'").fetch_all(&app.db).await.unwrap();
    let calls: Vec<serde_json::Map<String, Value>> = records.iter().flat_map(tessera::audit::sink::expand_calls).collect();
    let model = |c: &serde_json::Map<String, Value>| c["resource_id"].as_str().unwrap_or_default().to_owned();
    let outcome = |c: &serde_json::Map<String, Value>| c["outcome"].as_str().unwrap_or_default().to_owned();
    assert!(calls.iter().filter(|c| model(c) == "adder" && outcome(c) == "success").count() >= 3, "{calls:#?}");
    assert!(calls.iter().any(|c| model(c) == "adder" && outcome(c) == "denied"), "{calls:#?}");
    assert!(calls.iter().any(|c| model(c) == "secret" && outcome(c) == "success"), "{calls:#?}");
}

/// Opens a call of `method` over raw HTTP/2, sends `prefix` of its message and no more, and
/// returns the call's `grpc-status` and `tessera-error-code`, and how long the answer took.
async fn grpc_half_call(app: &TestApp, method: &str, headers: &[(&str, &str)], prefix: impl Into<bytes::Bytes>) -> (String, String, std::time::Duration) {
    grpc_raw_call(app, method, headers, prefix.into(), false).await
}

/// A call of `method` over raw HTTP/2 that sends `data`, then ends its side of the stream if
/// `end`; returns as `grpc_half_call` does.
async fn grpc_raw_call(app: &TestApp, method: &str, headers: &[(&str, &str)], data: bytes::Bytes, end: bool) -> (String, String, std::time::Duration) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", app.grpc_port.expect("gRPC is on in tests"))).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1/inference.GRPCInferenceService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut client = client.ready().await.unwrap();
    let started = std::time::Instant::now();
    let (response, mut body) = client.send_request(request.body(()).unwrap(), false).unwrap();
    body.send_data(data, end).unwrap();
    let response = tokio::time::timeout(std::time::Duration::from_secs(20), response).await.expect("an answer in time").unwrap();
    let elapsed = started.elapsed();
    let field = |headers: &http::HeaderMap, name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    let (status, code) = match field(response.headers(), "grpc-status") {
        Some(status) => (status, field(response.headers(), "tessera-error-code")),
        None => {
            // The answer's message, if any, is read first: trailers come after it.
            let mut body = response.into_body();
            while let Some(data) = body.data().await {
                let _ = body.flow_control().release_capacity(data.unwrap().len());
            }
            let trailers = body.trailers().await.unwrap().expect("trailers");
            (field(&trailers, "grpc-status").expect("a status"), field(&trailers, "tessera-error-code"))
        }
    };
    (status, code.unwrap_or_default(), elapsed)
}

#[tokio::test]
async fn a_grpc_message_that_never_arrives_ends_at_the_callers_deadline() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    let bearer = format!("Bearer {}", acme.key);
    // A message whose 5-byte prefix announces 100 bytes, of which 10 ever come.
    const HALF: &[u8] = &[0, 0, 0, 0, 100, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];

    // Admitted, it waits for the rest only as long as the caller's own deadline, not for the
    // server's limit on a call (minutes).
    let (status, code, elapsed) = grpc_half_call(&app, "ModelInfer", &[("authorization", &bearer), ("grpc-timeout", "300m")], HALF).await;
    assert_eq!((status.as_str(), code.as_str()), ("4", "deadline_exceeded"), "DEADLINE_EXCEEDED with the problem code");
    assert!(elapsed >= std::time::Duration::from_millis(250) && elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");

    // Without a credential, or with a forged one, it is refused at once: nothing is read.
    let cases = [
        (vec![("grpc-timeout", "60S")], "unauthenticated"),
        (vec![("authorization", "Bearer tsk_forged"), ("grpc-timeout", "60S")], "invalid_token"),
    ];
    for (headers, expected) in cases {
        let (status, code, elapsed) = grpc_half_call(&app, "ModelInfer", &headers, HALF).await;
        assert_eq!((status.as_str(), code.as_str()), ("16", expected), "{headers:?}");
        assert!(elapsed < std::time::Duration::from_secs(5), "{elapsed:?}");
    }
}

/// A gRPC connection that never sends HTTP/2's preface, or only part of it, is closed after
/// the handshake timeout (10 s) instead of being held open for as long as its client likes;
/// one that sent it is served on past that.
#[tokio::test]
async fn a_grpc_connection_that_never_starts_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let address = ("127.0.0.1", app.grpc_port.expect("gRPC is on in tests"));
    let started = std::time::Instant::now();
    let (healthy, connection) = h2::client::handshake(tokio::net::TcpStream::connect(address).await.unwrap()).await.unwrap();
    tokio::spawn(connection);
    let mut silent = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(address).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for stream in [&mut silent, &mut partial] {
        // The server's SETTINGS may come first; then the end of the connection.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            let mut buf = [0u8; 256];
            while let Ok(1..) = stream.read(&mut buf).await {}
        })
        .await;
        assert!(closed.is_ok(), "still open after 30 s");
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= std::time::Duration::from_secs(9), "closed at the timeout, not before: {elapsed:?}");

    // Past the timeout, the connection that started still serves calls.
    assert_eq!(grpc_server_live(&healthy).await, "0");
}

/// Past `server.grpc_max_connections`, or `server.grpc_max_connections_per_client` from one
/// client, a new gRPC connection is closed as it is accepted while those open are served on; a
/// trusted proxy's connections count only in all; once one ends, a new one is taken again.
#[tokio::test]
async fn grpc_connections_past_the_bounds_are_closed_as_they_come() {
    use tokio::io::AsyncReadExt;
    let app = spawn_app_with(|s| {
        s.server.grpc_max_connections = 4;
        s.server.grpc_max_connections_per_client = 1;
        s.server.trusted_proxies = vec!["127.0.0.3".into()];
    })
    .await;
    let port = app.grpc_port.expect("gRPC is on in tests");
    let open = |from: [u8; 4]| async move {
        let stream = crate::helpers::connect_from(from.into(), port).await;
        let (client, connection) = h2::client::handshake(stream).await.unwrap();
        (client, tokio::spawn(connection))
    };
    let refused = |from: [u8; 4]| async move {
        let mut stream = crate::helpers::connect_from(from.into(), port).await;
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let mut buf = [0u8; 64];
            while let Ok(1..) = stream.read(&mut buf).await {}
        })
        .await
        .is_ok()
    };
    let mut connections = vec![open([127, 0, 0, 1]).await, open([127, 0, 0, 3]).await, open([127, 0, 0, 3]).await];
    for (client, _) in &connections {
        assert_eq!(grpc_server_live(client).await, "0");
    }
    assert!(refused([127, 0, 0, 1]).await, "a second connection from one client is closed at once");
    connections.push(open([127, 0, 0, 2]).await);
    assert!(refused([127, 0, 0, 4]).await, "a connection past the bound in all is closed at once");
    for (client, _) in &connections {
        assert_eq!(grpc_server_live(client).await, "0", "the connections open are served on");
    }

    let (client, connection) = connections.swap_remove(0);
    drop(client);
    connection.abort();
    let served = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let (client, connection) = open([127, 0, 0, 1]).await;
            // A connection the server closed fails the call: its task panics, and this tries again.
            if let Ok(status) = tokio::spawn(async move { grpc_server_live(&client).await }).await {
                return status;
            }
            connection.abort();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(served.expect("a new connection is taken once one ended"), "0");
}

/// Makes a `ServerLive` call on an open HTTP/2 connection; returns its `grpc-status`.
async fn grpc_server_live(connection: &h2::client::SendRequest<bytes::Bytes>) -> String {
    let request = http::Request::builder()
        .method("POST")
        .uri("http://127.0.0.1/inference.GRPCInferenceService/ServerLive")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = connection.clone().ready().await.expect("the connection is open").send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).unwrap();
    let mut answer = response.await.unwrap().into_body();
    while let Some(chunk) = answer.data().await {
        chunk.unwrap();
    }
    let trailers = answer.trailers().await.unwrap().expect("trailers");
    trailers["grpc-status"].to_str().unwrap().to_owned()
}

/// A gRPC connection on which no call starts for `server.grpc_idle_seconds` is told to go away
/// (a client that only holds connections open holds them no longer), while one with calls is
/// served on; once the process drains, a connection's next call is answered and then the
/// connection goes away, as HTTP closes its connections after their next response.
#[tokio::test]
async fn grpc_connections_go_away_when_idle_or_when_the_process_drains() {
    async fn open(app: &TestApp) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
        let address = ("127.0.0.1", app.grpc_port.expect("gRPC is on in tests"));
        let (client, connection) = h2::client::handshake(tokio::net::TcpStream::connect(address).await.unwrap()).await.unwrap();
        (client, tokio::spawn(connection))
    }
    let app = spawn_app_with(|s| s.server.grpc_idle_seconds = 2).await;
    let (_idle, idle_connection) = open(&app).await;
    let (busy, busy_connection) = open(&app).await;
    for round in 0..10 {
        assert_eq!(grpc_server_live(&busy).await, "0");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if round == 1 {
            assert!(!idle_connection.is_finished(), "an idle connection is kept for the idle timeout first");
        }
    }
    assert!(idle_connection.is_finished(), "the idle connection went away");
    assert!(!busy_connection.is_finished(), "the busy connection is served on");

    // Draining, with the default idle timeout (minutes): only the drain can end it.
    let app = spawn_app().await;
    let (client, connection) = open(&app).await;
    assert_eq!(grpc_server_live(&client).await, "0");
    app.state.draining.start();
    assert_eq!(grpc_server_live(&client).await, "0", "a call while draining is answered");
    tokio::time::timeout(std::time::Duration::from_secs(5), connection).await.expect("then its connection goes away").unwrap().ok();
}

/// A message longer than its call's limit is refused from the length its prefix announces,
/// before it is read, and one that is not protobuf as the caller's error: both with a status
/// and problem code, as HTTP refuses such bodies, not as a server failure.
#[tokio::test]
async fn grpc_messages_over_the_limit_or_not_protobuf_are_refused_with_a_code() {
    let app = spawn_app_with(|s| s.inference.max_request_bytes = 1 << 20).await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    let bearer = format!("Bearer {}", acme.key);
    let admitted = [("authorization", bearer.as_str()), ("grpc-timeout", "20S")];
    // Prefixes announcing one byte more than the limits: 1 MiB for `ModelInfer`, 16 KiB for
    // every other call.
    const OVER_INFER: &[u8] = &[0, 0, 0x10, 0, 1];
    const OVER_SMALL: &[u8] = &[0, 0, 0, 0x40, 1];
    const NOT_PROTOBUF: &[u8] = &[0, 0, 0, 0, 3, 0xff, 0xff, 0xff];

    let cases: [(&str, &[(&str, &str)], &'static [u8], (&str, &str)); 6] = [
        ("ModelInfer", &admitted, OVER_INFER, ("8", "payload_too_large")),
        ("ModelMetadata", &admitted, OVER_SMALL, ("8", "payload_too_large")),
        ("ServerMetadata", &[], OVER_SMALL, ("8", "payload_too_large")),
        ("ModelInfer", &admitted, NOT_PROTOBUF, ("3", "invalid_request")),
        ("ModelReady", &admitted, NOT_PROTOBUF, ("3", "invalid_request")),
        // Admission comes first: an anonymous caller learns nothing of the limits.
        ("ModelInfer", &[], OVER_INFER, ("16", "unauthenticated")),
    ];
    for (method, headers, prefix, expected) in cases {
        let (status, code, elapsed) = grpc_half_call(&app, method, headers, prefix).await;
        assert_eq!((status.as_str(), code.as_str()), expected, "{method} {prefix:?}");
        assert!(elapsed < std::time::Duration::from_secs(5), "answered before the rest would arrive: {elapsed:?}");
    }
}

/// Requests whose content would take many times their size in memory once decoded (tensors of
/// millions of tiny strings or one-byte varints, parameters nested as trees) are refused before
/// they are decoded, over both protocols, and the server serves on.
#[tokio::test]
async fn requests_that_would_decode_to_many_times_their_size_are_refused_before_decoding() {
    use prost::Message;
    use tessera::grpc::proto::model_infer_request::InferInputTensor;
    use tessera::grpc::proto::{InferTensorContents, ModelInferRequest};

    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.model(&app, "adder", ADD, json!({})).await;

    // Five million empty strings: 15 MB of JSON, 160 MB of handles decoded.
    let strings = json!({ "inputs": [{ "name": "a", "datatype": "BYTES", "shape": [5_000_000], "data": vec![""; 5_000_000] }] });
    let response = infer(&app, &acme.key, "/v2/models/adder/infer", &strings).await;
    let problem = crate::helpers::assert_problem(response, 413, "payload_too_large").await;
    assert!(problem["detail"].as_str().unwrap().contains("5000000 BYTES elements"), "{problem}");

    // A parameter nested as a tree is refused where it starts.
    let mut nested = add_request(1, 0.0);
    nested["parameters"] = json!({ "p": [[], [[]], {"k": [1]}] });
    crate::helpers::assert_problem(infer(&app, &acme.key, "/v2/models/adder/infer", &nested).await, 422, "invalid_input").await;

    // Over gRPC: typed contents of ten million one-byte INT64 varints (80 MB decoded from 10).
    let message = ModelInferRequest {
        model_name: "adder".to_owned(),
        inputs: vec![InferInputTensor {
            name: "a".to_owned(),
            datatype: "INT64".to_owned(),
            shape: vec![10_000_000],
            contents: Some(InferTensorContents { int64_contents: vec![0; 10_000_000], ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let bearer = format!("Bearer {}", acme.key);
    let headers = [("authorization", bearer.as_str()), ("grpc-timeout", "20S")];
    let (status, code, _) = grpc_half_call(&app, "ModelInfer", &headers, framed).await;
    assert_eq!((status.as_str(), code.as_str()), ("8", "payload_too_large"));

    // And the server serves on.
    assert_eq!(infer(&app, &acme.key, "/v2/models/adder/infer", &add_request(1, 0.0)).await.status(), 200);
}

/// An answer longer than a gRPC message may be is refused with a status and problem code that
/// say so, and audited as refused, not as served.
#[tokio::test]
async fn a_grpc_answer_past_the_message_limit_is_refused_with_a_code() {
    use prost::Message;
    use tessera::grpc::proto::ModelInferRequest;
    use tessera::grpc::proto::model_infer_request::InferInputTensor;

    // The identity model's answer repeats its inputs under longer names ("out_" for "in_"),
    // with its version and cache status: a few dozen bytes more than the request.
    let tensors: [(&str, &str, Vec<i64>, Vec<u8>); 8] = [
        ("in_int64", "INT64", vec![1, 2], vec![0; 16]),
        ("in_int32", "INT32", vec![1], vec![0; 4]),
        ("in_bool", "BOOL", vec![1, 3], vec![0; 3]),
        ("in_fp64", "FP64", vec![1], vec![0; 8]),
        ("in_uint8", "UINT8", vec![1, 5], vec![0; 5]),
        ("in_fp16", "FP16", vec![1, 2], vec![0; 4]),
        ("in_int8", "INT8", vec![1], vec![0; 1]),
        ("in_string", "BYTES", vec![1], vec![1, 0, 0, 0, b'a']),
    ];
    let message = ModelInferRequest {
        model_name: "dtypes".to_owned(),
        inputs: tensors
            .iter()
            .map(|(name, datatype, shape, _)| InferInputTensor {
                name: (*name).to_owned(),
                datatype: (*datatype).to_owned(),
                shape: shape.clone(),
                ..Default::default()
            })
            .collect(),
        raw_input_contents: tensors.iter().map(|(.., raw)| bytes::Bytes::from(raw.clone())).collect(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);

    for (limit, expected) in [(message.len() + 4, ("8", "payload_too_large")), (message.len() + 200, ("0", ""))] {
        let app = spawn_app_with(|s| s.inference.max_request_bytes = limit).await;
        let admin = app.platform_admin().await;
        let acme = tenant(&app, &admin, "acme").await;
        acme.model(&app, "dtypes", DTYPES, json!({})).await;
        let bearer = format!("Bearer {}", acme.key);
        let headers = [("authorization", bearer.as_str()), ("grpc-timeout", "20S")];
        let (status, code, _) = grpc_raw_call(&app, "ModelInfer", &headers, framed.clone().into(), true).await;
        assert_eq!((status.as_str(), code.as_str()), expected, "limit {limit}");

        app.state.audit_sink.flush().await;
        let records: Vec<Value> =
            sqlx::query_scalar("SELECT details FROM audit_events WHERE action = 'inference.call'").fetch_all(&app.db).await.unwrap();
        let calls: Vec<serde_json::Map<String, Value>> = records.iter().flat_map(tessera::audit::sink::expand_calls).collect();
        let outcomes: Vec<&str> = calls.iter().map(|c| c["outcome"].as_str().unwrap()).collect();
        assert_eq!(outcomes, [if expected.0 == "0" { "success" } else { "denied" }], "{calls:#?}");
    }
}

#[tokio::test]
async fn models_load_once_eagerly_by_alias_and_the_least_recently_used_is_evicted() {
    // add_fp32 (140 B) + mlp_fp32 (1072 B) + dtypes (761 B) = 1973 B: one must go.
    let app = spawn_app_with(|s| s.inference.memory_budget_bytes = 1900).await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    let create = |name: &str| json!({ "name": name, "framework": "onnx" });
    for name in ["adder", "mlp", "dtypes"] {
        app.post_json("/v1/tenants/acme/models", Some(&acme.owner), &create(name)).await;
    }
    let artifact = |v: Value| uuid::Uuid::parse_str(v["id"].as_str().unwrap()).unwrap();
    let adder = artifact(acme.upload(&app, "adder", ADD).await);
    let mlp = artifact(acme.upload(&app, "mlp", MLP).await);
    acme.upload(&app, "dtypes", DTYPES).await;
    let models = app.state.inference.models.clone();

    // Concurrent first requests share one load.
    let bodies: Vec<Value> = (0..6).map(|i| add_request(1, i as f32)).collect();
    let calls = bodies.iter().map(|b| infer(&app, &acme.key, "/v2/models/adder/infer", b));
    for response in futures::future::join_all(calls).await {
        assert_eq!(response.status(), 200);
    }
    let loads: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = 'model.loaded'").fetch_one(&app.db).await.unwrap();
    assert_eq!(loads, 1, "six concurrent first requests loaded the model {loads} times");
    assert!(models.is_loaded(adder));

    // Pointing the eager alias at a version loads it with no request at all.
    assert!(!models.is_loaded(mlp));
    acme.alias(&app, "mlp", "production", 1).await;
    let mut eager = false;
    for _ in 0..100 {
        if models.is_loaded(mlp) {
            eager = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(eager, "the version behind `production` was not loaded eagerly");

    // A third model exceeds the budget: the least recently used (adder) goes, and comes back
    // on its next request.
    let body = json!({ "inputs": [{ "name": "in_int32", "shape": [1], "datatype": "INT32", "data": [1] }] });
    let response = infer(&app, &acme.key, "/v2/models/dtypes/infer", &body).await;
    assert_eq!(problem(response).await.1, "invalid_input", "dtypes takes eight inputs");
    assert!(!models.is_loaded(adder), "the least recently used model was not evicted");
    assert!(models.is_loaded(mlp));
    assert_eq!(infer(&app, &acme.key, "/v2/models/adder/infer", &add_request(1, 0.0)).await.status(), 200);
    assert!(models.is_loaded(adder));
}

#[tokio::test]
async fn identical_concurrent_misses_run_the_model_once() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    let serving = json!({ "deterministic": true, "serving": { "cache_ttl_seconds": 60, "max_batch_size": 1 } });
    acme.model(&app, "slow", SLOW, serving).await;
    // Binary tensors: parsing costs nothing next to the model, so the requests meet in flight.
    let rows = 512;
    let header = json!({ "inputs": [{ "name": "x", "shape": [rows, 128], "datatype": "FP32", "parameters": { "binary_data_size": rows * 128 * 4 } }] })
        .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(std::iter::repeat_n(0.25f32.to_le_bytes(), rows * 128).flatten());
    // Load the model first, so that the identical requests below meet in flight, not in the load.
    assert_eq!(app.get_as("/v2/models/slow/ready", &acme.key).await.status(), 200);
    let calls = (0..5).map(|_| {
        app.client
            .post(app.url("/v2/models/slow/infer"))
            .bearer_auth(&acme.key)
            .header("inference-header-content-length", header.len())
            .body(body.clone())
            .send()
    });
    let calls = futures::future::join_all(calls).await.into_iter().map(Result::unwrap).collect::<Vec<_>>();
    let mut outputs = Vec::new();
    for response in calls {
        assert_eq!(response.status(), 200);
        let cache = response.headers()["tessera-cache"].to_str().unwrap().to_owned();
        assert!(cache == "miss" || cache == "hit", "{cache}");
        outputs.push(response.json::<Value>().await.unwrap()["outputs"].clone());
    }
    assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    let metrics = app.metrics_text().await;
    let runs: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tessera_inference_batch_rows_count") && l.contains("model=\"slow\""))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum();
    assert_eq!(runs, 1.0, "five identical concurrent misses ran the model {runs} times");
}

#[tokio::test]
async fn a_model_that_fails_to_load_is_refused_at_once_for_a_while() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    app.post_json("/v1/tenants/acme/models", Some(&acme.owner), &json!({ "name": "adder", "framework": "onnx" })).await;
    acme.upload(&app, "adder", ADD).await;
    let key: String = sqlx::query_scalar("SELECT object_key FROM model_versions").fetch_one(&app.db).await.unwrap();
    let path = app.database.artifact_dir.join(key);
    let mut stored = std::fs::read(&path).unwrap();
    stored[20] ^= 1;
    std::fs::write(&path, stored).unwrap();

    for _ in 0..3 {
        let (status, code, _) = problem(infer(&app, &acme.key, "/v2/models/adder/infer", &add_request(1, 0.0)).await).await;
        assert_eq!((status, code.as_str()), (500, "artifact_integrity"));
    }
    // One attempt to decrypt (and one audit event); the next requests were answered from memory.
    let failures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = 'model.load_failed'").fetch_one(&app.db).await.unwrap();
    assert_eq!(failures, 1);
}

/// Inference answers go out as they are even to a client that accepts compression, however the
/// route is spelled and whether they succeed or not; the admin API beside them is compressed.
#[tokio::test]
async fn inference_answers_are_never_compressed() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.model(&app, "adder", ADD, json!({})).await;
    for path in ["/v2/models/adder/infer", "/v2/models/adder/%69nfer", "/v2/models/adder/%76ersions/1/infer"] {
        let response = app
            .client
            .post(app.url(path))
            .bearer_auth(&acme.key)
            .header("accept-encoding", "gzip, zstd")
            .json(&add_request(64, 0.0))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers().get("content-encoding").is_none(), "{path}: {:?}", response.headers());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["outputs"][0]["shape"], json!([64, 4]));
    }
    let refused = app
        .client
        .post(app.url("/v2/models/adder/infer"))
        .bearer_auth("not-a-credential")
        .header("accept-encoding", "gzip")
        .json(&add_request(64, 0.0))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("content-encoding").is_none(), "{:?}", refused.headers());
    let listing = app
        .client
        .get(app.url("/v1/tenants/acme/models/adder/versions"))
        .bearer_auth(&acme.owner)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(listing.headers()["content-encoding"], "gzip");
}

/// Batch scoring: a 4 MiB binary request (the size of 4,096 rows of 256 FP32 features) is
/// served, past the admin API's 1 MiB; beyond inference's own limit a declared length is
/// refused before its body is read, and an undeclared one as soon as it grows too long.
#[tokio::test]
async fn batch_sized_bodies_are_served_up_to_the_inference_limit() {
    const LIMIT: usize = 8 << 20;
    let app = crate::helpers::spawn_app_with(|s| {
        s.inference.max_request_bytes = LIMIT;
        s.inference.cache_max_entry_bytes = LIMIT;
    })
    .await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.model(&app, "adder", ADD, json!({})).await;

    let rows = (4 << 20) / 32;
    let header = json!({ "inputs": [
        { "name": "x", "shape": [rows, 4], "datatype": "FP32", "parameters": { "binary_data_size": rows * 16 } },
        { "name": "y", "shape": [rows, 4], "datatype": "FP32", "parameters": { "binary_data_size": rows * 16 } },
    ], "outputs": [{ "name": "z", "parameters": { "binary_data": true } }] })
    .to_string();
    let mut tensors: Vec<u8> = (0..rows * 4).flat_map(|i| (i as f32).to_le_bytes()).collect();
    tensors.extend((0..rows * 4).flat_map(|_| 0.5f32.to_le_bytes()));
    assert!(tensors.len() >= 4 << 20 && tensors.len() > app.settings.server.max_body_bytes);
    let response = app.infer_binary(&acme.key, "/v2/models/adder/infer", &header, &tensors).await;
    assert_eq!(response.status(), 200);
    let json_len: usize = response.headers()["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let bytes = response.bytes().await.unwrap();
    let z: Vec<f32> = bytes[json_len..].chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(z.len(), rows * 4);
    assert_eq!((z[0], z[rows * 4 - 1]), (0.5, (rows * 4 - 1) as f32 + 0.5));

    // Through the result cache, whose key of a large request is hashed on the blocking pool:
    // the same answer, from the cache the second time.
    acme.model(&app, "cached", ADD, json!({ "deterministic": true, "serving": { "cache_ttl_seconds": 60 } })).await;
    for expected in ["miss", "hit"] {
        let response = app.infer_binary(&acme.key, "/v2/models/cached/infer", &header, &tensors).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["tessera-cache"], expected);
        let answer = response.bytes().await.unwrap();
        assert_eq!(answer[answer.len() - rows * 16..], bytes[json_len..], "{expected}");
    }

    // Too long, declared: refused with the headers alone, no body sent.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = |length: &str| {
        format!(
            "POST /v2/models/adder/infer HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\n{length}\r\n",
            acme.key
        )
    };
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    stream.write_all(head(&format!("content-length: {}\r\n", LIMIT + 1)).as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer)).await.expect("answered without the body").unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("payload_too_large"), "{answer}");

    // Too long, undeclared (chunked): refused once past the limit, while it is still sent.
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    stream.write_all(head("transfer-encoding: chunked\r\n").as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..(2 * LIMIT >> 20) {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if writer.write_all(&framed).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), reader.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("payload_too_large"), "{answer}");
    sender.abort();
}
