//! Operational endpoints: liveness and readiness on the API's port, unauthenticated by design
//! (orchestrators call them) and revealing nothing tenant-specific; metrics on a listener of
//! their own, for operators only.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{Code, PROBLEM_JSON, Problem};
use crate::redis_store::RedisStore;

const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Set once SIGTERM arrives: the process serves on while load balancers take it out of
/// rotation (readiness fails, every response closes its connection), then stops.
#[derive(Clone, Default)]
pub struct Draining(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Draining {
    pub fn start(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_on(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What readiness probes ask: the shared dependencies, and nothing else of the application.
#[derive(Clone)]
pub struct Probes {
    db: sqlx::PgPool,
    redis: RedisStore,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    draining: Draining,
}

impl Probes {
    pub fn new(db: sqlx::PgPool, redis: RedisStore, metrics: std::sync::Arc<crate::metrics::Metrics>, draining: Draining) -> Self {
        Self { db, redis, metrics, draining }
    }

    /// Whether Postgres answers. Why it does not goes to the log: these probes are
    /// unauthenticated, and a driver's error can name hosts and roles.
    pub async fn postgres(&self, timeout: Duration) -> Result<(), &'static str> {
        crate::db::ping(&self.db, timeout).await.map_err(|reason| {
            tracing::warn!(%reason, "postgres is not ready");
            "unavailable"
        })
    }

    pub async fn redis(&self, timeout: Duration) -> Result<(), &'static str> {
        self.redis.ping(timeout).await.map_err(|reason| {
            tracing::warn!(%reason, "redis is not ready");
            "unavailable"
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct Liveness {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, or `degraded` while a dependency the pod can serve without is down.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// Each dependency with `ok` or the reason it failed.
    #[schema(example = json!({"postgres": "ok", "redis": "ok"}))]
    pub checks: BTreeMap<&'static str, String>,
    /// The dependencies that are down while the pod goes on serving without them.
    #[schema(example = json!([]))]
    pub degraded: Vec<&'static str>,
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

/// Redis holds only what Tessera can do without for a while: the result cache (calls run the
/// model instead), rate-limit and login-throttle counters (they fail open, as
/// `tenancy::rate_limit` explains), the job stream (submissions wait in Postgres for the
/// dispatcher). Readiness that failed on it would take every pod out of rotation at once,
/// turning a Redis blip into a full outage. The body names the dependency only: what its loss
/// switches off is for operators (logs, metrics, the README), not for anonymous callers.
const WITHOUT_REDIS: &str = "redis";

/// Readiness: whether this pod can serve. Postgres is required (no caller is authenticated or
/// audited without it); Redis is not: while it is down the answer stays 200 with `degraded`
/// naming it. Both outcomes are also the `tessera_dependency_up` gauge. A process
/// draining before it stops is not ready, whatever its dependencies.
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, body = Readiness, description = "The pod can serve, possibly degraded"),
        (status = 503, body = NotReady, content_type = "application/problem+json",
         description = "Draining before shutdown, or a required dependency is unavailable (`checks` names it)"),
    )
)]
#[get("/readyz")]
pub async fn readyz(probes: web::Data<Probes>) -> HttpResponse {
    if probes.draining.is_on() {
        let problem = crate::error::ApiError::new(Code::ServiceUnavailable, "not ready: draining before shutdown").problem();
        return HttpResponse::ServiceUnavailable()
            .content_type(PROBLEM_JSON)
            .json(NotReady { problem, checks: BTreeMap::from([("draining", "yes".to_owned())]) });
    }
    let (postgres, redis) = tokio::join!(probes.postgres(PROBE_TIMEOUT), probes.redis(PROBE_TIMEOUT));
    probes.metrics.dependency_up("postgres", postgres.is_ok());
    probes.metrics.dependency_up("redis", redis.is_ok());
    let mut checks = BTreeMap::new();
    checks.insert("postgres", postgres.err().unwrap_or("ok").to_owned());
    checks.insert("redis", redis.err().unwrap_or("ok").to_owned());
    if postgres.is_err() {
        let problem = crate::error::ApiError::new(Code::ServiceUnavailable, "not ready: postgres unavailable").problem();
        return HttpResponse::ServiceUnavailable()
            .content_type(PROBLEM_JSON)
            .insert_header((actix_web::http::header::RETRY_AFTER, 2))
            .json(NotReady { problem, checks });
    }
    let degraded: Vec<&'static str> = if redis.is_err() { vec![WITHOUT_REDIS] } else { Vec::new() };
    let status = if degraded.is_empty() { "ready" } else { "degraded" };
    HttpResponse::Ok().json(Readiness { status, checks, degraded })
}

async fn healthz_text() -> HttpResponse {
    HttpResponse::Ok().json(Liveness { status: "ok" })
}

/// The operators' listener as `telemetry.metrics_address` and `metrics_token` configure it:
/// its port and server, or `None` when the address is empty. `serve` and `worker` both bind it here.
pub fn bind_metrics_server(
    telemetry: &crate::config::TelemetrySettings,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> anyhow::Result<Option<(u16, actix_web::dev::Server)>> {
    let address = telemetry.metrics_address.as_str();
    if address.is_empty() {
        return Ok(None);
    }
    let listener = std::net::TcpListener::bind(address).map_err(|e| {
        anyhow::anyhow!("cannot bind telemetry.metrics_address {address}: {e} (set it to another address, or empty)")
    })?;
    let port = listener.local_addr()?.port();
    Ok(Some((port, metrics_server(listener, metrics, telemetry.metrics_token.clone())?)))
}

/// The operators' listener: `/metrics` (and `/healthz`) apart from the API, because metrics
/// name every tenant and model. With a token configured, the scraper must send it as a bearer token.
fn metrics_server(
    listener: std::net::TcpListener,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    token: Option<secrecy::SecretString>,
) -> std::io::Result<actix_web::dev::Server> {
    let token = web::Data::new(MetricsToken(token));
    let metrics = web::Data::from(metrics);
    Ok(actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(token.clone())
            .app_data(metrics.clone())
            .route("/metrics", web::get().to(metrics_text))
            // Liveness for processes without the API (`tessera worker`).
            .route("/healthz", web::get().to(healthz_text))
            .default_service(web::to(|| async { HttpResponse::NotFound().finish() }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run())
}

struct MetricsToken(Option<secrecy::SecretString>);

impl MetricsToken {
    fn admits(&self, request: &actix_web::HttpRequest) -> bool {
        use secrecy::ExposeSecret;
        use subtle::ConstantTimeEq;
        let Some(expected) = &self.0 else { return true };
        let presented = request
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Compared as digests: equal lengths, and no timing signal about the token's length.
        let digest = |text: &str| <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes());
        bool::from(digest(presented).as_slice().ct_eq(digest(expected.expose_secret()).as_slice()))
    }
}

async fn metrics_text(
    request: actix_web::HttpRequest,
    token: web::Data<MetricsToken>,
    metrics: web::Data<crate::metrics::Metrics>,
) -> HttpResponse {
    if !token.admits(&request) {
        return HttpResponse::Unauthorized().insert_header(("www-authenticate", "Bearer realm=\"tessera-metrics\"")).finish();
    }
    HttpResponse::Ok()
        .insert_header(ContentType(
            "application/openmetrics-text; version=1.0.0; charset=utf-8".parse().expect("static mime"),
        ))
        .body(metrics.render())
}
