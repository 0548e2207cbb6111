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
    let cacert = cert.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-s", "--http2", "--cacert"])
            .arg(&cacert)
            .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}", &url])
            .output()
            .expect("curl is installed")
    })
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200 2", "{}", String::from_utf8_lossy(&output.stderr));

    // gRPC's port serves over TLS with the same certificate: `ServerLive`, an empty message,
    // answered `live: true` (field 1, varint 1).
    let empty = dir.join("empty.grpc");
    std::fs::write(&empty, [0u8; 5]).unwrap();
    let url = format!("https://127.0.0.1:{}/inference.GRPCInferenceService/ServerLive", app.grpc_port.expect("gRPC is on in tests"));
    let answer = dir.join("answer.grpc");
    let answer_path = answer.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-s", "--http2", "--cacert"])
            .arg(&cert)
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary"])
            .arg(format!("@{}", empty.display()))
            .arg("-o")
            .arg(&answer_path)
            .args(["-w", "%{http_code} %{http_version}", &url])
            .output()
            .expect("curl is installed")
    })
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200 2", "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read(&answer).unwrap(), [0, 0, 0, 0, 2, 0x08, 0x01]);
    std::fs::remove_dir_all(dir).unwrap();
}
