use std::process::Command;

use crate::helpers::spawn_app_with;

/// A self-signed certificate for 127.0.0.1, made with the openssl CLI.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    (cert, key)
}

#[tokio::test]
async fn tls_serves_http2_through_alpn() {
    let dir = std::env::temp_dir().join(format!("tessera-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed(&dir);
    let app = spawn_app_with(|s| {
        s.server.tls.enabled = true;
        s.server.tls.cert_path = cert.clone();
        s.server.tls.key_path = key.clone();
    })
    .await;
    let url = app.url("/healthz");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-s", "--http2", "--cacert"])
            .arg(&cert)
            .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}", &url])
            .output()
            .expect("curl is installed")
    })
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200 2", "{}", String::from_utf8_lossy(&output.stderr));
    std::fs::remove_dir_all(dir).unwrap();
}
