//! Jobs end to end: datasets, training an MLP to a served Burn version, batch inference,
//! idempotent submission, cancellation, retries into the dead-letter state, tenant isolation,
//! and two `tessera worker` processes of which one is killed mid-training.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, eventually, spawn_app_with};

struct Setup {
    app: TestApp,
    admin: String,
    owner: String,
}

async fn setup(workers: usize) -> Setup {
    let app = spawn_app_with(|s| {
        s.jobs.workers = workers;
        // Long enough that a worker starved of CPU by the rest of the suite is not presumed dead.
        s.jobs.visibility_timeout_ms = 5000;
        s.jobs.dispatch_interval_ms = 200;
        s.jobs.events_poll_ms = 50;
        s.jobs.retry_base_backoff_ms = 100;
        s.jobs.retry_max_backoff_ms = 200;
    })
    .await;
    let admin = app.platform_admin().await;
    let owner = tenant_owner(&app, &admin, "acme").await;
    Setup { app, admin, owner }
}

async fn tenant_owner(app: &TestApp, admin: &str, slug: &str) -> String {
    app.create_tenant(admin, slug, json!({})).await;
    let email = format!("owner@{slug}.test");
    app.add_member(admin, slug, &email, "owner").await;
    app.session(&email, Some(slug)).await.0
}

/// A small deterministic generator, so the data sets are the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / ((1u64 << 24) as f32)
    }

    /// Roughly normal (sum of uniforms).
    fn normal(&mut self) -> f32 {
        (0..6).map(|_| self.next()).sum::<f32>() - 3.0
    }
}

/// Three well-separated blobs in four dimensions: a separable classification problem.
fn blobs_csv(rows: usize, seed: u64) -> String {
    let centres = [[3.0, 0.0, -3.0, 1.0], [-3.0, 3.0, 0.0, -1.0], [0.0, -3.0, 3.0, 2.0]];
    let mut rng = Lcg(seed);
    let mut text = String::from("x1,x2,x3,x4,label\n");
    for i in 0..rows {
        let class = i % 3;
        let c = centres[class];
        let x: Vec<String> = c.iter().map(|m| format!("{:.4}", m + 0.7 * rng.normal())).collect();
        text.push_str(&format!("{},{class}\n", x.join(",")));
    }
    text
}

impl Setup {
    async fn upload_dataset(&self, tenant: &str, token: &str, name: &str, csv: String) -> reqwest::Response {
        self.app
            .client
            .post(self.app.url(&format!("/v1/tenants/{tenant}/datasets?name={name}")))
            .bearer_auth(token)
            .header("content-type", "text/csv")
            .body(csv)
            .send()
            .await
            .unwrap()
    }

    async fn dataset(&self, csv: String) -> String {
        let response = self.upload_dataset("acme", &self.owner, "blobs", csv).await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    async fn submit(&self, tenant: &str, token: &str, body: &Value, key: Option<&str>) -> reqwest::Response {
        let mut request = self.app.client.post(self.app.url(&format!("/v1/tenants/{tenant}/jobs"))).bearer_auth(token).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    async fn job(&self, id: &str) -> Value {
        self.app.get_as(&format!("/v1/tenants/acme/jobs/{id}"), &self.owner).await.json().await.unwrap()
    }

    /// Waits for a final status and returns the job.
    async fn finished(&self, id: &str, seconds: u64) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
        loop {
            let job = self.job(id).await;
            if !matches!(job["status"].as_str(), Some("queued" | "running")) {
                return job;
            }
            assert!(std::time::Instant::now() < deadline, "job {id} did not finish in {seconds} s: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn train_spec(dataset: &str, epochs: u32) -> Value {
    json!({
        "kind": "train", "model": "blobs-mlp", "architecture": "mlp",
        "config": { "inputs": 4, "hidden": [16], "outputs": 3 },
        "dataset": dataset, "target": "label",
        "epochs": epochs, "learning_rate": 0.02, "batch_size": 32, "validation_split": 0.25, "seed": 7
    })
}

fn first_rows(csv: &str, n: usize) -> Vec<f32> {
    csv.lines().skip(1).take(n).flat_map(|l| l.split(',').take(4).map(|v| v.parse::<f32>().unwrap()).collect::<Vec<_>>()).collect()
}

#[tokio::test]
async fn a_trained_mlp_reaches_95_percent_and_serves_what_the_job_evaluated() {
    let s = setup(1).await;
    let csv = blobs_csv(600, 11);
    let dataset = s.dataset(csv.clone()).await;
    let response = s.submit("acme", &s.owner, &train_spec(&dataset, 12), None).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    let job = s.finished(&id, 180).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let result = &job["result"];
    let accuracy = result["metrics"]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.95, "validation accuracy {accuracy}");
    assert_eq!(result["history"].as_array().unwrap().len(), 12);
    let version = result["version"].as_i64().unwrap();

    // The registered version: a Burn model with the job in its metadata, served through OIP.
    let v: Value = s.app.get_as(&format!("/v1/tenants/acme/models/blobs-mlp/versions/{version}"), &s.owner).await.json().await.unwrap();
    assert_eq!(v["metadata"]["job"], json!(id));
    assert_eq!(v["burn"]["architecture"], "mlp");
    let meta: Value = s.app.get_as("/v2/models/blobs-mlp", &s.owner).await.json().await.unwrap();
    assert_eq!(meta["platform"], "burn");
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 4]));

    let sample = &result["predictions_sample"];
    let rows = sample["rows"].as_u64().unwrap() as usize;
    let expected: Vec<f64> = sample["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let body = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [rows, 4], "data": first_rows(&csv, rows) }] });
    let response = s.app.post_json("/v2/models/blobs-mlp/infer", Some(&s.owner), &body).await;
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let served: Value = response.json().await.unwrap();
    assert_eq!(served["outputs"][0]["name"], "probabilities");
    let served: Vec<f64> = served["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(served.len(), expected.len());
    for (a, b) in served.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-5, "served {served:?} vs evaluated {expected:?}");
    }

    // The job's progress, as Server-Sent Events, ends with its final status.
    let events = s.app.get_as(&format!("/v1/tenants/acme/jobs/{id}/events"), &s.owner).await;
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let text = events.text().await.unwrap();
    assert!(text.contains("event: progress") && text.contains("\"epoch\":12") && text.contains("\"accuracy\""), "{text}");
    assert!(text.trim_end().ends_with("\"status\":\"succeeded\"}"), "{text}");

    // Batch inference with the trained version: the same predictions, as an encrypted CSV.
    let body = json!({ "kind": "batch_infer", "model": "blobs-mlp", "version": version.to_string(), "dataset": dataset, "features": ["x1", "x2", "x3", "x4"] });
    let response = s.submit("acme", &s.owner, &body, None).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let batch = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let job = s.finished(&batch, 60).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["rows"], 600);
    let output = s.app.get_as(&format!("/v1/tenants/acme/jobs/{batch}/output"), &s.owner).await;
    assert_eq!(output.status(), 200);
    let output = output.text().await.unwrap();
    let mut lines = output.lines();
    assert_eq!(lines.next(), Some("probabilities_0,probabilities_1,probabilities_2"));
    let first: Vec<f64> = lines.take(rows).flat_map(|l| l.split(',').map(|v| v.parse::<f64>().unwrap()).collect::<Vec<_>>()).collect();
    for (a, b) in first.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-5);
    }
    // Only ciphertext on disk: the output's first row does not appear in any stored object.
    let needle = output.lines().nth(1).unwrap().to_owned();
    for entry in walk(&s.app.database.artifact_dir) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "plaintext in {}", entry.display());
    }

    // Audited: submission, start, success, the registered version, the download.
    let audit: Value = s.app.get_as("/v1/tenants/acme/audit/events?limit=200", &s.owner).await.json().await.unwrap();
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["dataset.uploaded", "job.submitted", "job.started", "job.succeeded", "model.version_uploaded", "job.output_downloaded"] {
        assert!(actions.contains(&action), "{action} missing from {actions:?}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[tokio::test]
async fn a_malformed_csv_is_refused_with_its_line_number_and_leaves_nothing() {
    let s = setup(0).await;
    for (csv, needle) in [
        ("a,b,label\n1,2,0\n3,x,1\n", "line 3"),
        ("a,b,label\n1,2,0\n3,4\n", "line 3: expected 3 fields"),
        ("a,a\n1,2\n", "line 1"),
        ("", "empty"),
    ] {
        let response = s.upload_dataset("acme", &s.owner, "bad", csv.to_owned()).await;
        assert_eq!(response.status(), 422);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_dataset");
        assert!(problem["detail"].as_str().unwrap().contains(needle), "{problem}");
    }
    let listed: Value = s.app.get_as("/v1/tenants/acme/datasets", &s.owner).await.json().await.unwrap();
    assert_eq!(listed, json!({ "items": [] }));
    assert!(walk(&s.app.database.artifact_dir).is_empty(), "a refused dataset left objects behind");

    let response = s.upload_dataset("acme", &s.owner, "not a name", "a\n1\n".into()).await;
    assert_eq!(response.status(), 400);
    let response = s.app.client.post(s.app.url("/v1/tenants/acme/datasets?name=x")).bearer_auth(&s.owner).header("content-type", "application/json").body("{}").send().await.unwrap();
    assert_eq!(response.status(), 415);
}

#[tokio::test]
async fn resubmitting_with_an_idempotency_key_returns_the_same_job() {
    let s = setup(0).await;
    let dataset = s.dataset(blobs_csv(30, 1)).await;
    let spec = train_spec(&dataset, 3);
    let first = s.submit("acme", &s.owner, &spec, Some("nightly-2026-11-26")).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = s.submit("acme", &s.owner, &spec, Some("nightly-2026-11-26")).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    let listed: Value = s.app.get_as("/v1/tenants/acme/jobs", &s.owner).await.json().await.unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    let mut other = spec.clone();
    other["epochs"] = json!(4);
    let reused = s.submit("acme", &s.owner, &other, Some("nightly-2026-11-26")).await;
    assert_eq!(reused.status(), 422);
    assert_eq!(reused.json::<Value>().await.unwrap()["code"], "idempotency_key_reused");
    // Without a key, every submission is a new job.
    let a: Value = s.submit("acme", &s.owner, &spec, None).await.json().await.unwrap();
    assert_ne!(a["id"], first["id"]);

    // Bad specs are refused before a job exists, naming what is wrong.
    for (change, needle) in [
        (json!({"target": "nope"}), "nope"),
        (json!({"config": {"inputs": 3, "hidden": [4], "outputs": 3}}), "input features"),
        (json!({"dataset": "00000000-0000-0000-0000-000000000000"}), "not found"),
        (json!({"epochs": 0}), "epochs"),
    ] {
        let mut body = spec.clone();
        body.as_object_mut().unwrap().extend(change.as_object().unwrap().clone());
        let response = s.submit("acme", &s.owner, &body, None).await;
        assert!(response.status().is_client_error());
        let problem: Value = response.json().await.unwrap();
        assert!(problem["detail"].as_str().unwrap().contains(needle), "{problem}");
    }
    // A queued job is cancelled at once; a finished one cannot be.
    let id = first["id"].as_str().unwrap();
    let cancelled: Value = s.app.post_json(&format!("/v1/tenants/acme/jobs/{id}/cancel"), Some(&s.owner), &json!({})).await.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    let again = s.app.post_json(&format!("/v1/tenants/acme/jobs/{id}/cancel"), Some(&s.owner), &json!({})).await;
    assert_eq!(again.status(), 409);
}

#[tokio::test]
async fn cancel_stops_a_running_training_job_within_one_epoch() {
    let s = setup(1).await;
    let dataset = s.dataset(blobs_csv(300, 3)).await;
    let id = s.submit("acme", &s.owner, &train_spec(&dataset, 5000), None).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert!(eventually(120, || async { s.job(&id).await["progress"]["epoch"].as_u64().unwrap_or(0) >= 2 }).await, "training never got going");
    let response = s.app.post_json(&format!("/v1/tenants/acme/jobs/{id}/cancel"), Some(&s.owner), &json!({})).await;
    assert_eq!(response.status(), 200);
    let job = s.finished(&id, 60).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    // The request is logged in the job's events in the same transaction that sets the flag:
    // at most one epoch may end after it.
    let events = s.app.get_as(&format!("/v1/tenants/acme/jobs/{id}/events"), &s.owner).await.text().await.unwrap();
    let after = events.split("cancellation requested").nth(1).expect("the request is in the log");
    assert!(after.matches("event: progress").count() <= 1, "epochs after the cancellation: {after}");
    assert!(after.contains("\"status\":\"cancelled\""), "{after}");
    // Nothing was registered.
    assert_eq!(s.app.get_as("/v1/tenants/acme/models/blobs-mlp", &s.owner).await.status(), 404);
}

#[tokio::test]
async fn a_suspended_tenants_jobs_wait_for_its_resumption() {
    let s = setup(0).await;
    let dataset = s.dataset(blobs_csv(60, 9)).await;
    let id = s.submit("acme", &s.owner, &train_spec(&dataset, 2), None).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    // Handed to the stream already, or not yet: either way no worker may start it now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.app.call("POST", "/v1/tenants/acme/suspend", Some(&s.admin), None).await.status(), 200);
    let _workers = Reaper(vec![worker_process(&s.app)]);
    let status = || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM jobs WHERE id = $1::uuid").bind(&id).fetch_one(&s.app.db).await.unwrap()
    };
    // Many dispatch rounds (200 ms) and a worker that would start a job within one.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(status().await, "queued");
    // Not handed out again and again in the meantime either: the dispatcher leaves it out.
    for _ in 0..10 {
        let dispatched: Option<String> = sqlx::query_scalar("SELECT dispatched_at::text FROM jobs WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&s.app.db)
            .await
            .unwrap();
        assert_eq!(dispatched, None, "a suspended tenant's job was dispatched");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(s.app.call("POST", "/v1/tenants/acme/resume", Some(&s.admin), None).await.status(), 200);
    let job = s.finished(&id, 120).await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

#[tokio::test]
async fn a_job_that_keeps_failing_is_retried_with_backoff_then_dead_lettered() {
    let s = setup(1).await;
    let dataset = s.dataset(blobs_csv(30, 5)).await;
    // The dataset's ciphertext disappears from the store: a failure that a retry might fix.
    for file in walk(&s.app.database.artifact_dir) {
        std::fs::remove_file(file).unwrap();
    }
    let id = s.submit("acme", &s.owner, &train_spec(&dataset, 2), None).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let job = s.finished(&id, 60).await;
    assert_eq!(job["status"], "dead", "{job}");
    assert_eq!(job["attempts"], 3);
    assert!(job["error"].as_str().unwrap().contains("cannot be read"), "{job}");
    let events = s.app.get_as(&format!("/v1/tenants/acme/jobs/{id}/events"), &s.owner).await.text().await.unwrap();
    assert_eq!(events.matches("\"retry_in_ms\"").count(), 2, "{events}");
}

#[tokio::test]
async fn tenants_cannot_see_or_touch_each_others_jobs_and_datasets() {
    let s = setup(0).await;
    let other = tenant_owner(&s.app, &s.admin, "globex").await;
    let dataset = s.dataset(blobs_csv(30, 9)).await;
    let id = s.submit("acme", &s.owner, &train_spec(&dataset, 3), None).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    for path in [format!("/v1/tenants/acme/jobs/{id}"), format!("/v1/tenants/acme/jobs/{id}/events"), format!("/v1/tenants/acme/jobs/{id}/output"), format!("/v1/tenants/acme/datasets/{dataset}")] {
        let response = s.app.get_as(&path, &other).await;
        assert_eq!(response.status(), 404, "{path}");
    }
    assert_eq!(s.app.post_json(&format!("/v1/tenants/acme/jobs/{id}/cancel"), Some(&other), &json!({})).await.status(), 404);
    assert_eq!(s.app.get_as("/v1/tenants/globex/jobs", &other).await.json::<Value>().await.unwrap(), json!({ "items": [] }));
    assert_eq!(s.app.get_as("/v1/tenants/globex/datasets", &other).await.json::<Value>().await.unwrap(), json!({ "items": [] }));
    // Nor train on another tenant's dataset.
    let response = s.submit("globex", &other, &train_spec(&dataset, 3), None).await;
    assert_eq!(response.status(), 404);
    assert_eq!(s.job(&id).await["status"], "queued");
}

#[tokio::test]
async fn burn_weights_upload_only_for_their_architecture_and_serve() {
    use tessera::burnml::{Architecture, Network, to_bytes};
    let s = setup(0).await;
    let config = json!({ "inputs": 4, "hidden": [8], "outputs": 3 });
    let architecture: Architecture = serde_json::from_value(json!({ "architecture": "mlp", "config": config })).unwrap();
    let network = Network::init(&architecture, 42);
    let weights = to_bytes(&network).unwrap();
    let body = json!({ "name": "hand-made", "framework": "burn" });
    assert_eq!(s.app.post_json("/v1/tenants/acme/models", Some(&s.owner), &body).await.status(), 201);
    let upload = |bytes: Vec<u8>, config: &Value| {
        let url = s.app.url(&format!("/v1/tenants/acme/models/hand-made/versions?architecture=mlp&config={}", urlencode(&config.to_string())));
        s.app.client.post(url).bearer_auth(&s.owner).header("content-type", "application/octet-stream").body(bytes).send()
    };
    let wrong = json!({ "inputs": 4, "hidden": [9], "outputs": 3 });
    let response = upload(weights.clone(), &wrong).await.unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "invalid_model");
    let response = upload(b"not weights at all".to_vec(), &config).await.unwrap();
    assert_eq!(response.status(), 422);
    let response = upload(weights, &config).await.unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());

    let input = [0.5f32, -1.0, 2.0, 0.25];
    let expected = network.infer(&input, 1).unwrap();
    let body = json!({ "inputs": [{ "name": "input", "datatype": "FP32", "shape": [1, 4], "data": input }] });
    let served: Value = s.app.post_json("/v2/models/hand-made/infer", Some(&s.owner), &body).await.json().await.unwrap();
    let served: Vec<f32> = served["outputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(served, expected);

    // NaN cannot be written in JSON, but binary tensors carry it: refused before the engine.
    let header = json!({ "inputs": [{ "name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": { "binary_data_size": 16 } }] })
        .to_string();
    let tensors: Vec<u8> = [0.5f32, f32::NAN, 2.0, 0.25].iter().flat_map(|v| v.to_le_bytes()).collect();
    let response = s.app.infer_binary(&s.owner, "/v2/models/hand-made/infer", &header, &tensors).await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("element 1"), "{problem}");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// `tessera worker` processes against this test's database, Redis prefix and store.
fn worker_process(app: &TestApp) -> std::process::Child {
    worker_process_with_metrics(app, "127.0.0.1:0")
}

fn worker_process_with_metrics(app: &TestApp, metrics_address: &str) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TESSERA") {
            command.env_remove(key);
        }
    }
    let s = &app.settings;
    command
        .arg("worker")
        .env("TESSERA_ENV", "test")
        .env("TESSERA__DATABASE__URL", &s.database.url)
        .env("TESSERA__REDIS__URL", &s.redis.url)
        .env("TESSERA__REDIS__KEY_PREFIX", &s.redis.key_prefix)
        .env("TESSERA__REGISTRY__STORAGE__PATH", &s.registry.storage.path)
        .env("TESSERA__INFERENCE__ONNXRUNTIME_PATH", &s.inference.onnxruntime_path)
        .env("TESSERA__JOBS__VISIBILITY_TIMEOUT_MS", "4000")
        .env("TESSERA__JOBS__DISPATCH_INTERVAL_MS", "200")
        .env("TESSERA__TELEMETRY__METRICS_ADDRESS", metrics_address)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command.spawn().expect("tessera worker starts")
}

struct Reaper(Vec<std::process::Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test]
async fn a_killed_worker_s_job_finishes_on_another_and_registers_one_version() {
    let s = setup(0).await;
    let mut workers = Reaper(vec![worker_process(&s.app), worker_process(&s.app)]);
    let dataset = s.dataset(blobs_csv(300, 13)).await;
    // Many short epochs: the job is surely mid-training when its worker dies, however fast
    // or loaded this machine is.
    let id = s.submit("acme", &s.owner, &train_spec(&dataset, 1500), None).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();

    // Mid-training: find the process holding the job and kill it outright.
    assert!(eventually(120, || async { s.job(&id).await["progress"]["epoch"].as_u64().unwrap_or(0) >= 2 }).await, "training never got going");
    let holder: String = sqlx::query_scalar("SELECT worker FROM jobs WHERE id = $1::uuid").bind(&id).fetch_one(&s.app.db).await.unwrap();
    let victim = workers.0.iter().position(|c| holder.split('-').rev().nth(2) == Some(&c.id().to_string())).expect("a worker holds the job");
    workers.0[victim].kill().unwrap();
    workers.0[victim].wait().unwrap();

    let job = s.finished(&id, 240).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(job["attempts"].as_i64().unwrap() >= 2, "{job}");
    let holder_now: String = sqlx::query_scalar("SELECT worker FROM jobs WHERE id = $1::uuid").bind(&id).fetch_one(&s.app.db).await.unwrap();
    assert_ne!(holder_now, holder);
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions WHERE job_id = $1::uuid").bind(&id).fetch_one(&s.app.db).await.unwrap();
    assert_eq!(versions, 1);
    let all: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions").fetch_one(&s.app.db).await.unwrap();
    assert_eq!(all, 1);
    let events = s.app.get_as(&format!("/v1/tenants/acme/jobs/{id}/events"), &s.owner).await.text().await.unwrap();
    assert!(events.contains("\"takeover\":true"), "{events}");
}

#[tokio::test]
async fn a_worker_stopped_with_sigterm_hands_its_job_back_to_the_others() {
    let s = setup(0).await;
    let mut workers = Reaper(vec![worker_process(&s.app), worker_process(&s.app)]);
    let dataset = s.dataset(blobs_csv(300, 17)).await;
    let id = s.submit("acme", &s.owner, &train_spec(&dataset, 1500), None).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    assert!(eventually(120, || async { s.job(&id).await["progress"]["epoch"].as_u64().unwrap_or(0) >= 2 }).await, "training never got going");
    let holder: String = sqlx::query_scalar("SELECT worker FROM jobs WHERE id = $1::uuid").bind(&id).fetch_one(&s.app.db).await.unwrap();
    let stopping = workers.0.iter().position(|c| holder.split('-').rev().nth(2) == Some(&c.id().to_string())).expect("a worker holds the job");
    let pid = workers.0[stopping].id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exited = eventually(30, || {
        let done = workers.0[stopping].try_wait().unwrap().is_some();
        async move { done }
    })
    .await;
    assert!(exited, "the worker did not stop on SIGTERM");

    let job = s.finished(&id, 240).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let events = s.app.get_as(&format!("/v1/tenants/acme/jobs/{id}/events"), &s.owner).await.text().await.unwrap();
    let handed_back = events.matches("worker shutting down").count();
    assert_eq!(handed_back, 1, "{events}");
    // Handed back, not failed: the interrupted attempt does not count.
    let starts = events.matches("\"status\":\"running\"").count() as i64;
    assert_eq!(job["attempts"].as_i64().unwrap(), starts - 1, "{job}\n{events}");
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions").fetch_one(&s.app.db).await.unwrap();
    assert_eq!(versions, 1);
}

#[tokio::test]
async fn the_job_cli_submits_with_its_dataset_and_follows_to_the_result() {
    let s = setup(1).await;
    let dir = std::env::temp_dir().join(format!("tessera-job-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("blobs.csv"), blobs_csv(300, 21)).unwrap();
    let spec = train_spec("00000000-0000-0000-0000-000000000000", 4);
    std::fs::write(dir.join("spec.json"), spec.to_string()).unwrap();
    let cli = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
        command.args(args).args(["--server", &s.app.address, "--token", &s.owner, "--tenant", "acme"]);
        command.env_remove("TESSERA_SERVER").env_remove("TESSERA_TOKEN").env_remove("TESSERA_TENANT");
        command
    };
    let spec_path = dir.join("spec.json");
    let csv_path = dir.join("blobs.csv");
    let output = tokio::task::spawn_blocking({
        let mut command = cli(&["job", "submit", spec_path.to_str().unwrap(), "--dataset", csv_path.to_str().unwrap(), "--idempotency-key", "cli-1"]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let id = stdout.lines().next().unwrap().trim().to_owned();
    assert!(stdout.contains("\"accuracy\""), "the result is printed: {stdout}");
    assert!(stdout.contains("progress") || stdout.contains("status"), "{stdout}");
    assert_eq!(s.job(&id).await["status"], "succeeded");

    let output = tokio::task::spawn_blocking({
        let mut command = cli(&["job", "status", &id]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["id"], json!(id));
    // An unknown job: one line naming the problem, exit code 1.
    let output = tokio::task::spawn_blocking({
        let mut command = cli(&["job", "logs", "00000000-0000-0000-0000-000000000000"]);
        move || command.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not_found"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn training_into_a_new_model_respects_the_model_quota() {
    let s = setup(1).await;
    s.app.create_tenant(&s.admin, "tight", json!({ "max_models": 1 })).await;
    s.app.add_member(&s.admin, "tight", "owner@tight.test", "owner").await;
    let owner = s.app.session("owner@tight.test", Some("tight")).await.0;
    let taken = json!({ "name": "existing", "framework": "burn" });
    assert_eq!(s.app.post_json("/v1/tenants/tight/models", Some(&owner), &taken).await.status(), 201);
    let response = s.upload_dataset("tight", &owner, "blobs", blobs_csv(60, 23)).await;
    let dataset = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let id = s.submit("tight", &owner, &train_spec(&dataset, 2), None).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let job = loop {
        let job: Value = s.app.get_as(&format!("/v1/tenants/tight/jobs/{id}"), &owner).await.json().await.unwrap();
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("quota"), "{job}");
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM model_versions").fetch_one(&s.app.db).await.unwrap();
    assert_eq!(versions, 0);
}

/// What an autoscaler reads: the backlog, from an API process and from a worker's own
/// listener, which also answers liveness.
#[tokio::test]
async fn the_job_backlog_is_a_metric_of_api_and_worker_processes() {
    let s = setup(0).await;
    let dataset = s.dataset(blobs_csv(120, 5)).await;
    for _ in 0..2 {
        assert_eq!(s.submit("acme", &s.owner, &train_spec(&dataset, 2), None).await.status(), 201);
    }
    let backlog = |text: &str| text.lines().find_map(|l| l.strip_prefix("tessera_jobs_backlog ")).map(str::to_owned);
    assert!(
        eventually(10, || async { backlog(&s.app.metrics_text().await).as_deref() == Some("2") }).await,
        "the API reports two jobs waiting: {}",
        s.app.metrics_text().await
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _worker = Reaper(vec![worker_process_with_metrics(&s.app, &format!("127.0.0.1:{port}"))]);
    let worker_url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    assert!(
        eventually(30, || async { s.app.client.get(worker_url("/healthz")).send().await.is_ok_and(|r| r.status() == 200) }).await,
        "the worker answers liveness on its metrics listener"
    );
    let drained = eventually(240, || async {
        let Ok(response) = s.app.client.get(worker_url("/metrics")).send().await else { return false };
        let worker = response.text().await.unwrap();
        backlog(&worker).as_deref() == Some("0") && backlog(&s.app.metrics_text().await).as_deref() == Some("0")
    })
    .await;
    assert!(drained, "both processes see the backlog drain as the worker finishes the jobs");
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status::text FROM jobs").fetch_all(&s.app.db).await.unwrap();
    assert_eq!(statuses, ["succeeded", "succeeded"]);
}
