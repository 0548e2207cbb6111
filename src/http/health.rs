//! Operational endpoints: liveness, readiness and metrics. They are unauthenticated by design
//! (orchestrators and scrapers call them) and reveal nothing tenant-specific.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{Code, PROBLEM_JSON, Problem};
use crate::startup::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Serialize, ToSchema)]
pub struct Liveness {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ready")]
    pub status: &'static str,
    /// Each dependency with `ok` or the reason it failed.
    #[schema(example = json!({"postgres": "ok", "redis": "ok"}))]
    pub checks: BTreeMap<&'static str, String>,
}

/// Readiness failure: a problem document naming the failing dependencies.
#[derive(Serialize, ToSchema)]
pub struct NotReady {
    #[serde(flatten)]
    pub problem: Problem,
    pub checks: BTreeMap<&'static str, String>,
}

/// Liveness: the process is up and serving HTTP. Touches no dependency.
#[utoipa::path(tag = "operations", responses((status = 200, body = Liveness)))]
#[get("/healthz")]
pub async fn healthz() -> web::Json<Liveness> {
    web::Json(Liveness { status: "ok" })
}

/// Readiness: Postgres and Redis both answer. A 503 names each failing dependency.
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, body = Readiness),
        (status = 503, body = NotReady, content_type = "application/problem+json",
         description = "A dependency is unavailable; `checks` names it"),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (postgres, redis) =
        tokio::join!(crate::db::ping(&state.db, PROBE_TIMEOUT), state.redis.ping(PROBE_TIMEOUT));
    let mut checks = BTreeMap::new();
    let mut failing = Vec::new();
    for (name, outcome) in [("postgres", postgres), ("redis", redis)] {
        match outcome {
            Ok(()) => {
                checks.insert(name, "ok".to_owned());
            }
            Err(reason) => {
                failing.push(name);
                checks.insert(name, reason);
            }
        }
    }
    if failing.is_empty() {
        return HttpResponse::Ok().json(Readiness { status: "ready", checks });
    }
    let detail = format!("not ready: {} unavailable", failing.join(" and "));
    let problem = crate::error::ApiError::new(Code::ServiceUnavailable, detail).problem();
    HttpResponse::ServiceUnavailable()
        .content_type(PROBLEM_JSON)
        .insert_header((actix_web::http::header::RETRY_AFTER, 2))
        .json(NotReady { problem, checks })
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, content_type = "application/openmetrics-text", body = String,
               description = "Request counts and latency histograms by route template and status; build info"))
)]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType(
            "application/openmetrics-text; version=1.0.0; charset=utf-8".parse().expect("static mime"),
        ))
        .body(state.metrics.render())
}
