//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, the contract in
//! `openapi/grpc_predict_v2.proto`), served by tonic on `server.grpc_port`.
//!
//! - `service`: the calls, over the same admission and services as HTTP;
//! - `convert`: gRPC messages to the protocol's own request and answer types.
//!
//! The server runs on a runtime of its own with one thread per HTTP worker: actix's workers
//! each run a single-threaded runtime, which a gRPC server cannot share.

mod codec;
mod convert;
pub mod service;

#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("inference");
}

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use self::proto::grpc_inference_service_server::GrpcInferenceServiceServer;
use self::service::{Admitted, Inference};
use crate::http::health::Probes;
use crate::identity::authenticate::Authenticator;
use crate::inference::InferenceService;
use crate::net::TrustedProxies;
use crate::tenancy::rate_limit::RateLimiter;

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once; beyond, accepting waits.
const HANDSHAKES: usize = 64;
/// Calls in flight on one connection (HTTP/2 streams).
const STREAMS_PER_CONNECTION: u32 = 128;
/// The largest message of every call but `ModelInfer` (names and versions).
const SMALL_MESSAGE_BYTES: usize = 16 * 1024;

/// What the gRPC server needs: the services HTTP handlers reach, and the listener's settings.
pub struct GrpcParts {
    pub inference: InferenceService,
    pub authenticator: Arc<Authenticator>,
    pub limiter: RateLimiter,
    pub probes: Probes,
    pub proxies: TrustedProxies,
    /// The largest message accepted (`inference.max_request_bytes`) and sent.
    pub max_message_bytes: usize,
    /// The longest a call may take, its message's arrival included: the longest inference
    /// deadline (`inference.max_timeout_ms`) and then some.
    pub call_timeout: Duration,
    pub tls: Option<rustls::ServerConfig>,
    pub threads: usize,
    pub shutdown_grace: Duration,
}

/// A running gRPC server. Dropping it stops its runtime at once; `stop` lets calls in flight
/// finish first.
pub struct GrpcServer {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl GrpcServer {
    /// Binds `listener` and starts serving on a runtime of its own.
    pub fn start(listener: std::net::TcpListener, parts: GrpcParts) -> anyhow::Result<Self> {
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(parts.threads.max(1))
            .thread_name("tessera-grpc")
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let grace = parts.shutdown_grace;
        let done = runtime.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => return tracing::error!(error = %e, "gRPC listener"),
            };
            let calls = GrpcInferenceServiceServer::new(Inference { inference: parts.inference, probes: parts.probes, proxies: parts.proxies })
                .max_encoding_message_size(parts.max_message_bytes);
            let service = Admitted {
                small: calls.clone().max_decoding_message_size(SMALL_MESSAGE_BYTES),
                large: calls.max_decoding_message_size(parts.max_message_bytes),
                authenticator: parts.authenticator,
                limiter: parts.limiter,
            };
            let incoming = accept(listener, parts.tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c))));
            let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
            let serve = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(60)))
                .max_concurrent_streams(STREAMS_PER_CONNECTION)
                .timeout(parts.call_timeout)
                .serve_with_incoming_shutdown(service, incoming, async move {
                    let _ = stopped.await;
                    let _ = stopping_tx.send(());
                });
            tokio::pin!(serve);
            // Past the grace period after the stop, calls still in flight are abandoned.
            let deadline = async move {
                let _ = stopping_rx.await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                served = &mut serve => if let Err(e) = served { tracing::error!(error = %e, "gRPC server") },
                () = deadline => tracing::warn!("gRPC calls still in flight after the grace period were abandoned"),
            }
        });
        Ok(Self { port, stop: Some(stop), done: Some(done), runtime: Some(runtime) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops accepting (clients get GOAWAY) and waits for calls in flight, up to the grace period.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        // Dropped from async code (tests, `run_until_stopped`): a runtime may not block there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Accepted connections, TLS ones once their handshake is done. Handshakes run apart, so a
/// slow client holds up nobody else.
fn accept(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
    tokio::spawn(async move {
        loop {
            // The server stopped taking connections: so does the listener, at once.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (stream, _) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "gRPC accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let info = TcpConnectInfo { local_addr: stream.local_addr().ok(), remote_addr: stream.peer_addr().ok() };
            match &tls {
                None => {
                    if sender.send(Ok(Conn { io: Io::Plain(stream), info })).await.is_err() {
                        return;
                    }
                }
                Some(acceptor) => {
                    let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
                    let (acceptor, sender) = (acceptor.clone(), sender.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                let _ = sender.send(Ok(Conn { io: Io::Tls(Box::new(stream)), info })).await;
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "gRPC TLS handshake failed"),
                            Err(_) => tracing::debug!("gRPC TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection, with the addresses `Request::remote_addr` reads.
pub struct Conn {
    io: Io,
    info: TcpConnectInfo,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
