//! Builds the application: shared state, the route table, middleware order and the server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpServer, web};
use sqlx::PgPool;
use tracing_actix_web::TracingLogger;
use utoipa_actix_web::AppExt;
use utoipa_actix_web::service_config::ServiceConfig;
use utoipa_swagger_ui::SwaggerUi;

use secrecy::ExposeSecret;

use crate::audit::Auditor;
use crate::audit::notary::Notary;
use crate::audit::sink::AuditSink;
use crate::audit::signing::AuditSigner;
use crate::config::Settings;
use crate::crypto::MasterKeys;
use crate::inference::InferenceService;
use crate::jobs::JobService;
use crate::jobs::queue::JobQueue;
use crate::inference::cache::ResultCache;
use crate::inference::engine::OnnxRuntime;
use crate::inference::models::ModelManager;
use crate::registry::RegistryService;
use crate::registry::keys::KeyService;
use crate::registry::store::ArtifactStore;
use crate::identity::authenticate::{Authenticate, Authenticator};
use crate::identity::jwt::Keyring;
use crate::identity::passwords::Passwords;
use crate::identity::secrets::CredentialHasher;
use crate::identity::service::IdentityService;
use crate::identity::throttle::LoginThrottle;
use crate::tenancy::directory::TenantDirectory;
use crate::tenancy::rate_limit::RateLimiter;
use crate::tenancy::service::TenantService;
use crate::http::{edge::Edge, extract, fallback, health};
use crate::metrics::Metrics;
use crate::redis_store::RedisStore;
use crate::telemetry::TesseraRootSpan;

/// Process-wide state shared by every worker. Cheap to clone.
///
/// `db` connects as the application role, which is subject to row-level security: there is no
/// pool here that could bypass it.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: PgPool,
    pub redis: RedisStore,
    pub metrics: Arc<Metrics>,
    pub tenants: TenantDirectory,
    pub keyring: Arc<Keyring>,
    pub authenticator: Arc<Authenticator>,
    pub limiter: RateLimiter,
    pub identity: IdentityService,
    pub tenant_admin: TenantService,
    pub auditor: Auditor,
    pub audit_signer: Arc<AuditSigner>,
    /// Signs checkpoints, as rows and as digests in the object store.
    pub notary: Notary,
    /// Batched writer for per-call events (inference); see `audit::sink`.
    pub audit_sink: AuditSink,
    /// Tenant and data keys of the model registry.
    pub keys: KeyService,
    pub registry: RegistryService,
    pub inference: InferenceService,
    pub jobs: JobService,
}

impl AppState {
    /// Connects lazily to Postgres and Redis: nothing here waits for either.
    pub fn new(settings: Settings) -> anyhow::Result<Self> {
        crate::tls::install_crypto_provider();
        let db = crate::db::connect_lazy(&settings.database)?;
        let redis = RedisStore::connect_lazy(&settings.redis)?;
        let auth = &settings.auth;
        let keyring = Arc::new(
            Keyring::new(auth.jwt_signing_keys.expose_secret(), &auth.issuer, &auth.audience)
                .map_err(|e| anyhow::anyhow!("auth.jwt_signing_keys: {e}"))?,
        );
        let hasher = CredentialHasher::new(&auth.api_key_secret);
        let tenants = TenantDirectory::new(db.clone());
        let auditor = Auditor::new();
        let audit_signer = Arc::new(
            AuditSigner::new(settings.audit.signing_keys.expose_secret())
                .map_err(|e| anyhow::anyhow!("audit.signing_keys: {e}"))?,
        );
        let authenticator = Arc::new(Authenticator::new(keyring.clone(), hasher.clone(), db.clone(), tenants.clone()));
        let identity = IdentityService::new(
            db.clone(),
            keyring.clone(),
            Passwords::new(auth)?,
            hasher.clone(),
            LoginThrottle::new(redis.clone(), auth),
            tenants.clone(),
            authenticator.clone(),
            auditor.clone(),
            auth,
        );
        let tenant_admin = TenantService::new(
            db.clone(),
            tenants.clone(),
            identity.clone(),
            hasher,
            authenticator.clone(),
            auditor.clone(),
            auth.invitation_ttl_seconds,
        );
        let audit_sink = AuditSink::start(db.clone(), auditor.clone());
        let keys = KeyService::new(Arc::new(
            MasterKeys::parse(settings.registry.master_keys.expose_secret())
                .map_err(|e| anyhow::anyhow!("registry.master_keys: {e}"))?,
        ));
        let artifacts = ArtifactStore::from_settings(&settings.registry.storage)?;
        let notary = Notary::new(audit_signer.clone(), artifacts.object_store());
        let registry = RegistryService::new(
            db.clone(),
            artifacts,
            keys.clone(),
            auditor.clone(),
            settings.registry.max_artifact_bytes,
            crate::registry::model::ServingLimits {
                max_threads: settings.inference.tenant_max_threads,
                max_cache_ttl_seconds: settings.inference.max_cache_ttl_seconds,
            },
        );
        let metrics = Metrics::new();
        // Operator commands build this state too and need no ONNX Runtime; the server refuses
        // to start without one (`Application::build`).
        let runtime = OnnxRuntime::load(Some(&settings.inference.onnxruntime_path));
        let models = Arc::new(ModelManager::new(registry.clone(), runtime, settings.inference.clone(), metrics.inference.clone()));
        let cache = Arc::new(ResultCache::new(redis.clone(), Duration::from_millis(settings.inference.cache_timeout_ms)));
        let jobs = JobService::new(
            db.clone(),
            registry.clone(),
            models.clone(),
            auditor.clone(),
            JobQueue::new(redis.clone()),
            settings.jobs.clone(),
        );
        let inference = InferenceService::new(models, cache, audit_sink.clone(), metrics.inference.clone());
        Ok(Self {
            jobs,
            inference,
            registry,
            keys,
            audit_sink,
            settings: Arc::new(settings),
            limiter: RateLimiter::new(redis.clone()),
            db,
            redis,
            metrics,
            tenants,
            keyring,
            authenticator,
            identity,
            tenant_admin,
            auditor,
            audit_signer,
            notary,
        })
    }
}

/// The route table. Both the server and `tessera openapi` are built from it.
pub fn routes(cfg: &mut ServiceConfig) {
    use crate::identity::routes as auth;
    use crate::inference::routes as oip;
    use crate::jobs::routes as jobs;
    use crate::registry::routes as models;
    use crate::tenancy::routes as tenancy;
    // The router tries routes in this order, matching each dynamic one with a regex: the
    // inference routes, by far the hottest, come first.
    cfg.service(oip::infer_latest)
        .service(oip::infer_version)
        .service(oip::server_metadata)
        .service(oip::live)
        .service(oip::ready)
        .service(oip::model_metadata)
        .service(oip::version_metadata)
        .service(oip::model_ready)
        .service(oip::version_ready)
        .service(health::healthz)
        .service(health::readyz)
        .service(auth::jwks)
        .service(auth::login)
        .service(auth::refresh)
        .service(auth::logout)
        .service(auth::verify)
        .service(auth::me)
        .service(auth::change_password)
        .service(auth::issue_password_reset)
        .service(auth::redeem_password_reset)
        .service(tenancy::create_tenant)
        .service(tenancy::list_tenants)
        .service(tenancy::get_tenant)
        .service(tenancy::suspend_tenant)
        .service(tenancy::resume_tenant)
        .service(tenancy::list_members)
        .service(tenancy::invite)
        .service(tenancy::list_invitations)
        .service(tenancy::revoke_invitation)
        .service(tenancy::accept_invitation)
        .service(tenancy::change_member_role)
        .service(tenancy::remove_member)
        .service(tenancy::create_api_key)
        .service(tenancy::list_api_keys)
        .service(tenancy::revoke_api_key)
        .service(crate::audit::routes::list_events)
        .service(crate::audit::routes::export_events)
        .service(crate::audit::routes::signing_keys)
        .service(crate::audit::routes::get_settings)
        .service(crate::audit::routes::put_settings)
        .service(models::create_model)
        .service(models::list_models)
        .service(models::get_model)
        .service(models::delete_model)
        .service(models::upload_version)
        .service(models::list_versions)
        .service(models::get_version)
        .service(models::download_version)
        .service(models::delete_version)
        .service(models::set_alias)
        .service(models::remove_alias)
        .service(models::rotate_tenant_key)
        .service(jobs::upload_dataset)
        .service(jobs::list_datasets)
        .service(jobs::get_dataset)
        .service(jobs::submit_job)
        .service(jobs::list_jobs)
        .service(jobs::get_job)
        .service(jobs::cancel_job)
        .service(jobs::job_output)
        .service(jobs::job_events);
}

/// What every worker's app shares, computed once.
#[derive(Clone)]
pub struct Shared {
    pub openapi: utoipa::openapi::OpenApi,
    pub allowed_methods: web::Data<fallback::AllowedMethods>,
}

impl Shared {
    pub fn new() -> Self {
        let openapi = crate::http::openapi::spec();
        let allowed_methods = web::Data::new(fallback::AllowedMethods::from_spec(&openapi));
        Self { openapi, allowed_methods }
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

/// One worker's application: state, extractor configuration, routes and middleware. Tests
/// and benchmarks drive exactly this, in process.
pub fn create_app(
    state: AppState,
    shared: Shared,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let body_limit = state.settings.server.max_body_bytes;
    let proxies = crate::net::TrustedProxies::parse(&state.settings.server.trusted_proxies)
        .expect("server.trusted_proxies was validated with the configuration");
    let (app, _) = App::new()
        .app_data(web::Data::new(state.clone()))
        .app_data(proxies)
        .app_data(shared.allowed_methods.clone())
        .app_data(extract::json_config(body_limit))
        .app_data(extract::payload_config(body_limit))
        .app_data(extract::query_config())
        .app_data(extract::path_config())
        .into_utoipa_app()
        .configure(routes)
        .split_for_parts();
    app.service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", shared.openapi))
        .default_service(web::to(fallback::route_not_found))
        // Middleware order, outermost last: Edge sees every response (request id, metrics,
        // panics), then the per-request span, then problem+json rewriting, then
        // authentication (before any handler or body extractor runs).
        .wrap(Authenticate::new(state.authenticator.clone(), state.limiter.clone()))
        .wrap(fallback::problem_rewriter())
        .wrap(TracingLogger::<TesseraRootSpan>::new())
        .wrap(Edge::new(state.metrics.clone()))
}

pub struct Application {
    port: u16,
    server: Server,
    /// The operators' `/metrics` listener, when `telemetry.metrics_address` is set.
    metrics: Option<(u16, Server)>,
    /// In-process job workers (`jobs.workers`), told to stop when the server does.
    stop_jobs: tokio::sync::watch::Sender<bool>,
    job_workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Binds the listener (port 0 picks a free one) and prepares the server without running it.
    pub fn build(state: AppState) -> anyhow::Result<Self> {
        // Better one clear error now than a failure at the first inference request.
        if let Some(error) = state.inference.models.runtime_error() {
            anyhow::bail!("inference: {error}");
        }
        let settings = state.settings.clone();
        let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.port))
            .map_err(|e| anyhow::anyhow!("cannot bind {}:{}: {e}", settings.server.host, settings.server.port))?;
        let port = listener.local_addr()?.port();

        let metrics = match settings.telemetry.metrics_address.as_str() {
            "" => None,
            address => {
                let listener = TcpListener::bind(address)
                    .map_err(|e| anyhow::anyhow!("cannot bind telemetry.metrics_address {address}: {e}"))?;
                let port = listener.local_addr()?.port();
                let server =
                    health::metrics_server(listener, state.metrics.clone(), settings.telemetry.metrics_token.clone())?;
                Some((port, server))
            }
        };

        let (stop_jobs, stopping) = tokio::sync::watch::channel(false);
        let mut job_workers = state.jobs.start_workers(settings.jobs.workers, stopping.clone());
        job_workers.push(state.identity.spawn_login_failure_flusher(stopping));

        let shared = Shared::new();
        let server = HttpServer::new(move || create_app(state.clone(), shared.clone()))
        .shutdown_timeout(settings.server.shutdown_grace_seconds)
        .keep_alive(std::time::Duration::from_secs(settings.server.keep_alive_seconds));
        let server = if settings.server.workers > 0 { server.workers(settings.server.workers) } else { server };

        let server = if settings.server.tls.enabled {
            let tls = crate::tls::server_config(&settings.server.tls)?;
            server.listen_rustls_0_23(listener, tls)?.run()
        } else {
            server.listen(listener)?.run()
        };
        Ok(Self { port, server, metrics, stop_jobs, job_workers })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the metrics listener, if there is one.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(|(port, _)| *port)
    }

    /// Serves until SIGTERM/SIGINT, then drains in-flight requests within the grace period.
    /// Job workers then hand back what they run (at its next progress report) and stop.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        // Both servers run in this task; the metrics listener stops when the API does.
        let (metrics_handle, metrics_server) = match self.metrics {
            Some((_, server)) => (Some(server.handle()), Some(server)),
            None => (None, None),
        };
        let api = async {
            let served = self.server.await;
            if let Some(handle) = metrics_handle {
                handle.stop(false).await;
            }
            served
        };
        let metrics = async {
            if let Some(server) = metrics_server {
                let _ = server.await;
            }
        };
        let (served, ()) = futures::future::join(api, metrics).await;
        let _ = self.stop_jobs.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(self.job_workers)).await;
        served
    }
}
