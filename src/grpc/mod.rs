//! The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`, the contract in
//! `openapi/grpc_predict_v2.proto`), tonic's generated service over hyper's HTTP/2 on
//! `server.grpc_port`.
//!
//! - `service`: the calls, over the same admission and services as HTTP;
//! - `codec`: prost's codec after a count of the repeated fields on the wire;
//! - `convert`: gRPC messages to the protocol's own request and answer types.
//!
//! The server runs on threads of its own, one per HTTP worker, each a single-threaded runtime
//! as actix's workers are (which a gRPC server cannot share).

mod codec;
mod convert;
pub mod service;

#[allow(clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("inference");
}

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::http;
use tonic::transport::server::TcpConnectInfo;

use self::proto::grpc_inference_service_server::GrpcInferenceServiceServer;
use self::service::{Admitted, Inference};
use crate::http::health::{Draining, Probes};
use crate::identity::authenticate::Authenticator;
use crate::inference::InferenceService;
use crate::net::TrustedProxies;
use crate::tenancy::rate_limit::RateLimiter;

/// A TLS handshake that takes longer than this is dropped, and so is a connection whose
/// client has not sent HTTP/2's preface this long after it was accepted (or after its TLS
/// handshake ended), so that connections that never start hold nothing for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The client's connection preface (RFC 9113, section 3.4).
const PREFACE_BYTES: usize = 24;
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
    /// A connection on which no call starts for this long (up to twice) is told to go away.
    pub idle_timeout: Duration,
    /// Once on, each connection is told to go away at its next call, as HTTP closes each
    /// connection after its next response.
    pub draining: Draining,
}

/// A running gRPC server: `threads` threads, each a single-threaded runtime serving the
/// connections handed to it, as actix's workers serve HTTP; a call's tasks stay on one thread
/// rather than wake another. `stop` stops accepting and lets calls in flight finish; the
/// runtimes themselves end only when the server is dropped, since tasks they started (a
/// Redis connection's driver) may serve the rest of the process until then.
pub struct GrpcServer {
    port: u16,
    stop: tokio::sync::watch::Sender<bool>,
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
    release: tokio::sync::watch::Sender<bool>,
}

impl GrpcServer {
    /// Serves on `listener` from threads of its own.
    pub fn start(listener: std::net::TcpListener, parts: GrpcParts) -> anyhow::Result<Self> {
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let calls = GrpcInferenceServiceServer::new(Inference { inference: Arc::new(parts.inference), probes: parts.probes, proxies: parts.proxies })
            .max_encoding_message_size(parts.max_message_bytes);
        let service = Admitted {
            small: calls.clone().max_decoding_message_size(SMALL_MESSAGE_BYTES),
            large: calls.max_decoding_message_size(parts.max_message_bytes),
            max_message_bytes: parts.max_message_bytes,
            authenticator: parts.authenticator,
            limiter: parts.limiter,
        };
        let tls = parts.tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let (release, released) = tokio::sync::watch::channel(false);
        let threads = parts.threads.max(1);
        let (handoffs, inboxes): (Vec<_>, Vec<_>) = (0..threads).map(|_| tokio::sync::mpsc::channel::<std::net::TcpStream>(64)).unzip();
        // The first thread also accepts, and hands each connection to the threads in turn.
        let mut accepting = Some((listener, handoffs));
        let mut done = Vec::with_capacity(threads);
        for (index, inbox) in inboxes.into_iter().enumerate() {
            let (finished, finished_rx) = tokio::sync::oneshot::channel();
            done.push(finished_rx);
            let (service, tls, stopping, mut released) = (service.clone(), tls.clone(), stopping.clone(), released.clone());
            let accepting = accepting.take();
            let ends = Ends { call_timeout: parts.call_timeout, grace: parts.shutdown_grace, idle: parts.idle_timeout, draining: parts.draining.clone() };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            std::thread::Builder::new().name(format!("tessera-grpc-{index}")).spawn(move || {
                runtime.block_on(async move {
                    if let Some((listener, handoffs)) = accepting {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => {
                                tokio::spawn(hand_out(listener, handoffs, stopping.clone()));
                            }
                            Err(e) => tracing::error!(error = %e, "gRPC listener"),
                        }
                    }
                    serve(service, inbox, tls, ends, stopping).await;
                    let _ = finished.send(());
                    let _ = released.wait_for(|r| *r).await;
                });
            })?;
        }
        Ok(Self { port, stop, done, release })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops accepting (clients get GOAWAY) and waits for calls in flight, up to the grace period.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        for done in self.done.drain(..) {
            let _ = done.await;
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = self.release.send(true);
    }
}

/// Accepts connections and hands them to the serving threads in turn, until the stop.
async fn hand_out(
    listener: tokio::net::TcpListener,
    handoffs: Vec<tokio::sync::mpsc::Sender<std::net::TcpStream>>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let stream = match accepted.and_then(|(stream, _)| stream.into_std()) {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "gRPC accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if handoffs[next % handoffs.len()].send(stream).await.is_err() {
            return;
        }
        next = next.wrapping_add(1);
    }
}

/// When a connection's calls, and connections themselves, end.
#[derive(Clone)]
struct Ends {
    /// The longest a call may take.
    call_timeout: Duration,
    /// After the stop, how long calls in flight may take to finish.
    grace: Duration,
    /// A connection on which no call starts for this long (up to twice) is told to go away.
    idle: Duration,
    draining: Draining,
}

/// One thread's server: HTTP/2 over the connections handed to it, TLS ones once their
/// handshake is done. Served by hyper directly, as tonic's own server would, less what a call
/// does not need here: a boxed service cloned per call, a layer per concern, a `date` header.
async fn serve(
    calls: Admitted<GrpcInferenceServiceServer<Inference>>,
    inbox: tokio::sync::mpsc::Receiver<std::net::TcpStream>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    ends: Ends,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    let calls = Arc::new(calls);
    let mut incoming = connections(inbox, tls);
    let mut http2 = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    http2
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(STREAMS_PER_CONNECTION)
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .auto_date_header(false);
    // Every connection's task holds a sender; the last to end closes the channel.
    let (open, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);
    let mut stopped = stopping.clone();
    loop {
        let conn = tokio::select! {
            conn = incoming.recv() => conn,
            _ = stopped.wait_for(|s| *s) => break,
        };
        let Some(conn) = conn else { break };
        let activity = Arc::new(Activity::default());
        let service = Connection { calls: calls.clone(), info: conn.info.clone(), timeout: ends.call_timeout, activity: activity.clone(), draining: ends.draining.clone() };
        let served = http2.serve_connection(hyper_util::rt::TokioIo::new(conn), service);
        let linger = ends.call_timeout + Duration::from_secs(5);
        tokio::spawn(serve_connection(served, activity, (ends.idle, linger), stopping.clone(), open.clone()));
    }
    drop((incoming, open));
    // Stopped: every connection is told (GOAWAY) and its calls in flight may finish; past the
    // grace period after the stop, calls still in flight are abandoned.
    tokio::select! {
        _ = all_ended.recv() => {}
        () = tokio::time::sleep(ends.grace) => tracing::warn!("gRPC calls still in flight after the grace period were abandoned"),
    }
}

/// What a connection's calls tell the task that serves it.
#[derive(Default)]
struct Activity {
    /// Calls started so far.
    calls: std::sync::atomic::AtomicU64,
    /// The process drains: the connection should go away.
    go_away: tokio::sync::Notify,
}

/// Serves one connection to its end. It is told to go away (GOAWAY; calls in flight finish,
/// the client opens another connection for its next ones) when the server stops, when a call
/// starts while the process drains, or when a look at it finds that no call has started since
/// the previous look, `idle` before (so after between one and two times `idle` without a
/// call; calls of every kind count, anonymous ones too). A connection still open `linger`
/// after it was told, its calls' longest time and then some, is closed: h2 ends a connection
/// after GOAWAY only once its client has answered a last ping, which a client can withhold.
async fn serve_connection<S>(
    served: hyper::server::conn::http2::Connection<hyper_util::rt::TokioIo<Conn>, S, hyper_util::rt::TokioExecutor>,
    activity: Arc<Activity>,
    (idle, linger): (Duration, Duration),
    mut stopping: tokio::sync::watch::Receiver<bool>,
    _open: tokio::sync::mpsc::Sender<()>,
) where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = tonic::body::Body>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use std::sync::atomic::Ordering;
    tokio::pin!(served);
    // The next look for calls; once the connection is told to go away, its last moment.
    let look = tokio::time::sleep(idle);
    tokio::pin!(look);
    let mut seen = activity.calls.load(Ordering::Relaxed);
    let mut going = false;
    loop {
        let told = going;
        tokio::select! {
            ended = served.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "gRPC connection");
                }
                return;
            }
            _ = stopping.wait_for(|s| *s), if !going => going = true,
            () = activity.go_away.notified(), if !going => going = true,
            () = look.as_mut() => {
                if going {
                    tracing::debug!("gRPC connection closed: still open long after GOAWAY");
                    return;
                }
                let calls = activity.calls.load(Ordering::Relaxed);
                if calls == seen {
                    going = true;
                } else {
                    seen = calls;
                    look.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            }
        }
        if going && !told {
            served.as_mut().graceful_shutdown();
            look.as_mut().reset(tokio::time::Instant::now() + linger);
        }
    }
}

/// The calls of one connection, each with the connection's addresses for `Request::remote_addr`.
struct Connection {
    calls: Arc<Admitted<GrpcInferenceServiceServer<Inference>>>,
    info: TcpConnectInfo,
    timeout: Duration,
    activity: Arc<Activity>,
    draining: Draining,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for Connection {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn call(&self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.activity.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.draining.is_on() {
            self.activity.go_away.notify_one();
        }
        let mut request = request.map(tonic::body::Body::new);
        request.extensions_mut().insert(self.info.clone());
        self.calls.serve(request, self.timeout)
    }
}

/// The connections handed to this thread, TLS ones once their handshake is done. Handshakes
/// run apart, so a slow client holds up nobody else.
fn connections(
    mut inbox: tokio::sync::mpsc::Receiver<std::net::TcpStream>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> tokio::sync::mpsc::Receiver<Conn> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES));
    tokio::spawn(async move {
        loop {
            // The server stopped taking connections: so does this thread.
            let handed = tokio::select! {
                handed = inbox.recv() => handed,
                () = sender.closed() => return,
            };
            let Some(stream) = handed else { return };
            let Ok(stream) = TcpStream::from_std(stream) else { continue };
            let _ = stream.set_nodelay(true);
            let info = TcpConnectInfo { local_addr: stream.local_addr().ok(), remote_addr: stream.peer_addr().ok() };
            match &tls {
                None => {
                    if sender.send(Conn::new(Io::Plain(stream), info)).await.is_err() {
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
                                let _ = sender.send(Conn::new(Io::Tls(Box::new(stream)), info)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "gRPC TLS handshake failed"),
                            Err(_) => tracing::debug!("gRPC TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    receiver
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection and its addresses.
struct Conn {
    io: Io,
    info: TcpConnectInfo,
    /// Until the client's preface has arrived: by when it must have, and how many of its
    /// bytes are still to come.
    preface: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

impl Conn {
    fn new(io: Io, info: TcpConnectInfo) -> Self {
        Self { io, info, preface: Some((Box::pin(tokio::time::sleep(HANDSHAKE_TIMEOUT)), PREFACE_BYTES)) }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (before, room) = (buf.filled().len(), buf.remaining() > 0);
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        let Some((deadline, left)) = &mut this.preface else { return polled };
        match &polled {
            Poll::Ready(result) => {
                let read = buf.filled().len().saturating_sub(before);
                *left = left.saturating_sub(read);
                // Arrived, or the connection is over either way.
                if *left == 0 || (read == 0 && room) || result.is_err() {
                    this.preface = None;
                }
                polled
            }
            // Polling the deadline registers the task with it, so a read that waits is woken
            // to fail.
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 preface in time")))
            }
            Poll::Pending => Poll::Pending,
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
