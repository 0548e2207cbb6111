use std::process::Command;

fn tessera() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (key, _) in std::env::vars() {
        if key.starts_with("TESSERA") {
            command.env_remove(key);
        }
    }
    command
}

#[test]
fn openapi_command_prints_the_committed_document() {
    let output = tessera().arg("openapi").output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), tessera::api::openapi::spec_json());
}

#[test]
fn config_check_prints_the_effective_config_with_secrets_redacted() {
    let output = tessera()
        .args(["config", "check"])
        .env("TESSERA__DATABASE__URL", "postgres://app:s3cr3t-pw@db.internal/tessera")
        .env("TESSERA__AUTH__API_KEY_SECRET", "another-secret-that-is-long-enough-1234567")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("db.internal"));
    assert!(!stdout.contains("s3cr3t-pw"));
    assert!(!stdout.contains("another-secret"));
}

#[test]
fn a_bad_value_stops_the_process_with_one_line_naming_the_key() {
    let output = tessera().args(["config", "check"]).env("TESSERA__SERVER__PORT", "eighty").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("server.port"), "{stderr}");
}

#[test]
fn production_refuses_to_start_with_a_development_secret() {
    let output = tessera()
        .args(["serve"])
        .env("TESSERA_ENV", "production")
        .env("TESSERA__AUTH__API_KEY_SECRET", "dev-insecure-api-key-secret-change-me-0123456789")
        .env("TESSERA__AUTH__JWT_SIGNING_KEYS", "prod-1:cHJvZHVjdGlvbi1rZXktc2VlZC0wMDAwMDAwMDAwMDA")
        .env("TESSERA__AUDIT__SIGNING_KEYS", "audit-1:cHJvZHVjdGlvbi1rZXktc2VlZC0wMDAwMDAwMDAwMDA")
        .env("TESSERA__REGISTRY__MASTER_KEYS", "master-1:cHJvZHVjdGlvbi1rZXktc2VlZC0wMDAwMDAwMDAwMDA")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("auth.api_key_secret") && stderr.contains("development secret"), "{stderr}");
}

/// The operator commands mirror the API, against the configured database.
#[tokio::test]
async fn operator_commands_bootstrap_create_and_issue_keys() {
    let app = crate::helpers::spawn_app().await;
    let operator = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = tessera();
        command.env("TESSERA_ENV", "test").env("TESSERA__DATABASE__URL", &app.settings.database.url);
        command.env("TESSERA__REDIS__URL", &app.settings.redis.url).env("TESSERA__REDIS__KEY_PREFIX", &app.settings.redis.key_prefix);
        for (k, v) in env {
            command.env(k, v);
        }
        command.args(args).stdin(std::process::Stdio::null()).output().unwrap()
    };
    let password = [("TESSERA_BOOTSTRAP_PASSWORD", crate::helpers::PASSWORD)];
    let first = operator(&["admin", "bootstrap", "--email", "ops@tessera.test"], &password);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let second = operator(&["admin", "bootstrap", "--email", "other@tessera.test"], &password);
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already exists"));

    assert!(operator(&["tenant", "create", "--slug", "acme", "--name", "Acme"], &[]).status.success());
    let listed = operator(&["tenant", "list"], &[]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("acme\tactive"));
    let added = operator(
        &["user", "add", "--tenant", "acme", "--email", "eng@acme.test", "--role", "ml_engineer"],
        &[("TESSERA_USER_PASSWORD", crate::helpers::PASSWORD)],
    );
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let key = operator(&["apikey", "create", "--tenant", "acme", "--name", "svc", "--role", "inference"], &[]);
    let key: serde_json::Value = serde_json::from_slice(&key.stdout).unwrap();
    let secret = key["secret"].as_str().unwrap();

    // What the commands made works through the API.
    let me: serde_json::Value = app.get_as("/v1/me", secret).await.json().await.unwrap();
    assert_eq!(me["tenant"], "acme");
    let (token, _) = app.session("eng@acme.test", None).await;
    assert_eq!(app.get_as("/v1/me", &token).await.status(), 200);
    assert!(operator(&["tenant", "suspend", "acme"], &[]).status.success());
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await; // another process: the directory cache expires
    assert_eq!(app.get_as("/v1/me", secret).await.status(), 403);
    let bad_role = operator(&["apikey", "create", "--tenant", "acme", "--name", "x", "--role", "king"], &[]);
    assert!(!bad_role.status.success());
}

/// `tessera model upload` against a running server: hashed, streamed, verified by the server;
/// a refusal is one line with the problem's code and exit status 1.
#[tokio::test]
async fn model_upload_streams_an_artifact_to_a_running_server() {
    use sha2::{Digest, Sha256};

    let app = crate::helpers::spawn_app().await;
    let admin = app.platform_admin().await;
    app.create_tenant(&admin, "acme", serde_json::json!({})).await;
    app.add_member(&admin, "acme", "owner@acme.test", "owner").await;
    let owner = app.session("owner@acme.test", Some("acme")).await.0;

    // The server runs on this test's runtime: wait for the command off it.
    let upload = |file: &str, args: &[&str]| {
        let mut command = tessera();
        command.env("TESSERA_TOKEN", &owner).args(["model", "upload", file, "--server", &app.address, "--tenant", "acme"]);
        command.args(args).arg("--no-progress").stdin(std::process::Stdio::null());
        async move { tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap() }
    };
    let fixture = "tests/fixtures/models/add_fp32.onnx";
    let sha256 = hex::encode(Sha256::digest(std::fs::read(fixture).unwrap()));

    let create = ["--model", "adder", "--create", "--framework", "onnx", "--description", "adds two tensors"];
    let first = upload(fixture, &create).await;
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(stdout.contains("adder version 1") && stdout.contains(&sha256), "{stdout}");
    assert!(stdout.contains("inputs   x FP32[?,4], y FP32[?,4]") && stdout.contains("outputs  z FP32[?,4]"), "{stdout}");

    let version: serde_json::Value = app.get_as("/v1/tenants/acme/models/adder/versions/1", &owner).await.json().await.unwrap();
    assert_eq!(version["sha256"], sha256.as_str());
    assert_eq!(version["size_bytes"], std::fs::metadata(fixture).unwrap().len());
    let model: serde_json::Value = app.get_as("/v1/tenants/acme/models/adder", &owner).await.json().await.unwrap();
    assert_eq!(model["description"], "adds two tensors");

    // --create again: the existing model is fine, and the upload is the next version.
    let second = upload(fixture, &create).await;
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(String::from_utf8_lossy(&second.stdout).contains("adder version 2"));

    // Not a model: refused by the server, reported with its code.
    let refused = upload("Cargo.toml", &["--model", "adder"]).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("tessera: ") && stderr.trim_end().ends_with("(invalid_model)"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");

    // A large non-model file is refused early, yet the answer still arrives whole.
    let junk = std::env::temp_dir().join(format!("tessera-junk-{}.onnx", uuid::Uuid::new_v4()));
    std::fs::write(&junk, vec![0xA5u8; 24 << 20]).unwrap();
    let refused = upload(junk.to_str().unwrap(), &["--model", "adder"]).await;
    std::fs::remove_file(&junk).unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("(invalid_model)"), "{stderr}");

    // No such model without --create.
    let missing = upload(fixture, &["--model", "nope"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("(not_found)"), "{}", String::from_utf8_lossy(&missing.stderr));
    let versions = app.items("/v1/tenants/acme/models/adder/versions", &owner).await;
    assert_eq!(versions.len(), 2);
}

/// `migrate --check` is what keeps a new release's pods from serving an older schema: it
/// passes on a current database, through the application's own role, and fails (after
/// `--wait`) on one whose newest migration is missing.
#[tokio::test]
async fn migrate_check_passes_only_when_every_migration_is_applied() {
    let app = crate::helpers::spawn_app().await;
    let check = |url: &str, wait: &'static str| {
        let mut command = tessera();
        command.env("TESSERA_ENV", "test").env("TESSERA__DATABASE__URL", url);
        command.args(["migrate", "--check", "--wait", wait]);
        async move { tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap() }
    };
    assert!(app.settings.database.url.contains("tessera_app"), "checked through the application role");
    let current = check(&app.settings.database.url, "0").await;
    assert!(current.status.success(), "{}", String::from_utf8_lossy(&current.stderr));

    let owner = sqlx::PgPool::connect(app.settings.database.migration_url.as_deref().unwrap()).await.unwrap();
    let newest: i64 = sqlx::query_scalar("DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations) RETURNING version")
        .fetch_one(&owner)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let behind = check(&app.settings.database.url, "3").await;
    assert_eq!(behind.status.code(), Some(1));
    assert!(started.elapsed() >= std::time::Duration::from_secs(3), "it waited before giving up");
    let stderr = String::from_utf8_lossy(&behind.stderr);
    assert!(stderr.contains("1 migration(s) not applied") && stderr.contains(&newest.to_string()), "{stderr}");

    // Applied, but from another text than this build's: as good as missing.
    let edited: i64 = sqlx::query_scalar("UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea WHERE version = (SELECT min(version) FROM _sqlx_migrations) RETURNING version")
        .fetch_one(&owner)
        .await
        .unwrap();
    let changed = check(&app.settings.database.url, "0").await;
    assert!(String::from_utf8_lossy(&changed.stderr).contains(&format!("2 migration(s) not applied (or changed since), the first {edited}")));

    let unreachable = check("postgres://tessera_app@127.0.0.1:1/none", "0").await;
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot read the applied migrations"));
}

/// What a rolling restart relies on: on SIGTERM the server drains (readiness fails, requests
/// are still answered, each with `Connection: close`), then stops accepting and exits.
#[tokio::test]
async fn sigterm_drains_then_stops() {
    let app = crate::helpers::spawn_app().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = tessera();
    command
        .arg("serve")
        .env("TESSERA_ENV", "test")
        .env("TESSERA__DATABASE__URL", &app.settings.database.url)
        .env("TESSERA__REDIS__URL", &app.settings.redis.url)
        .env("TESSERA__REDIS__KEY_PREFIX", &app.settings.redis.key_prefix)
        .env("TESSERA__REGISTRY__STORAGE__PATH", &app.settings.registry.storage.path)
        .env("TESSERA__INFERENCE__ONNXRUNTIME_PATH", &app.settings.inference.onnxruntime_path)
        .env("TESSERA__SERVER__PORT", port.to_string())
        .env("TESSERA__SERVER__DRAIN_SECONDS", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut server = command.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let ready = crate::helpers::eventually(30, || async {
        client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "the server became ready");

    let signalled = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap().success());
    let draining = crate::helpers::eventually(2, || async {
        client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert!(draining, "readiness fails while draining");
    let response = client.get(format!("{base}/healthz")).send().await.expect("still answered while draining");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["connection"], "close");
    let body: serde_json::Value = client.get(format!("{base}/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["code"], "service_unavailable");
    assert!(body["detail"].as_str().unwrap().contains("draining"), "{body}");

    let exited = crate::helpers::eventually(15, || {
        let done = server.try_wait().unwrap().is_some();
        async move { done }
    })
    .await;
    assert!(exited, "the server exits after draining");
    assert!(signalled.elapsed() >= std::time::Duration::from_secs(3), "it served for the whole drain");
    assert!(server.wait().unwrap().success());
    assert!(client.get(format!("{base}/healthz")).send().await.is_err(), "nothing listens after the stop");
}
