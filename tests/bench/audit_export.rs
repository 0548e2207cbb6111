//! Audit export throughput and memory: CSV exports of 100,000 and 1,000,000 events through the
//! HTTP API, as rows per second and the peak resident memory of the process during each export.
//! Memory must stay flat when the row count grows tenfold.
//!
//!     deploy/local/bench.sh audit_export

#[path = "memory.rs"]
mod memory;
#[path = "../api/helpers.rs"]
#[allow(dead_code, unused_imports)]
mod helpers;

use std::time::Instant;

use futures::StreamExt;
use serde_json::json;
use tessera::audit::{AuditActor, AuditEvent};
use tessera::tenancy::TenantId;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let app = helpers::spawn_app().await;
    let admin = app.platform_admin().await;
    let mut results = Vec::new();
    for (slug, rows) in [("small", 100_000usize), ("large", 1_000_000usize)] {
        let tenant = app.create_tenant(&admin, slug, json!({})).await;
        let tenant = TenantId(tenant["id"].as_str().unwrap().parse().unwrap());
        let started = Instant::now();
        let mut written = 0;
        while written < rows {
            let batch: Vec<AuditEvent> = (0..1000.min(rows - written))
                .map(|i| {
                    AuditEvent::new(Some(tenant), AuditActor::anonymous(), "bench.event")
                        .resource("thing", written + i)
                        .details(json!({ "i": written + i, "note": "a typical small payload of details" }))
                })
                .collect();
            written += batch.len();
            let mut tx = app.state.db.begin().await.unwrap();
            app.state.auditor.record(&mut tx, &Default::default(), batch).await.unwrap();
            tx.commit().await.unwrap();
        }
        eprintln!("wrote {rows} events for {slug} in {:.1}s", started.elapsed().as_secs_f64());

        let (token, _) = {
            let body = json!({ "email": format!("auditor@{slug}.test"), "role": "auditor", "password": helpers::PASSWORD });
            app.post_json(&format!("/v1/tenants/{slug}/members"), Some(&admin), &body).await;
            app.session(&format!("auditor@{slug}.test"), Some(slug)).await
        };
        let memory = memory::PeakRss::start();
        let started = Instant::now();
        let response = app.get_as(&format!("/v1/tenants/{slug}/audit/export?format=csv"), &token).await;
        assert_eq!(response.status(), 200);
        let mut stream = response.bytes_stream();
        let (mut bytes, mut lines) = (0u64, 0u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        }
        let seconds = started.elapsed().as_secs_f64();
        let grown = memory.stop();
        let events = lines.saturating_sub(2); // header and manifest
        assert!(events as usize >= rows, "exported {events} of {rows}");
        results.push((rows, events as f64 / seconds, bytes, grown, seconds));
    }
    println!("audit CSV export through HTTP (server and client in this process)");
    for (rows, per_second, bytes, peak_growth_kib, seconds) in &results {
        println!(
            "  {rows:>9} events: {per_second:>9.0} rows/s, {:.1} MiB in {seconds:.1}s, peak RSS growth during export {:.1} MiB",
            *bytes as f64 / 1048576.0,
            *peak_growth_kib as f64 / 1024.0
        );
    }
    let (small, large) = (&results[0], &results[1]);
    println!(
        "  10x the rows: {:.2}x the time, {:.2}x the peak memory growth",
        large.4 / small.4,
        (large.3.max(1)) as f64 / (small.3.max(1)) as f64
    );
}
