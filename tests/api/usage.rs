//! Usage end to end: inference calls counted in memory, flushed to Postgres, read back by hour
//! and by day, as JSON pages and as CSV; flushes (and processes) that add rather than
//! overwrite; tenants and roles that see only what they may; windows that are refused; and
//! made-up model names that count nowhere.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tessera::tenancy::TenantId;
use tessera::usage::{CallUsage, UsageRecorder, UsageService};

use crate::helpers::{TestApp, assert_problem, spawn_app};

const ADD: &[u8] = include_bytes!("../fixtures/models/add_fp32.onnx");

struct Tenant {
    slug: String,
    id: TenantId,
    owner: String,
    /// An API key with the inference role.
    key: String,
}

async fn tenant(app: &TestApp, admin: &str, slug: &str) -> Tenant {
    let created = app.create_tenant(admin, slug, json!({})).await;
    app.add_member(admin, slug, &format!("owner@{slug}.test"), "owner").await;
    let owner = app.session(&format!("owner@{slug}.test"), Some(slug)).await.0;
    let key = app.create_api_key(&owner, slug, "inference").await["secret"].as_str().unwrap().to_owned();
    let id = TenantId(created["id"].as_str().unwrap().parse().unwrap());
    Tenant { slug: slug.to_owned(), id, owner, key }
}

impl Tenant {
    async fn adder(&self, app: &TestApp) {
        let body = json!({ "name": "adder", "framework": "onnx", "deterministic": true, "serving": { "cache_ttl_seconds": 60 } });
        let response = app.post_json(&format!("/v1/tenants/{}/models", self.slug), Some(&self.owner), &body).await;
        assert_eq!(response.status(), 201);
        let url = app.url(&format!("/v1/tenants/{}/models/adder/versions", self.slug));
        let response =
            app.client.post(url).bearer_auth(&self.owner).header("content-type", "application/octet-stream").body(ADD.to_vec()).send().await.unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    }

    async fn usage(&self, app: &TestApp, token: &str, query: &str) -> Value {
        let response = app.get_as(&format!("/v1/tenants/{}/usage?{query}", self.slug), token).await;
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }
}

fn add_request(rows: usize, offset: f32) -> Vec<u8> {
    let x: Vec<f32> = (0..rows * 4).map(|i| i as f32 + offset).collect();
    let body = json!({ "inputs": [
        { "name": "x", "shape": [rows, 4], "datatype": "FP32", "data": x },
        { "name": "y", "shape": [rows, 4], "datatype": "FP32", "data": vec![0.5f32; rows * 4] },
    ]});
    serde_json::to_vec(&body).unwrap()
}

/// Sends an inference request; returns (status, cache header, response body length).
async fn infer(app: &TestApp, token: &str, model: &str, body: &[u8]) -> (u16, String, usize) {
    let response = app
        .client
        .post(app.url(&format!("/v2/models/{model}/infer")))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let cache = response.headers().get("tessera-cache").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, cache, response.bytes().await.unwrap().len())
}

fn ok(ms: u64) -> CallUsage {
    CallUsage { rows: 2, cache_hit: false, bytes_in: 100, bytes_out: 50, outcome: Ok(Duration::from_millis(ms)) }
}

/// Hours since the epoch of an RFC 3339 instant.
fn hour_of(rfc3339: &str) -> i64 {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).unwrap();
    t.unix_timestamp() / 3600
}

fn bucket_sum(buckets: &[Value], field: &str) -> i64 {
    buckets.iter().map(|b| b[field].as_i64().unwrap()).sum()
}

#[tokio::test]
async fn inference_calls_show_up_as_usage_after_a_flush() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.adder(&app).await;

    let (mut calls, mut hits, mut rows, mut bytes_in, mut bytes_out) = (0, 0, 0, 0, 0);
    let request = add_request(3, 0.0);
    // A miss, then the same inputs until one is answered from the cache (it is stored
    // asynchronously).
    for _ in 0..50 {
        let (status, cache, len) = infer(&app, &acme.key, "adder", &request).await;
        assert_eq!(status, 200);
        calls += 1;
        rows += 3;
        bytes_in += request.len() as i64;
        bytes_out += len as i64;
        if cache == "hit" {
            hits += 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hits, 1, "the cache never answered");
    // Inputs the model refuses: counted as an error of the version, by code.
    let bad = serde_json::to_vec(&json!({ "inputs": [{ "name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3] }] })).unwrap();
    assert_eq!(infer(&app, &acme.key, "adder", &bad).await.0, 422);
    calls += 1;
    bytes_in += bad.len() as i64;
    // A model that does not exist: no version to count it against.
    assert_eq!(infer(&app, &acme.key, "no-such-model", &request).await.0, 404);

    let flushed = app.state.usage.flush().await.unwrap();
    assert_eq!(flushed.rows, 1);

    let report = acme.usage(&app, &acme.owner, "").await;
    assert_eq!(report["granularity"], "hour");
    let buckets = report["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 1, "{report}");
    let b = &buckets[0];
    assert_eq!((b["model"].as_str().unwrap(), b["version"].as_i64().unwrap()), ("adder", 1));
    assert_eq!(b["calls"], calls);
    assert_eq!(b["rows"], rows);
    assert_eq!(b["cache_hits"], hits);
    assert_eq!(b["errors"], json!({ "invalid_input": 1 }));
    assert_eq!(b["bytes_in"], bytes_in);
    assert_eq!(b["bytes_out"], bytes_out);
    let (p50, p99) = (b["p50_ms"].as_f64().unwrap(), b["p99_ms"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 < 30_000.0, "p50 {p50}, p99 {p99}");
    assert!(b["start"].as_str().unwrap().ends_with(":00:00Z"), "{b}");
    assert_eq!(report["next_cursor"], Value::Null);
    assert_eq!(report["quota"]["models"], json!({ "used": 1, "limit": 100 }));
    assert!(report["quota"]["storage_bytes"]["used"].as_i64().unwrap() > 0);
    assert_eq!(report["quota"]["rate_limit_per_second"], 1000);

    // Filters: another model or version reads nothing.
    assert_eq!(acme.usage(&app, &acme.owner, "model=adder&version=1").await["buckets"].as_array().unwrap().len(), 1);
    assert!(acme.usage(&app, &acme.owner, "model=adder&version=2").await["buckets"].as_array().unwrap().is_empty());
    assert!(acme.usage(&app, &acme.owner, "model=other").await["buckets"].as_array().unwrap().is_empty());
    // Nothing left to flush: the counts went to Postgres once.
    assert_eq!(app.state.usage.flush().await.unwrap().rows, 0);
    assert_eq!(acme.usage(&app, &acme.owner, "").await["buckets"][0]["calls"], calls);
}

#[tokio::test]
async fn flushes_and_processes_add_up_and_days_are_the_sum_of_their_hours() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    let model: Arc<str> = Arc::from("adder");
    let artifact = uuid::Uuid::new_v4();
    let (h1, h2) = (hour_of("2026-11-30T03:00:00Z"), hour_of("2026-11-30T17:00:00Z"));
    let recorder = app.state.usage.recorder();

    // Two flushes of one process into the same hour add.
    for _ in 0..10 {
        recorder.record_at(h1, acme.id, artifact, &model, 1, ok(1));
    }
    app.state.usage.flush().await.unwrap();
    recorder.record_at(h1, acme.id, artifact, &model, 1, CallUsage { cache_hit: true, ..ok(1) });
    recorder.record_at(h1, acme.id, artifact, &model, 1, CallUsage { outcome: Err(tessera::error::Code::Overloaded), rows: 0, bytes_out: 0, ..ok(0) });
    app.state.usage.flush().await.unwrap();

    // A second process (its own recorder) flushing at the same moment adds too.
    let other = UsageService::new(app.state.db.clone(), UsageRecorder::new(), app.state.registry.clone());
    for _ in 0..5 {
        recorder.record_at(h2, acme.id, artifact, &model, 1, ok(100));
        other.recorder().record_at(h2, acme.id, uuid::Uuid::new_v4(), &model, 1, ok(100));
    }
    other.recorder().record_at(h2, acme.id, artifact, &model, 1, CallUsage { outcome: Err(tessera::error::Code::Overloaded), rows: 0, bytes_out: 0, ..ok(0) });
    // Version 2 is another artifact.
    other.recorder().record_at(h2, acme.id, uuid::Uuid::new_v4(), &model, 2, ok(1));
    let (a, b) = tokio::join!(app.state.usage.flush(), other.flush());
    assert_eq!((a.unwrap().rows, b.unwrap().rows), (1, 2));

    let window = "from=2026-11-30T00:00:00Z&to=2026-12-01T00:00:00Z";
    let hours = acme.usage(&app, &acme.owner, &format!("granularity=hour&{window}")).await;
    let hours = hours["buckets"].as_array().unwrap().clone();
    let keys: Vec<(&str, i64)> = hours.iter().map(|b| (b["start"].as_str().unwrap(), b["version"].as_i64().unwrap())).collect();
    assert_eq!(keys, [("2026-11-30T03:00:00Z", 1), ("2026-11-30T17:00:00Z", 1), ("2026-11-30T17:00:00Z", 2)]);
    assert_eq!(hours[0]["calls"], 12);
    assert_eq!(hours[0]["cache_hits"], 1);
    assert_eq!(hours[0]["errors"], json!({ "overloaded": 1 }));
    assert_eq!(hours[1]["calls"], 11);
    assert_eq!(hours[1]["errors"], json!({ "overloaded": 1 }));

    let days = acme.usage(&app, &acme.owner, &format!("granularity=day&{window}")).await;
    assert_eq!(days["from"], "2026-11-30T00:00:00Z");
    let days = days["buckets"].as_array().unwrap();
    assert_eq!(days.len(), 2, "one bucket per version: {days:?}");
    let v1: Vec<Value> = hours.iter().filter(|b| b["version"] == 1).cloned().collect();
    let day = &days[0];
    assert_eq!((day["start"].as_str().unwrap(), day["version"].as_i64().unwrap()), ("2026-11-30T00:00:00Z", 1));
    for field in ["calls", "rows", "cache_hits", "bytes_in", "bytes_out"] {
        assert_eq!(day[field].as_i64().unwrap(), bucket_sum(&v1, field), "{field}");
    }
    assert_eq!(day["errors"], json!({ "overloaded": 2 }));
    // Percentiles come from the merged histograms: ten calls of 1 ms, ten of 100 ms.
    let near = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() <= want / 16.0;
    assert!(near(&day["p50_ms"], 1.0) && near(&day["p99_ms"], 100.0), "{day}");
    assert!(near(&hours[0]["p99_ms"], 1.0) && near(&hours[1]["p50_ms"], 100.0));

    // Pages of one bucket walk the same list.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let after = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let page = acme.usage(&app, &acme.owner, &format!("{window}&limit=1{after}")).await;
        walked.extend(page["buckets"].as_array().unwrap().clone());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(walked, hours);

    // The CSV export: a header, then one row per bucket.
    let response = app.get_as(&format!("/v1/tenants/acme/usage/export?{window}&format=csv"), &acme.owner).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let text = response.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "start,model,version,calls,rows,errors,errors_by_code,cache_hits,p50_ms,p99_ms,bytes_in,bytes_out");
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[1].starts_with("2026-11-30T03:00:00Z,adder,1,12,22,1,overloaded=1,1,"), "{}", lines[1]);
    let day_csv = app.get_as(&format!("/v1/tenants/acme/usage/export?granularity=day&{window}"), &acme.owner).await.text().await.unwrap();
    assert_eq!(day_csv.lines().count(), 3, "{day_csv}");
}

#[tokio::test]
async fn usage_is_the_tenants_own_and_only_for_those_who_may_read_it() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = app.tenant_with_members(&admin, "acme").await;
    let globex = tenant(&app, &admin, "globex").await;
    globex.adder(&app).await;
    let owner = app.session(&acme.emails["owner"], Some("acme")).await.0;
    let acme_t = Tenant {
        slug: "acme".into(),
        id: TenantId(acme.id.parse().unwrap()),
        owner: owner.clone(),
        key: acme.inference_key.clone(),
    };
    acme_t.adder(&app).await;
    for _ in 0..3 {
        assert_eq!(infer(&app, &acme_t.key, "adder", &add_request(1, 0.0)).await.0, 200);
    }
    for _ in 0..5 {
        assert_eq!(infer(&app, &globex.key, "adder", &add_request(1, 0.0)).await.0, 200);
    }
    app.state.usage.flush().await.unwrap();

    let mine = acme_t.usage(&app, &owner, "").await;
    assert_eq!(mine["buckets"].as_array().unwrap().len(), 1);
    assert_eq!(mine["buckets"][0]["calls"], 3, "acme's usage never includes globex's calls");
    assert_eq!(globex.usage(&app, &globex.owner, "").await["buckets"][0]["calls"], 5);

    // Another tenant's usage does not exist for acme, whoever asks.
    for path in ["/v1/tenants/globex/usage", "/v1/tenants/globex/usage/export"] {
        assert_problem(app.get_as(path, &owner).await, 404, "not_found").await;
        assert_problem(app.get_as(path, &acme.admin_key).await, 404, "not_found").await;
    }
    for role in ["admin", "auditor"] {
        let token = app.session(&acme.emails[role], Some("acme")).await.0;
        assert_eq!(acme_t.usage(&app, &token, "").await["buckets"][0]["calls"], 3, "{role}");
    }
    for role in ["inference", "ml_engineer"] {
        let token = app.session(&acme.emails[role], Some("acme")).await.0;
        assert_problem(app.get_as("/v1/tenants/acme/usage", &token).await, 403, "forbidden").await;
        assert_problem(app.get_as("/v1/tenants/acme/usage/export", &token).await, 403, "forbidden").await;
    }
    assert_problem(app.get_as("/v1/tenants/acme/usage", &acme.inference_key).await, 403, "forbidden").await;
}

#[tokio::test]
async fn bad_windows_and_parameters_are_refused_with_a_problem() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    // Each parameter valid alone, but not together.
    for query in [
        "from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
        "from=2026-12-01T00:00:00Z&to=2026-12-01T00:00:00Z",
        "from=2026-10-01T00:00:00Z&to=2026-12-01T00:00:00Z",
        "granularity=day&from=2026-01-01T00:00:00Z&to=2026-12-01T00:00:00Z",
        "version=1",
    ] {
        let response = app.get_as(&format!("/v1/tenants/acme/usage?{query}"), &acme.owner).await;
        assert_problem(response, 422, "unprocessable").await;
    }
    for query in [
        "from=yesterday",
        "to=2026-12-01",
        "granularity=week",
        "model=adder&version=0",
        "model=adder&version=99999999999",
        "model=..%2Fetc",
        "limit=0",
        "limit=10001",
        "cursor=not-a-cursor",
        "granularity=day&from=9999-12-31T00:00:00Z&to=9999-12-31T23:59:59Z",
    ] {
        let response = app.get_as(&format!("/v1/tenants/acme/usage?{query}"), &acme.owner).await;
        assert_problem(response, 400, "invalid_query").await;
    }
    let response = app.get_as("/v1/tenants/acme/usage/export?format=json", &acme.owner).await;
    assert_problem(response, 400, "invalid_query").await;
    let response = app.get_as("/v1/tenants/acme/usage/export?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z", &acme.owner).await;
    assert_problem(response, 422, "unprocessable").await;
    // Every cursor the schema allows is a position, however far before 1970 or after 9999.
    for cursor in ["-547818257116:2133114263:ZSN0", "999999999999:1:a", "-1:0:a"] {
        acme.usage(&app, &acme.owner, &format!("cursor={cursor}")).await;
    }
    // The longest windows allowed are accepted.
    acme.usage(&app, &acme.owner, "from=2026-10-31T00:00:00Z&to=2026-12-01T00:00:00Z").await;
    acme.usage(&app, &acme.owner, "granularity=day&from=2026-09-01T00:00:00Z&to=2026-12-03T00:00:00Z").await;
}

#[tokio::test]
async fn made_up_model_names_create_no_usage() {
    let app = spawn_app().await;
    let admin = app.platform_admin().await;
    let acme = tenant(&app, &admin, "acme").await;
    acme.adder(&app).await;
    let request = add_request(1, 0.0);
    for i in 0..300 {
        let (status, _, _) = infer(&app, &acme.key, &format!("bogus-{i}-{}", uuid::Uuid::new_v4().simple()), &request).await;
        assert_eq!(status, 404);
    }
    // The flood left nothing in memory and nothing in the table.
    assert_eq!(app.state.usage.flush().await.unwrap().rows, 0);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_hourly").fetch_one(&app.db).await.unwrap();
    assert_eq!(stored, 0);
    assert!(acme.usage(&app, &acme.owner, "").await["buckets"].as_array().unwrap().is_empty());
    // Real calls still count.
    assert_eq!(infer(&app, &acme.key, "adder", &request).await.0, 200);
    assert_eq!(app.state.usage.flush().await.unwrap().rows, 1);
}
