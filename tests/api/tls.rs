use std::process::Command;

use crate::helpers::{TestApp, connect_from, spawn_app_with};

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

/// Tessera over TLS with a fresh self-signed certificate; the directory that holds it, and the
/// certificate's path.
async fn spawn_tls_app() -> (TestApp, std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tessera-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed(&dir);
    let app = spawn_app_with(|s| {
        s.server.tls.enabled = true;
        s.server.tls.cert_path = cert.clone();
        s.server.tls.key_path = key.clone();
    })
    .await;
    (app, dir, cert)
}

/// A gRPC `ServerLive` call with curl over TLS (HTTP/2); `args` go before the others. The answer
/// is written to `answer`; curl's output is the HTTP status and version.
async fn curl_server_live(app: &TestApp, dir: &std::path::Path, cert: &std::path::Path, args: &[&str], answer: &std::path::Path) -> std::process::Output {
    let empty = dir.join("empty.grpc");
    std::fs::write(&empty, [0u8; 5]).unwrap();
    let url = format!("https://127.0.0.1:{}/inference.GRPCInferenceService/ServerLive", app.grpc_port.expect("gRPC is on in tests"));
    let mut command = Command::new("curl");
    command
        .args(["-s", "--http2"])
        .args(args)
        .arg("--cacert")
        .arg(cert)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary"])
        .arg(format!("@{}", empty.display()))
        .arg("-o")
        .arg(answer)
        .args(["-w", "%{http_code} %{http_version}", &url]);
    tokio::task::spawn_blocking(move || command.output().expect("curl is installed")).await.unwrap()
}

#[tokio::test]
async fn tls_serves_http2_through_alpn() {
    let (app, dir, cert) = spawn_tls_app().await;
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
    let answer = dir.join("answer.grpc");
    let output = curl_server_live(&app, &dir, &cert, &[], &answer).await;
    assert_eq!(String::from_utf8_lossy(&output.stdout), "200 2", "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read(&answer).unwrap(), [0, 0, 0, 0, 2, 0x08, 0x01]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// How many of `streams` the server has closed (each is given 100 ms to tell).
async fn closed(streams: &mut [tokio::net::TcpStream]) -> usize {
    use tokio::io::AsyncReadExt;
    let mut closed = 0;
    for stream in streams {
        let mut buf = [0u8; 16];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(std::time::Duration::from_millis(100), stream.read(&mut buf)).await {
            closed += 1;
        }
    }
    closed
}

/// Clients that start TLS handshakes with the gRPC port and stall (connect, send nothing) keep
/// no one else out. Past a few from one client, each new one ends that client's oldest; past
/// the bound of all (many clients, as from many IPv6 /64s), each new one ends the oldest of
/// all; a handshake takes milliseconds, so another client's call is served while theirs stall.
/// (Were handshakes waited for, the other client would wait 10 s for a stalled one to time
/// out; were new ones refused, it would be refused.)
#[tokio::test]
async fn stalled_grpc_tls_handshakes_keep_no_other_client_out() {
    let (app, dir, cert) = spawn_tls_app().await;
    let port = app.grpc_port.expect("gRPC is on in tests");
    let threads = app.settings.server.workers;
    let served = |from: &'static str| {
        let (app, dir, cert) = (&app, &dir, &cert);
        async move {
            let started = std::time::Instant::now();
            let output = curl_server_live(app, dir, cert, &["--interface", from, "--max-time", "5"], &dir.join("answer.grpc")).await;
            assert_eq!(String::from_utf8_lossy(&output.stdout), "200 2", "served in {:?}: {}", started.elapsed(), String::from_utf8_lossy(&output.stderr));
        }
    };

    const ONE_CLIENT: usize = 160;
    let mut stalled = Vec::with_capacity(ONE_CLIENT);
    for _ in 0..ONE_CLIENT {
        stalled.push(connect_from([127, 0, 0, 1].into(), port).await);
    }
    served("127.0.0.2").await;
    // The stalling client keeps its newest few (8 per serving thread).
    let ended = closed(&mut stalled).await;
    assert!(ended >= ONE_CLIENT - 8 * threads && ended < ONE_CLIENT, "{ended} of {ONE_CLIENT} stalled connections closed");

    const CLIENTS: u8 = 75;
    let mut stalled = Vec::new();
    for client in 1..=CLIENTS {
        for _ in 0..8 {
            stalled.push(connect_from([127, 0, 1, client].into(), port).await);
        }
    }
    served("127.0.0.3").await;
    // 256 handshakes per serving thread are kept, the newest.
    let ended = closed(&mut stalled).await;
    assert!(ended >= stalled.len() - 256 * threads - 8 * threads && ended < stalled.len(), "{ended} of {} stalled connections closed", stalled.len());
    std::fs::remove_dir_all(dir).unwrap();
}
