//! The cost of auditing every call: a minimal authenticated request (API key, the real
//! middleware stack, in process) with and without a per-call audit event through the batched
//! audit sink. The sink's writer runs on the same single thread, so its hashing, JSON and
//! database work is included in the audited figure. A third figure takes the same request
//! for a tenant in `aggregated` mode: the event is built and handed over as for every call, but
//! the writer only counts it. The difference between the two audited figures is the writer's
//! and Postgres's share; the rest of the cost is the request path's.
//!
//!     deploy/local/bench.sh audit_write

#[path = "../api/helpers.rs"]
#[allow(dead_code, unused_imports)]
mod helpers;

use std::time::Instant;

use actix_web::{App, HttpResponse, test, web};
use serde_json::json;
use tessera::audit::sink::CallEvent;
use tessera::audit::{AuditActor, Outcome};
use tessera::request::RequestInfo;
use tessera::audit::sink::AuditSink;
use tessera::http::authenticate::Authenticate;
use tessera::http::guard::Guarded;
use tessera::identity::perm;

const ROUNDS: usize = 5;
const PER_ROUND: usize = 20_000;

async fn plain(_guard: Guarded<{ perm::INFERENCE_RUN }>) -> HttpResponse {
    HttpResponse::NoContent().finish()
}

async fn audited(guard: Guarded<{ perm::INFERENCE_RUN }, AuditSink>, info: RequestInfo) -> HttpResponse {
    let Ok(tenant) = guard.tenant() else {
        return HttpResponse::NotFound().finish();
    };
    let event = CallEvent {
        tenant: tenant.id,
        actor: AuditActor::from(&guard.principal),
        model: "bench".into(),
        version: None,
        outcome: Outcome::Success,
        cache: "bypass",
        rows: 1,
        code: None,
        not_recordable: false,
        info,
    };
    guard.call(event).await;
    HttpResponse::NoContent().finish()
}

fn main() {
    actix_web::rt::System::new().block_on(run());
}

async fn run() {
    let app = helpers::spawn_app().await;
    let admin = app.platform_admin().await;
    app.create_tenant(&admin, "bench", json!({ "rate_limit_per_second": 10_000_000, "rate_limit_burst": 10_000_000 })).await;
    let key = app.create_api_key(&admin, "bench", "inference").await["secret"].as_str().unwrap().to_owned();
    let aggregated = app.create_tenant(&admin, "bench-agg", json!({ "rate_limit_per_second": 10_000_000, "rate_limit_burst": 10_000_000 })).await;
    sqlx::query("INSERT INTO audit_settings (tenant_id, inference_mode) VALUES ($1::uuid, 'aggregated') ON CONFLICT (tenant_id) DO UPDATE SET inference_mode = 'aggregated'")
        .bind(aggregated["id"].as_str().unwrap())
        .execute(&app.db)
        .await
        .unwrap();
    let key_agg = app.create_api_key(&admin, "bench-agg", "inference").await["secret"].as_str().unwrap().to_owned();
    let state = app.state.clone();
    let service = test::init_service(
        App::new()
            .app_data(web::Data::new(()))
            .app_data(web::Data::new(state.audit_sink.clone()))
            .route("/plain", web::get().to(plain))
            .route("/audited", web::get().to(audited))
            .wrap(Authenticate::new(state.authenticator.clone(), state.limiter.clone()))
            .wrap(tessera::http::edge::Edge::new(state.metrics.clone(), state.draining.clone())),
    )
    .await;
    let (header, header_agg) = (format!("Bearer {key}"), format!("Bearer {key_agg}"));
    let mut best = [f64::MAX; 3];
    for round in 0..=ROUNDS {
        for (i, (path, header)) in [("/plain", &header), ("/audited", &header), ("/audited", &header_agg)].into_iter().enumerate() {
            let started = Instant::now();
            for _ in 0..PER_ROUND {
                let request = test::TestRequest::get().uri(path).insert_header(("authorization", header.as_str()));
                let response = test::call_service(&service, request.to_request()).await;
                debug_assert_eq!(response.status(), 204);
            }
            // Audited work is only done once the sink has written it.
            state.audit_sink.flush().await;
            let ns = started.elapsed().as_nanos() as f64 / PER_ROUND as f64;
            if round > 0 {
                best[i] = best[i].min(ns);
            }
        }
    }
    let written: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE action = 'inference.call'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    println!("per-call audit cost, in process, one thread, best of {ROUNDS} rounds x {PER_ROUND} requests");
    println!("  auditing off  {:>8.0} ns/request", best[0]);
    println!("  auditing on   {:>8.0} ns/request  (events written: {written})", best[1]);
    println!("  aggregated mode {:>6.0} ns/request", best[2]);
    println!("  throughput with auditing on: {:.1}% of off ({:.1}% loss)", 100.0 * best[0] / best[1], 100.0 * (1.0 - best[0] / best[1]));
    println!(
        "  per call: {:.0} ns on the request path, {:.0} ns in the writer and Postgres",
        best[2] - best[0],
        best[1] - best[2]
    );
}
