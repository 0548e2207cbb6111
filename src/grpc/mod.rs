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
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
/// TLS handshakes in progress on one serving thread; a new one past it ends the oldest.
const HANDSHAKES: usize = 256;
/// TLS handshakes in progress on one serving thread from one client (`client_key`); a new one
/// past it ends that client's oldest.
const HANDSHAKES_PER_CLIENT: usize = 8;
/// A connection on which no call has started this long after it opened is told to go away
/// (sooner if `server.grpc_idle_seconds` is shorter).
const FIRST_CALL_TIMEOUT: Duration = Duration::from_secs(30);
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
    /// Connections open at once, TLS handshakes included, in all and per client (trusted
    /// proxies, which carry many clients, only in all); past either, new ones are closed at once.
    pub max_connections: usize,
    pub max_connections_per_client: usize,
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
        let calls = GrpcInferenceServiceServer::new(Inference { inference: Arc::new(parts.inference), probes: parts.probes, proxies: parts.proxies.clone() })
            .max_encoding_message_size(parts.max_message_bytes);
        let service = Admitted {
            small: calls.clone().max_decoding_message_size(SMALL_MESSAGE_BYTES),
            large: calls.max_decoding_message_size(parts.max_message_bytes),
            max_message_bytes: parts.max_message_bytes,
            authenticator: parts.authenticator,
            limiter: parts.limiter,
            proxies: parts.proxies.clone(),
        };
        let open = Arc::new(OpenConnections {
            max: parts.max_connections,
            max_per_client: parts.max_connections_per_client,
            proxies: parts.proxies.clone(),
            counts: Default::default(),
        });
        let tls = parts.tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let (release, released) = tokio::sync::watch::channel(false);
        let threads = parts.threads.max(1);
        let (handoffs, inboxes): (Vec<_>, Vec<_>) = (0..threads).map(|_| tokio::sync::mpsc::channel::<Accepted>(64)).unzip();
        // The first thread also accepts, and hands each connection to the threads in turn.
        let mut accepting = Some((listener, handoffs, open));
        let mut done = Vec::with_capacity(threads);
        for (index, inbox) in inboxes.into_iter().enumerate() {
            let (finished, finished_rx) = tokio::sync::oneshot::channel();
            done.push(finished_rx);
            let (service, tls, stopping, mut released) = (service.clone(), tls.clone(), stopping.clone(), released.clone());
            let proxies = parts.proxies.clone();
            let accepting = accepting.take();
            let ends = Ends { call_timeout: parts.call_timeout, grace: parts.shutdown_grace, idle: parts.idle_timeout, draining: parts.draining.clone() };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            std::thread::Builder::new().name(format!("tessera-grpc-{index}")).spawn(move || {
                runtime.block_on(async move {
                    if let Some((listener, handoffs, open)) = accepting {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => {
                                tokio::spawn(hand_out(listener, handoffs, open, stopping.clone()));
                            }
                            Err(e) => tracing::error!(error = %e, "gRPC listener"),
                        }
                    }
                    serve(service, inbox, (tls, proxies), ends, stopping).await;
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

/// Open connections, in all and per client (`client_key`), against their bounds. Trusted
/// proxies carry many clients each: they count only in all.
struct OpenConnections {
    max: usize,
    max_per_client: usize,
    proxies: TrustedProxies,
    /// Open in all, and per client.
    counts: parking_lot::Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's place in the counts, given back when the connection ends.
struct Slot {
    counts: Arc<OpenConnections>,
    client: Option<IpAddr>,
}

impl Slot {
    /// A place for a connection from `peer`, or why there is none.
    fn take(counts: &Arc<OpenConnections>, peer: IpAddr) -> Result<Self, &'static str> {
        let client = counted_client(&counts.proxies, peer);
        let mut guard = counts.counts.lock();
        let (all, by_client) = &mut *guard;
        if *all >= counts.max {
            return Err("as many connections are open as allowed");
        }
        if let Some(client) = client {
            let mine = by_client.entry(client).or_insert(0);
            if *mine >= counts.max_per_client {
                return Err("as many connections are open from this client as allowed");
            }
            *mine += 1;
        }
        *all += 1;
        Ok(Self { counts: counts.clone(), client })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut guard = self.counts.counts.lock();
        let (all, by_client) = &mut *guard;
        *all -= 1;
        give_back(by_client, self.client);
    }
}

/// A connection as accepted, with its place in the count.
struct Accepted {
    stream: std::net::TcpStream,
    slot: Slot,
}

/// Accepts connections and hands them to the serving threads in turn, until the stop. Past
/// `open`'s bounds a new connection is closed at once: its client sees the connection end and
/// may retry, while the connections already open go on being served.
async fn hand_out(
    listener: tokio::net::TcpListener,
    handoffs: Vec<tokio::sync::mpsc::Sender<Accepted>>,
    open: Arc<OpenConnections>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut next = 0usize;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted.and_then(|(stream, peer)| Ok((stream.into_std()?, peer))) {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "gRPC accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match Slot::take(&open, peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!(%peer, "gRPC connection refused: {why}");
                continue;
            }
        };
        if handoffs[next % handoffs.len()].send(Accepted { stream, slot }).await.is_err() {
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
    inbox: tokio::sync::mpsc::Receiver<Accepted>,
    (tls, proxies): (Option<tokio_rustls::TlsAcceptor>, TrustedProxies),
    ends: Ends,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    let calls = Arc::new(calls);
    let mut incoming = connections(inbox, tls, proxies);
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
/// starts while the process drains, when no call has started on it `FIRST_CALL_TIMEOUT` after
/// it opened, or when a look at it finds that no call has started since the previous look,
/// `idle` before (so after between one and two times `idle` without a call; calls of every
/// kind count, anonymous ones too). A connection still open `linger` after it was told, its
/// calls' longest time and then some (`HANDSHAKE_TIMEOUT` if no call ever started on it), is closed:
/// h2 ends a connection after GOAWAY only once its client has answered a last ping, which a
/// client can withhold.
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
    tokio::pin!(served);
    // The next look for calls; once the connection is told to go away, its last moment.
    let look = tokio::time::sleep(idle.min(FIRST_CALL_TIMEOUT));
    tokio::pin!(look);
    let mut seen = activity.calls.load(Ordering::Relaxed);
    let mut going = false;
    // A connection told to go away before its first call is closed sooner, unless a call
    // still started on it (h2 takes new calls until its client answers the GOAWAY's ping).
    let mut short_linger = false;
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
                    if short_linger && activity.calls.load(Ordering::Relaxed) > 0 {
                        short_linger = false;
                        look.as_mut().reset(tokio::time::Instant::now() + linger);
                        continue;
                    }
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
            short_linger = activity.calls.load(Ordering::Relaxed) == 0;
            look.as_mut().reset(tokio::time::Instant::now() + if short_linger { HANDSHAKE_TIMEOUT } else { linger });
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
        self.activity.calls.fetch_add(1, Ordering::Relaxed);
        if self.draining.is_on() {
            self.activity.go_away.notify_one();
        }
        let mut request = request.map(tonic::body::Body::new);
        request.extensions_mut().insert(self.info.clone());
        self.calls.serve(request, self.timeout)
    }
}

/// The connections handed to this thread, TLS ones once their handshake is done. Handshakes
/// run apart, so a slow client holds up nobody else, and are bounded in all and per client
/// (`HANDSHAKES`, `HANDSHAKES_PER_CLIENT`; trusted proxies only in all): past either bound a
/// new handshake ends an older one, the client's own first, else the oldest of the client with
/// the most in progress (`Handshakes::start`). A handshake takes milliseconds, so clients that
/// start handshakes and stall end their own rather than anyone else's.
fn connections(
    mut inbox: tokio::sync::mpsc::Receiver<Accepted>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxies: TrustedProxies,
) -> tokio::sync::mpsc::Receiver<Conn> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let handshakes = Arc::new(parking_lot::Mutex::new(Handshakes::default()));
    tokio::spawn(async move {
        loop {
            // The server stopped taking connections: so does this thread.
            let handed = tokio::select! {
                handed = inbox.recv() => handed,
                () = sender.closed() => return,
            };
            let Some(Accepted { stream, slot }) = handed else { return };
            let Ok(stream) = TcpStream::from_std(stream) else { continue };
            let _ = stream.set_nodelay(true);
            let info = TcpConnectInfo { local_addr: stream.local_addr().ok(), remote_addr: stream.peer_addr().ok() };
            match &tls {
                None => {
                    if sender.send(Conn::new(Io::Plain(stream), info, slot)).await.is_err() {
                        return;
                    }
                }
                Some(acceptor) => {
                    let client = info.remote_addr.and_then(|a| counted_client(&proxies, a.ip()));
                    let (acceptor, sender) = (acceptor.clone(), sender.clone());
                    let (id, ended) = handshakes.lock().start(client);
                    for ended in ended {
                        tracing::debug!("gRPC TLS handshake ended to make room for a newer one");
                        ended.abort();
                    }
                    let in_progress = InProgress { table: handshakes.clone(), id };
                    let handshake = tokio::spawn(async move {
                        let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                        drop(in_progress);
                        match accepted {
                            Ok(Ok(stream)) => {
                                let _ = sender.send(Conn::new(Io::Tls(Box::new(stream)), info, slot)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "gRPC TLS handshake failed"),
                            Err(_) => tracing::debug!("gRPC TLS handshake timed out"),
                        }
                    });
                    // Ended already (a newer one took its place before it was attached): so is it.
                    if !handshakes.lock().attach(id, handshake.abort_handle()) {
                        handshake.abort();
                    }
                }
            }
        }
    });
    receiver
}

/// The client a connection from `peer` counts against, if any: none for a trusted proxy, which
/// carries many clients' connections and counts only in all.
fn counted_client(proxies: &TrustedProxies, peer: IpAddr) -> Option<IpAddr> {
    (!proxies.contains(peer)).then(|| client_key(peer))
}

/// One place of `client`'s given back; a client with none left is forgotten.
fn give_back(by_client: &mut HashMap<IpAddr, usize>, client: Option<IpAddr>) {
    if let Some(client) = client
        && let std::collections::hash_map::Entry::Occupied(mut mine) = by_client.entry(client)
    {
        *mine.get_mut() -= 1;
        if *mine.get() == 0 {
            mine.remove();
        }
    }
}

/// The client a connection is counted against: its IPv4 address, or its IPv6 address's /64,
/// the block one host is usually given.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// One thread's TLS handshakes in progress, oldest first, each with its task once attached,
/// and how many each client has (`None`: a trusted proxy's, or one whose address is unknown,
/// counted only in all).
#[derive(Default)]
struct Handshakes {
    next: u64,
    pending: std::collections::BTreeMap<u64, (Option<IpAddr>, Option<tokio::task::AbortHandle>)>,
    by_client: HashMap<IpAddr, usize>,
}

impl Handshakes {
    /// Adds a handshake of `client`; returns its id and the tasks of those it ends to stay
    /// within the bounds: the client's oldest if the client is at its share; then, if the
    /// table is full, the oldest of the client with the most in progress (a client that
    /// stalls many handshakes, rather than one that makes one at a time), or the oldest of all
    /// when none has more than one.
    fn start(&mut self, client: Option<IpAddr>) -> (u64, Vec<tokio::task::AbortHandle>) {
        let mut ended = Vec::new();
        if let Some(client) = client
            && self.by_client.get(&client).is_some_and(|n| *n >= HANDSHAKES_PER_CLIENT)
        {
            ended.extend(self.end_oldest_of(Some(client)));
        }
        if self.pending.len() >= HANDSHAKES {
            let busiest = self.by_client.iter().max_by_key(|(_, n)| **n).filter(|(_, n)| **n > 1).map(|(c, _)| *c);
            ended.extend(match busiest {
                Some(busiest) => self.end_oldest_of(Some(busiest)),
                None => self.pending.keys().next().copied().and_then(|oldest| self.end(oldest)),
            });
        }
        self.next += 1;
        self.pending.insert(self.next, (client, None));
        if let Some(client) = client {
            *self.by_client.entry(client).or_insert(0) += 1;
        }
        (self.next, ended)
    }

    /// Gives a started handshake its task; false if it has ended already.
    fn attach(&mut self, id: u64, handshake: tokio::task::AbortHandle) -> bool {
        self.pending.get_mut(&id).map(|(_, task)| *task = Some(handshake)).is_some()
    }

    fn end_oldest_of(&mut self, client: Option<IpAddr>) -> Option<tokio::task::AbortHandle> {
        let oldest = self.pending.iter().find(|(_, (c, _))| *c == client).map(|(id, _)| *id)?;
        self.end(oldest)
    }

    /// Takes a handshake out of the table, if it is still there; returns its task, if any.
    fn end(&mut self, id: u64) -> Option<tokio::task::AbortHandle> {
        let (client, handshake) = self.pending.remove(&id)?;
        give_back(&mut self.by_client, client);
        handshake
    }
}

/// A handshake's place in its thread's table, given back when it ends either way (unless a
/// newer one already took it).
struct InProgress {
    table: Arc<parking_lot::Mutex<Handshakes>>,
    id: u64,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.table.lock().end(self.id);
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection and its addresses.
struct Conn {
    io: Io,
    info: TcpConnectInfo,
    /// Its place in the count of open connections, until the connection is dropped.
    _slot: Slot,
    /// Until the client's preface has arrived: by when it must have, and how many of its
    /// bytes are still to come.
    preface: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

impl Conn {
    fn new(io: Io, info: TcpConnectInfo, slot: Slot) -> Self {
        Self { io, info, _slot: slot, preface: Some((Box::pin(tokio::time::sleep(HANDSHAKE_TIMEOUT)), PREFACE_BYTES)) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_its_ipv4_address_or_its_ipv6_64() {
        let key = |s: &str| client_key(s.parse().unwrap()).to_string();
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[tokio::test]
    async fn a_handshake_past_the_bounds_ends_the_clients_oldest_then_the_busiest_clients() {
        let mut table = Handshakes::default();
        let mut tasks = HashMap::new();
        let client = |n: u32| Some(IpAddr::from(std::net::Ipv4Addr::from(n)));
        // Starts a handshake; returns the ids of those it ended.
        let mut start = |table: &mut Handshakes, who: Option<IpAddr>| {
            let (id, ended) = table.start(who);
            let task = tokio::spawn(std::future::pending::<()>());
            tasks.insert(task.id(), id);
            assert!(table.attach(id, task.abort_handle()));
            ended.iter().map(|task| tasks[&task.id()]).collect::<Vec<u64>>()
        };
        let first = table.next + 1;
        for _ in 0..HANDSHAKES_PER_CLIENT {
            assert!(start(&mut table, client(1)).is_empty());
        }
        assert!(start(&mut table, None).is_empty(), "a trusted proxy's is counted in all only");
        assert_eq!(start(&mut table, client(1)), vec![first], "the client's own oldest");
        assert_eq!(table.by_client[&client(1).unwrap()], HANDSHAKES_PER_CLIENT);

        // The table fills with one handshake per client; client 1 still has its share.
        for n in 2.. {
            if table.pending.len() == HANDSHAKES {
                break;
            }
            assert!(start(&mut table, client(n)).is_empty());
        }
        let ones_oldest = *table.pending.iter().find(|(_, (c, _))| *c == client(1)).unwrap().0;
        assert_eq!(start(&mut table, client(u32::MAX)), vec![ones_oldest], "the busiest client's oldest, not the oldest of all");
        assert_eq!(table.pending.len(), HANDSHAKES);

        // Ended either way, a handshake gives its place back, once; one that ended before it
        // was attached is told so.
        let ids: Vec<u64> = table.pending.keys().copied().collect();
        for id in &ids {
            table.end(*id);
            assert!(table.end(*id).is_none());
        }
        assert!(table.pending.is_empty() && table.by_client.is_empty());
        assert!(!table.attach(ids[0], tokio::spawn(std::future::pending::<()>()).abort_handle()));
    }

    #[test]
    fn open_connections_are_counted_in_all_and_per_client_but_a_proxys_only_in_all() {
        let counts = Arc::new(OpenConnections {
            max: 4,
            max_per_client: 2,
            proxies: TrustedProxies::parse(&["10.0.0.0/8"]).unwrap(),
            counts: Default::default(),
        });
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = [Slot::take(&counts, ip("192.0.2.1")).unwrap(), Slot::take(&counts, ip("::ffff:192.0.2.1")).unwrap()];
        assert!(Slot::take(&counts, ip("192.0.2.1")).is_err(), "past the client's share");
        let proxied = [Slot::take(&counts, ip("10.1.1.1")).unwrap(), Slot::take(&counts, ip("10.1.1.1")).unwrap()];
        assert!(Slot::take(&counts, ip("192.0.2.2")).is_err(), "past the bound in all");
        drop(a);
        assert!(Slot::take(&counts, ip("192.0.2.1")).is_ok());
        drop(proxied);
        assert_eq!(counts.counts.lock().0, 0);
        assert!(counts.counts.lock().1.is_empty(), "given back when they end");
    }
}
