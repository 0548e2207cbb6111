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
use utoipa_swagger_ui::SwaggerUi;

use secrecy::ExposeSecret;

use crate::audit::Auditor;
use crate::audit::notary::Notary;
use crate::audit::service::AuditService;
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
use crate::identity::authenticate::Authenticator;
use crate::http::authenticate::Authenticate;
use crate::http::compress::CompressUnless;
use crate::identity::jwt::Keyring;
use crate::identity::passwords::Passwords;
use crate::identity::secrets::CredentialHasher;
use crate::identity::service::IdentityService;
use crate::identity::throttle::LoginThrottle;
use crate::tenancy::directory::TenantDirectory;
use crate::tenancy::rate_limit::RateLimiter;
use crate::identity::admin::TenantService;
use crate::http::{edge::Edge, extract, fallback, health};
use crate::metrics::Metrics;
use crate::redis_store::RedisStore;
use crate::telemetry::TesseraRootSpan;
use crate::usage::{UsageRecorder, UsageService};

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
    /// The audit log as its readers see it: pages, exports, keys, settings.
    pub audit: AuditService,
    /// Batched writer for per-call events (inference); see `audit::sink`.
    pub audit_sink: AuditSink,
    /// Tenant and data keys of the model registry.
    pub keys: KeyService,
    pub registry: RegistryService,
    pub inference: InferenceService,
    pub jobs: JobService,
    /// Job-stream entries waiting or running (`tessera_jobs_backlog`), what workers scale on.
    pub jobs_backlog: prometheus_client::metrics::gauge::Gauge,
    /// Turned on by SIGTERM (see `Application::run_until_stopped`).
    pub draining: crate::http::health::Draining,
    /// Usage as the inference path counts it and readers see it; flushed in the background.
    pub usage: UsageService,
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
        let audit = AuditService::new(db.clone(), auditor.clone(), notary.clone());
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
        let (metrics, (inference_metrics, jobs_backlog)) = Metrics::with(|registry| {
            let backlog = prometheus_client::metrics::gauge::Gauge::default();
            registry.register("jobs_backlog", "Jobs waiting for a worker or running, across every process", backlog.clone());
            (Arc::new(crate::inference::metrics::InferenceMetrics::register(registry)), backlog)
        });
        // Operator commands build this state too and need no ONNX Runtime; the server refuses
        // to start without one (`Application::build`).
        let runtime = OnnxRuntime::load(Some(&settings.inference.onnxruntime_path));
        let models = Arc::new(ModelManager::new(registry.clone(), runtime, settings.inference.clone(), inference_metrics.clone()));
        let cache = Arc::new(ResultCache::new(redis.clone(), Duration::from_millis(settings.inference.cache_timeout_ms), settings.inference.cache_max_entry_bytes));
        let jobs = JobService::new(
            db.clone(),
            registry.clone(),
            models.clone(),
            auditor.clone(),
            JobQueue::new(redis.clone()),
            settings.jobs.clone(),
        );
        let usage_recorder = UsageRecorder::new();
        let usage = UsageService::new(db.clone(), usage_recorder.clone(), registry.clone());
        let inference = InferenceService::new(models, cache, audit_sink.clone(), inference_metrics.clone(), usage_recorder);
        Ok(Self {
            audit,
            jobs,
            jobs_backlog,
            draining: crate::http::health::Draining::default(),
            usage,
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

/// What every worker's app shares, computed once.
#[derive(Clone)]
pub struct Shared {
    pub openapi: utoipa::openapi::OpenApi,
    pub allowed_methods: web::Data<fallback::AllowedMethods>,
}

impl Shared {
    pub fn new() -> Self {
        let openapi = crate::api::openapi::spec();
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
    // Each handler reaches the service its guard names (registry handlers that change what is
    // served also take the model manager, after their guard); public handlers get only public
    // documents. The application state as a whole is not reachable from a request.
    let (app, _) = App::new()
        .app_data(web::Data::new(()))
        .app_data(web::Data::new(state.identity.clone()))
        .app_data(web::Data::new(state.tenant_admin.clone()))
        .app_data(web::Data::new(state.audit.clone()))
        .app_data(web::Data::new(state.registry.clone()))
        .app_data(web::Data::new(state.inference.clone()))
        .app_data(web::Data::new(state.jobs.clone()))
        .app_data(web::Data::new(state.usage.clone()))
        .app_data(web::Data::from(state.inference.models.clone()))
        .app_data(web::Data::new(crate::identity::jwt::Jwks(state.keyring.jwks())))
        .app_data(web::Data::new(crate::audit::signing::PublicKeySet(state.audit_signer.public_keys())))
        .app_data(web::Data::new(crate::http::health::Probes::new(
            state.db.clone(),
            state.redis.clone(),
            state.metrics.clone(),
            state.draining.clone(),
        )))
        .app_data(proxies)
        .app_data(shared.allowed_methods.clone())
        .app_data(extract::json_config(body_limit))
        .app_data(extract::payload_config(body_limit))
        .app_data(extract::query_config())
        .app_data(extract::path_config())
        .into_utoipa_app()
        .configure(crate::api::routes)
        .split_for_parts();
    // The portal and the API reference are web pages, not API routes: outside the route table
    // and its document.
    let portal = web::get().to(crate::http::portal::serve);
    app.service(SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", shared.openapi))
        .service(web::resource(["/portal", "/portal/{path:.*}"]).route(portal))
        .default_service(web::to(fallback::route_not_found))
        // Middleware order, outermost last: Edge sees every response (request id, metrics,
        // panics), then the per-request span, then compression (gzip or zstd, as the client
        // accepts; every response on an inference route, errors included, and responses that
        // name their encoding are left alone),
        // then problem+json rewriting, then authentication (before any handler or body
        // extractor runs).
        .wrap(Authenticate::new(state.authenticator.clone(), state.limiter.clone()))
        .wrap(fallback::problem_rewriter())
        .wrap(CompressUnless::new(crate::inference::routes::is_infer_path))
        .wrap(TracingLogger::<TesseraRootSpan>::new())
        .wrap(Edge::new(state.metrics.clone(), state.draining.clone()))
}

pub struct Application {
    port: u16,
    server: Server,
    /// The operators' `/metrics` listener, when `telemetry.metrics_address` is set.
    metrics: Option<(u16, Server)>,
    /// The Open Inference Protocol over gRPC, when `server.grpc_enabled`.
    grpc: Option<crate::grpc::GrpcServer>,
    /// In-process job workers (`jobs.workers`), the login-failure flusher, the usage flusher
    /// and the audit checkpointer, told to stop when the server does.
    stop_jobs: tokio::sync::watch::Sender<bool>,
    job_workers: Vec<tokio::task::JoinHandle<()>>,
    draining: health::Draining,
    drain: Duration,
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

        let metrics = health::bind_metrics_server(&settings.telemetry, state.metrics.clone())?;
        // One certificate and key for HTTP and gRPC, read once.
        let tls = if settings.server.tls.enabled { Some(crate::tls::server_config(&settings.server.tls)?) } else { None };

        // Everything a serving process runs beside the API starts here, so that what tests
        // drive is what production runs.
        let (stop_jobs, stopping) = tokio::sync::watch::channel(false);
        let mut job_workers = state.jobs.start_workers(settings.jobs.workers, stopping.clone());
        job_workers.push(state.identity.spawn_login_failure_flusher(stopping.clone()));
        job_workers.push(state.jobs.spawn_backlog_gauge(state.jobs_backlog.clone(), stopping.clone()));
        let checkpoint_every = Duration::from_secs(settings.audit.checkpoint_interval_seconds);
        job_workers.push(state.usage.spawn_flusher(Duration::from_secs(settings.usage.flush_interval_seconds), stopping.clone()));
        job_workers.extend(crate::audit::spawn_checkpointer(state.db.clone(), state.notary.clone(), checkpoint_every, stopping));
        {
            let (models, db) = (state.inference.models.clone(), state.db.clone());
            tokio::spawn(async move {
                match models.preload_all(&db).await {
                    Ok(n) => tracing::info!(versions = n, "loading versions behind eager aliases"),
                    Err(e) => tracing::warn!(error = ?e, "could not list versions behind eager aliases"),
                }
            });
        }

        let grpc = if settings.server.grpc_enabled {
            let listener = TcpListener::bind((settings.server.host.as_str(), settings.server.grpc_port)).map_err(|e| {
                anyhow::anyhow!("cannot bind {}:{} (server.grpc_port): {e}", settings.server.host, settings.server.grpc_port)
            })?;
            let parts = crate::grpc::GrpcParts {
                inference: state.inference.clone(),
                authenticator: state.authenticator.clone(),
                limiter: state.limiter.clone(),
                probes: health::Probes::new(state.db.clone(), state.redis.clone(), state.metrics.clone(), state.draining.clone()),
                proxies: crate::net::TrustedProxies::parse(&settings.server.trusted_proxies)
                    .map_err(|e| anyhow::anyhow!("server.trusted_proxies: {e}"))?,
                max_message_bytes: settings.inference.max_request_bytes,
                call_timeout: Duration::from_millis(settings.inference.max_timeout_ms) + Duration::from_secs(30),
                tls: tls.clone(),
                threads: match settings.server.workers {
                    0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                    n => n,
                },
                max_connections: settings.server.grpc_max_connections,
                max_connections_per_client: settings.server.grpc_max_connections_per_client,
                shutdown_grace: Duration::from_secs(settings.server.shutdown_grace_seconds),
                idle_timeout: Duration::from_secs(settings.server.grpc_idle_seconds),
                draining: state.draining.clone(),
            };
            Some(crate::grpc::GrpcServer::start(listener, parts)?)
        } else {
            None
        };

        let draining = state.draining.clone();
        let shared = Shared::new();
        let server = HttpServer::new(move || create_app(state.clone(), shared.clone()))
        .shutdown_timeout(settings.server.shutdown_grace_seconds)
        // Signals are handled in `run_until_stopped`, which drains before stopping.
        .disable_signals()
        .keep_alive(std::time::Duration::from_secs(settings.server.keep_alive_seconds));
        let server = if settings.server.workers > 0 { server.workers(settings.server.workers) } else { server };

        let server = match tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls)?.run(),
            None => server.listen(listener)?.run(),
        };
        let drain = Duration::from_secs(settings.server.drain_seconds);
        Ok(Self { port, server, metrics, grpc, stop_jobs, job_workers, draining, drain })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the gRPC listener, if there is one.
    pub fn grpc_port(&self) -> Option<u16> {
        self.grpc.as_ref().map(crate::grpc::GrpcServer::port)
    }

    /// The port of the metrics listener, if there is one.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics.as_ref().map(|(port, _)| *port)
    }

    /// Serves until SIGTERM or SIGINT. SIGTERM first drains for `server.drain_seconds`
    /// (readiness fails, responses close their connections, requests are still served); then
    /// the listener closes and in-flight requests get the grace period. Job workers then hand
    /// back what they run (at its next progress report) and stop.
    pub async fn run_until_stopped(mut self) -> std::io::Result<()> {
        let (api_handle, draining, drain) = (self.server.handle(), self.draining.clone(), self.drain);
        let mut grpc = self.grpc.take();
        tokio::spawn(async move {
            let Ok(mut terminate) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
                tracing::error!("cannot listen for SIGTERM");
                return;
            };
            tokio::select! {
                _ = terminate.recv() => {
                    tracing::info!(seconds = drain.as_secs(), "SIGTERM: draining before shutdown");
                    draining.start();
                    tokio::time::sleep(drain).await;
                }
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping: no new connections; in-flight requests finish");
            api_handle.stop(true).await;
        });
        // Both servers run in this task; the metrics listener stops when the API does.
        let (metrics_handle, metrics_server) = match self.metrics {
            Some((_, server)) => (Some(server.handle()), Some(server)),
            None => (None, None),
        };
        let api = async {
            let served = self.server.await;
            // gRPC stops with HTTP: GOAWAY to its clients, then calls in flight get the grace.
            if let Some(grpc) = grpc.as_mut() {
                grpc.stop().await;
            }
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
        // Only now: tasks the gRPC runtime started (a Redis connection's driver) may serve the
        // job workers until they stop.
        drop(grpc);
        served
    }
}
