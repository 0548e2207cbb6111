//! The shared test harness: `spawn_app()` and its relatives.
//!
//! Postgres: `TESSERA_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! is a maintenance connection used to create one database per test, dropped when the test's
//! `TestApp` is dropped. Redis: `TESSERA_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`),
//! with a key prefix unique to the test, whose keys are deleted at the end.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use sqlx::{Connection, Executor, PgConnection, PgPool};
use tessera::config::{Environment, Settings};
use tessera::startup::{AppState, Application};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub fn maintenance_url() -> String {
    std::env::var("TESSERA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("TESSERA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var("TEST_LOG").is_ok() {
        let mut settings = test_settings();
        settings.telemetry.log_filter = "info,tessera=debug".to_owned();
        std::mem::forget(tessera::telemetry::init(&settings.telemetry));
    }
});

pub fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// The `test` environment's settings, independent of the shell's `TESSERA__*` variables.
pub fn test_settings() -> Settings {
    Settings::load_from(Environment::Test, &config_dir(), Some(Default::default())).expect("test configuration loads")
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    /// The operators' metrics listener.
    pub metrics_port: Option<u16>,
    /// The Open Inference Protocol over gRPC.
    pub grpc_port: Option<u16>,
    pub client: reqwest::Client,
    /// Owner connection to this test's database, for assertions and for tampering.
    pub db: PgPool,
    pub settings: Settings,
    pub state: AppState,
    pub database: Arc<TestDatabase>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request sent")
    }

    /// An OIP request with the binary tensor data extension: the JSON `header`, then `tensors`.
    pub async fn infer_binary(&self, token: &str, path: &str, header: &str, tensors: &[u8]) -> reqwest::Response {
        let body = [header.as_bytes(), tensors].concat();
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .header("inference-header-content-length", header.len())
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Runs SQL as the schema owner with triggers off, as an attacker with full access to the
    /// database would.
    pub async fn tamper(&self, sql: &str) {
        let mut tx = self.db.begin().await.unwrap();
        sqlx::query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    }

    /// The audit signing keys the server publishes.
    pub async fn audit_keys(&self) -> tessera::audit::verify::PublicKeys {
        let keys = self.get("/v1/audit/keys").await.text().await.unwrap();
        tessera::audit::verify::PublicKeys::parse(&keys).unwrap()
    }

    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics_port.expect("the metrics listener is on"))
    }

    pub async fn metrics_text(&self) -> String {
        self.client.get(self.metrics_url()).send().await.expect("request sent").text().await.unwrap()
    }
}

/// A database created for one test and dropped with it.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    redis_prefix: String,
    /// Where this test's app stores artifacts (the local object store backend).
    pub artifact_dir: std::path::PathBuf,
}

/// The application role's login, created once per test run (roles are cluster-wide).
static APP_ROLE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

pub fn app_role_password() -> Option<String> {
    std::env::var("TESSERA_TEST_APP_PASSWORD").ok().filter(|p| !p.is_empty())
}

async fn ensure_app_role() {
    APP_ROLE.get_or_init(|| ensure_login_role("tessera_app", "")).await;
}

/// A login role with `attributes`, with the application role's password (roles are
/// cluster-wide: created once, brought up to date after).
pub async fn ensure_login_role(name: &str, attributes: &str) {
    let mut conn = PgConnection::connect(&maintenance_url()).await.expect("Postgres is reachable");
    let password = app_role_password().map(|p| format!(" PASSWORD '{}'", p.replace('\'', "''"))).unwrap_or_default();
    let sql = format!(
        "DO $$ BEGIN CREATE ROLE {name} LOGIN {attributes}{password}; \
         EXCEPTION WHEN duplicate_object THEN ALTER ROLE {name} LOGIN {attributes}{password}; END $$"
    );
    conn.execute(sqlx::AssertSqlSafe(sql)).await.expect("login role");
}

impl TestDatabase {
    /// The same database, reached as the application role.
    pub fn app_url(&self) -> String {
        let mut url = url::Url::parse(&self.url).unwrap();
        url.set_username("tessera_app").unwrap();
        url.set_password(app_role_password().as_deref()).unwrap();
        url.to_string()
    }

    pub async fn create() -> Arc<Self> {
        ensure_app_role().await;
        let name = format!("tessera_test_{}", uuid::Uuid::new_v4().simple());
        let mut maintenance = PgConnection::connect(&maintenance_url()).await.expect("Postgres is reachable");
        maintenance.execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#))).await.expect("create test database");
        let mut url = url::Url::parse(&maintenance_url()).expect("maintenance URL parses");
        url.set_path(&name);
        let redis_prefix = format!("tessera-test:{}", uuid::Uuid::new_v4().simple());
        let artifact_dir = std::env::temp_dir().join("tessera-test-artifacts").join(&name);
        Arc::new(Self { name, url: url.to_string(), redis_prefix, artifact_dir })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let prefix = self.redis_prefix.clone();
        let _ = std::fs::remove_dir_all(&self.artifact_dir);
        // Drop runs outside any runtime we may block on, so clean up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&maintenance_url()).await {
                    let _ = conn.execute(sqlx::AssertSqlSafe(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))).await;
                }
                if let Ok(client) = redis::Client::open(redis_url()) {
                    if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                        let keys: Vec<String> =
                            redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap_or_default();
                        if !keys.is_empty() {
                            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
                        }
                    }
                }
            });
        })
        .join();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts Tessera on a random port with a fresh database; `customize` may adjust settings
/// (for example to point Postgres or Redis at an `Outage` proxy) before the app is built.
pub async fn spawn_app_with(customize: impl FnOnce(&mut Settings)) -> TestApp {
    LazyLock::force(&TRACING);
    let database = TestDatabase::create().await;
    let mut settings = test_settings();
    settings.database.url = database.url.clone();
    settings.redis.url = redis_url();
    settings.redis.key_prefix = database.redis_prefix.clone();
    settings.server.port = 0;
    settings.registry.storage.path = database.artifact_dir.clone();
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        // Where deploy/local/test.sh installs it, for runs of plain `cargo test`.
        settings.inference.onnxruntime_path = "/var/tmp/onnxruntime-1.31.1/onnxruntime/capi/libonnxruntime.so.1.31.1".into();
    }

    let db = PgPool::connect(&database.url).await.expect("connect to test database");
    tessera::db::migrate(&db).await.expect("migrations apply");
    // The application connects as the RLS-bound application role, never as the owner.
    settings.database.url = database.app_url();
    settings.database.migration_url = Some(database.url.clone());

    customize(&mut settings);
    let state = AppState::new(settings.clone()).expect("state builds");
    let app = Application::build(state.clone()).expect("application builds");
    let port = app.port();
    let metrics_port = app.metrics_port();
    let grpc_port = app.grpc_port();
    tokio::spawn(app.run_until_stopped());

    let scheme = if settings.server.tls.enabled { "https" } else { "http" };
    TestApp {
        address: format!("{scheme}://127.0.0.1:{port}"),
        port,
        metrics_port,
        grpc_port,
        client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        db,
        settings,
        state,
        database,
    }
}

/// A TCP proxy in front of a dependency that a test can take down and bring back, to observe
/// Tessera during an outage without disturbing the other tests sharing the real server.
pub struct Outage {
    pub port: u16,
    target: String,
    accept: Option<JoinHandle<()>>,
    connections: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Outage {
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut outage =
            Self { port, target: target.to_owned(), accept: None, connections: Default::default() };
        outage.accept = Some(outage.serve(listener));
        outage
    }

    fn serve(&self, listener: TcpListener) -> JoinHandle<()> {
        let target = self.target.clone();
        let connections = self.connections.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().unwrap().push(handle);
            }
        })
    }

    /// The dependency goes away: new connections are refused, open ones are cut.
    pub fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// The dependency comes back on the same port.
    pub async fn restore(&mut self) {
        // The aborted accept task releases its listener asynchronously; retry briefly.
        for _ in 0..50 {
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", self.port)).await {
                self.accept = Some(self.serve(listener));
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("could not re-bind the outage proxy on port {}", self.port);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Connects to `port` on 127.0.0.1 from `local`, another loopback address: another client.
pub async fn connect_from(local: std::net::Ipv4Addr, port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((local, 0).into()).unwrap();
    socket.connect(([127, 0, 0, 1], port).into()).await.unwrap()
}

/// Asserts a response is an RFC 9457 problem with the given status and code; returns the body.
pub async fn assert_problem(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let body: serde_json::Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["code"], code, "problem: {body}");
    assert_eq!(body["status"], status, "problem: {body}");
    assert_eq!(body["type"], format!("urn:tessera:problem:{code}"));
    assert!(body["title"].is_string() && body["detail"].is_string(), "problem: {body}");
    body
}

/// Polls `check` until it returns true or `seconds` pass.
pub async fn eventually<F, Fut>(seconds: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

pub fn db_host_port() -> String {
    let url = url::Url::parse(&maintenance_url()).unwrap();
    format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(5432))
}

pub fn redis_host_port() -> String {
    let url = url::Url::parse(&redis_url()).unwrap();
    format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(6379))
}

pub const PASSWORD: &str = "correct-horse-battery-staple";

/// The roles a test can act as, including machine credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum As {
    Anonymous,
    PlatformAdmin,
    Owner,
    Admin,
    MlEngineer,
    Auditor,
    Inference,
    InferenceKey,
    AdminKey,
}

impl As {
    pub const ALL: [As; 9] = [
        As::Anonymous,
        As::PlatformAdmin,
        As::Owner,
        As::Admin,
        As::MlEngineer,
        As::Auditor,
        As::Inference,
        As::InferenceKey,
        As::AdminKey,
    ];

    pub fn role(self) -> Option<&'static str> {
        match self {
            As::Owner => Some("owner"),
            As::Admin | As::AdminKey => Some("admin"),
            As::MlEngineer => Some("ml_engineer"),
            As::Auditor => Some("auditor"),
            As::Inference | As::InferenceKey => Some("inference"),
            As::Anonymous | As::PlatformAdmin => None,
        }
    }
}

/// A tenant with one user per role and two API keys, created through the public API.
pub struct TestTenant {
    pub slug: String,
    pub id: String,
    pub emails: std::collections::HashMap<&'static str, String>,
    pub inference_key: String,
    pub admin_key: String,
}

impl TestApp {
    pub async fn post_json(&self, path: &str, token: Option<&str>, body: &serde_json::Value) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    pub async fn get_as(&self, path: &str, token: &str) -> reqwest::Response {
        self.client.get(self.url(path)).bearer_auth(token).send().await.expect("request sent")
    }

    /// Every item of a list endpoint, following its cursors.
    pub async fn items(&self, path: &str, token: &str) -> Vec<serde_json::Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let separator = if path.contains('?') { '&' } else { '?' };
            let url = match &cursor {
                Some(c) => format!("{path}{separator}cursor={c}"),
                None => path.to_owned(),
            };
            let response = self.get_as(&url, token).await;
            assert_eq!(response.status(), 200, "GET {url}");
            let page: serde_json::Value = response.json().await.expect("a page");
            items.extend(page["items"].as_array().expect("a page has items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }

    pub async fn login(&self, email: &str, password: &str, tenant: Option<&str>) -> reqwest::Response {
        let mut body = serde_json::json!({ "email": email, "password": password });
        if let Some(tenant) = tenant {
            body["tenant"] = tenant.into();
        }
        self.post_json("/v1/auth/login", None, &body).await
    }

    /// Logs in and returns (access token, refresh token).
    pub async fn session(&self, email: &str, tenant: Option<&str>) -> (String, String) {
        let response = self.login(email, PASSWORD, tenant).await;
        assert_eq!(response.status(), 200, "login of {email} failed: {}", response.text().await.unwrap());
        let body: serde_json::Value = response.json().await.unwrap();
        (body["access_token"].as_str().unwrap().to_owned(), body["refresh_token"].as_str().unwrap().to_owned())
    }

    /// Creates the platform administrator (once per app) and returns its access token.
    pub async fn platform_admin(&self) -> String {
        let email = "root@tessera.test";
        let _ = self.state.identity.bootstrap_admin(email, PASSWORD.to_owned(), &Default::default()).await;
        self.session(email, None).await.0
    }

    pub async fn create_tenant(&self, admin: &str, slug: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut body = serde_json::json!({ "slug": slug, "name": format!("Tenant {slug}") });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let response = self.post_json("/v1/tenants", Some(admin), &body).await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }

    pub async fn create_api_key(&self, token: &str, tenant: &str, role: &str) -> serde_json::Value {
        let body = serde_json::json!({ "name": format!("{role} key"), "role": role });
        let response = self.post_json(&format!("/v1/tenants/{tenant}/api-keys"), Some(token), &body).await;
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        response.json().await.unwrap()
    }

    /// Invites `email` to `tenant` as `role` and accepts the invitation: a new account gets
    /// `PASSWORD`, an existing one accepts while logged in.
    pub async fn add_member(&self, inviter: &str, tenant: &str, email: &str, role: &str) {
        let body = serde_json::json!({ "email": email, "role": role });
        let invited = self.post_json(&format!("/v1/tenants/{tenant}/invitations"), Some(inviter), &body).await;
        assert_eq!(invited.status(), 201, "{}", invited.text().await.unwrap());
        let token = invited.json::<serde_json::Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
        let accepted = self.post_json("/v1/invitations/accept", None, &serde_json::json!({ "token": token, "password": PASSWORD })).await;
        if accepted.status() == 401 {
            let own = self.session(email, None).await.0;
            let accepted = self.post_json("/v1/invitations/accept", Some(&own), &serde_json::json!({ "token": token })).await;
            assert_eq!(accepted.status(), 201, "{}", accepted.text().await.unwrap());
            return;
        }
        assert_eq!(accepted.status(), 201, "{}", accepted.text().await.unwrap());
    }

    /// A tenant with a member for every role and an inference and an admin API key.
    pub async fn tenant_with_members(&self, admin: &str, slug: &str) -> TestTenant {
        let tenant = self.create_tenant(admin, slug, serde_json::json!({})).await;
        let mut emails = std::collections::HashMap::new();
        for role in ["owner", "admin", "ml_engineer", "auditor", "inference"] {
            let email = format!("{role}@{slug}.test");
            self.add_member(admin, slug, &email, role).await;
            emails.insert(role, email);
        }
        let inference_key = self.create_api_key(admin, slug, "inference").await["secret"].as_str().unwrap().to_owned();
        let admin_key = self.create_api_key(admin, slug, "admin").await["secret"].as_str().unwrap().to_owned();
        TestTenant { slug: slug.to_owned(), id: tenant["id"].as_str().unwrap().to_owned(), emails, inference_key, admin_key }
    }

    /// A credential acting as `who` in `tenant` (a fresh login for users).
    pub async fn credential(&self, who: As, tenant: &TestTenant, admin: &str) -> Option<String> {
        match who {
            As::Anonymous => None,
            As::PlatformAdmin => {
                let _ = admin;
                Some(self.session("root@tessera.test", None).await.0)
            }
            As::InferenceKey => Some(tenant.inference_key.clone()),
            As::AdminKey => Some(tenant.admin_key.clone()),
            user => Some(self.session(&tenant.emails[user.role().unwrap()], Some(&tenant.slug)).await.0),
        }
    }

    /// Sends `method path` with an optional credential and a JSON body.
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<serde_json::Value>) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request sent")
    }
}
