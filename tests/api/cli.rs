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
    assert_eq!(String::from_utf8(output.stdout).unwrap(), tessera::http::openapi::spec_json());
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
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("auth.api_key_secret") && stderr.contains("development secret"), "{stderr}");
}
