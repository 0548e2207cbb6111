//! 7. Least privilege: Tessera never serves through a role that bypasses row-level security.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{TestDatabase, app_role_password, ensure_login_role, spawn_app, spawn_app_with};

fn url_as(database: &TestDatabase, role: Option<&str>) -> String {
    let mut url = url::Url::parse(&database.url).unwrap();
    if let Some(role) = role {
        url.set_username(role).unwrap();
        url.set_password(app_role_password().as_deref()).unwrap();
    }
    url.to_string()
}

/// Runs `tessera <command>` against `url` and returns its exit code and standard error; a
/// process still running after 20 s is killed and reported as `None`.
fn run(command: &str, url: &str) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"));
    child.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TESSERA") {
            child.env_remove(key);
        }
    }
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        child.env("TESSERA__INFERENCE__ONNXRUNTIME_PATH", "/var/tmp/onnxruntime-1.31.1/onnxruntime/capi/libonnxruntime.so.1.31.1");
    }
    let mut child = child
        .arg(command)
        .env("TESSERA_ENV", "test")
        .env("TESSERA__DATABASE__URL", url)
        .env("TESSERA__DATABASE__MIGRATE_ON_START", "false")
        .env("TESSERA__SERVER__PORT", "0")
        .env("TESSERA__TELEMETRY__METRICS_ADDRESS", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            return (status.code(), String::from_utf8_lossy(&output.stderr).into_owned());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    (None, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn attack_07_serve_and_worker_refuse_roles_that_bypass_row_level_security() {
    // The app's database, migrated; one table handed to a role that then owns it.
    let app = spawn_app().await;
    ensure_login_role("tessera_test_bypass", "NOSUPERUSER BYPASSRLS").await;
    ensure_login_role("tessera_test_owner", "NOSUPERUSER NOBYPASSRLS").await;
    sqlx::query("ALTER TABLE tenants OWNER TO tessera_test_owner").execute(&app.db).await.unwrap();

    let cases = [
        (url_as(&app.database, None), "superuser"),
        (url_as(&app.database, Some("tessera_test_bypass")), "BYPASSRLS"),
        (url_as(&app.database, Some("tessera_test_owner")), "owns"),
    ];
    for (url, named) in &cases {
        for command in ["serve", "worker"] {
            let (code, stderr) = run(command, url);
            assert_eq!(code, Some(2), "`tessera {command}` as a role that {named}: {stderr}");
            assert!(stderr.contains(named) && stderr.contains("tessera_app"), "names the cause and the fix: {stderr}");
        }
    }
    sqlx::query("ALTER TABLE tenants OWNER TO CURRENT_USER").execute(&app.db).await.unwrap();
}

#[tokio::test]
async fn attack_07_a_privileged_pool_answers_503_and_writes_nothing() {
    // Embedding the library directly does not get around the check: every connection of the
    // application's pool is refused.
    let app = spawn_app_with(|s| s.database.url = s.database.migration_url.clone().unwrap()).await;
    let response = app.login("nobody@example.com", "a-wrong-password", None).await;
    assert_eq!(response.status(), 503, "{}", response.text().await.unwrap());
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&app.db).await.unwrap();
    assert_eq!(events, 0);
}
