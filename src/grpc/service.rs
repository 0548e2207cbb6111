//! `inference.GRPCInferenceService`: the Open Inference Protocol's gRPC calls over the same
//! services as HTTP. A call is admitted as an HTTP request is, by `Admitted` before its message
//! is read (`http::authenticate::admit`: the credential, then the tenant's rate limit); it needs
//! `inference.run` in the credential's tenant, and reaches `InferenceService`, which validates,
//! batches, caches, audits, meters and counts usage whichever protocol delivered the call.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use prost::Message;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{SMALL_MESSAGE_BYTES, convert};
use super::proto::grpc_inference_service_server::GrpcInferenceService;
use super::proto::model_metadata_response::TensorMetadata;
use super::proto::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse,
    ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};
use crate::audit::AuditActor;
use crate::error::{ApiError, Code, shortened};
use crate::http::authenticate::admit;
use crate::http::guard::{require, tenant_required};
use crate::http::health::Probes;
use crate::identity::authenticate::Authenticator;
use crate::identity::{Permission, Principal, perm};
use crate::inference::InferenceService;
use crate::inference::cache::CacheStatus;
use crate::inference::protocol::{InferRequest, Limits, ProtocolError};
use crate::inference::service::{Answer, InferCall, WireReply, WireRequest};
use crate::net::TrustedProxies;
use crate::telemetry::Caller;
use crate::request::{RequestId, RequestInfo};
use crate::tenancy::TenantInfo;
use crate::tenancy::rate_limit::RateLimiter;

/// A status message's detail is cut to this many bytes.
const MAX_DETAIL: usize = 1024;

#[derive(Clone)]
pub struct Inference {
    /// Shared, not cloned, by the calls: one reference count each.
    pub(super) inference: Arc<InferenceService>,
    pub(super) probes: Probes,
    pub(super) proxies: TrustedProxies,
}

/// Every call but the public ones acts in the credential's tenant and needs `inference.run`,
/// as the HTTP guard checks it for `/v2/models/...`.
fn authorize(principal: &Principal) -> Result<Arc<TenantInfo>, ApiError> {
    let tenant = principal.tenant.clone().ok_or_else(tenant_required)?;
    require(principal, Permission::from_u8(perm::INFERENCE_RUN))?;
    Ok(tenant)
}

fn unauthenticated() -> ApiError {
    ApiError::new(Code::Unauthenticated, "this call needs `authorization: Bearer <token or API key>` metadata")
}

/// Names and versions as HTTP paths can carry them: no NUL (Postgres text cannot hold one)
/// and no longer than a path segment would be.
fn named(text: &str, field: &str) -> Result<(), Status> {
    const MAX: usize = 1024;
    if text.contains('\0') || text.len() > MAX {
        return Err(refused(ApiError::new(Code::InvalidRequest, format!("{field} holds a NUL character or more than {MAX} bytes"))));
    }
    Ok(())
}

/// The calls anyone may make, as `/v2/health/*` and `/v2` over HTTP.
const PUBLIC: [&str; 3] = [
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ServerMetadata",
];

/// The only call whose message may be large (`inference.max_request_bytes`).
const INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// The service behind admission: every call but the public ones presents a credential that
/// `admit` accepts, with `inference.run` in its tenant, and that tenant has rate to spare,
/// before a byte of its message is read. The principal rides in the request's extensions to
/// the call. Only an admitted `ModelInfer` reaches `large`; every other call is decoded by
/// `small`, whose messages are a few KiB at most, so no anonymous caller makes the server
/// buffer more.
#[derive(Clone)]
pub struct Admitted<S> {
    pub(super) small: S,
    pub(super) large: S,
    /// The largest message `large` takes; `small`'s is `SMALL_MESSAGE_BYTES`.
    pub(super) max_message_bytes: usize,
    pub(super) authenticator: Arc<Authenticator>,
    pub(super) limiter: RateLimiter,
    /// Whose `traceparent` the call's span follows (`telemetry::Caller`).
    pub(super) proxies: TrustedProxies,
}

impl<S> Admitted<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    /// Serves one call, within `timeout` or the caller's `grpc-timeout` if sooner, from its
    /// first byte to its answer (a message that arrives too slowly, say). One reference count
    /// per call, not one per service it holds: both serving threads touch them.
    pub(super) fn serve(self: &Arc<Self>, mut request: http::Request<Body>, timeout: Duration) -> BoxFuture<http::Response<Body>, Infallible> {
        let asked = grpc_timeout(request.headers());
        let timeout = asked.map_or(timeout, |asked| asked.min(timeout));
        if let Some(asked) = asked {
            request.extensions_mut().insert(AskedTimeout(asked));
        }
        let path = request.uri().path();
        let (public, infer) = (PUBLIC.contains(&path), path == INFER);
        let span = span(&request, &self.proxies, path.rsplit('/').next().filter(|m| !m.is_empty()).map_or("unknown", method_name));
        let (mut inner, limit) = if infer { (self.large.clone(), self.max_message_bytes) } else { (self.small.clone(), SMALL_MESSAGE_BYTES) };
        let this = self.clone();
        let call = async move {
            if !public {
                let admitted = match request.headers().get("authorization") {
                    None => Err(unauthenticated()),
                    Some(value) => admit(&this.authenticator, &this.limiter, value.as_bytes()).await,
                };
                match admitted.and_then(|principal| authorize(&principal).map(|_| principal)) {
                    Ok(principal) => {
                        request.extensions_mut().insert(principal);
                    }
                    Err(error) => return Ok(status(error).into_http()),
                }
            }
            std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            inner.call(request).await.map(|answer| over_limit(answer, limit))
        };
        Box::pin(
            async move {
                match tokio::time::timeout(timeout, call).await {
                    Ok(answered) => answered,
                    // Anyone can send a message slowly: not worth an error in the log.
                    Err(_) => {
                        tracing::debug!("gRPC call timed out");
                        let late = ApiError::new(Code::DeadlineExceeded, "the call took longer than its deadline or the server allows");
                        Ok(quiet_status(tonic::Code::DeadlineExceeded, &late).into_http())
                    }
                }
            }
            .instrument(span),
        )
    }
}

/// tonic refuses a message longer than its limit, from the length its prefix announces and
/// before reading it, with `OUT_OF_RANGE` and its own words in a trailers-only answer (its
/// `Status` in the answer's extensions). That refusal, and only that, is answered as HTTP
/// answers a body over its limit instead.
fn over_limit(answer: http::Response<Body>, limit: usize) -> http::Response<Body> {
    let too_long = answer.headers().get("grpc-status").is_some_and(|s| s.as_bytes() == b"11")
        && answer
            .extensions()
            .get::<Status>()
            .is_some_and(|s| s.code() == tonic::Code::OutOfRange && s.message().starts_with(TOO_LONG));
    if !too_long {
        return answer;
    }
    status(ApiError::new(Code::PayloadTooLarge, format!("the message exceeds the limit of {limit} bytes"))).into_http()
}

/// How tonic's decoder begins its refusal of a message over the limit.
const TOO_LONG: &str = "Error, decoded message length too large";

/// The method's name as a span field: one of the protocol's, or `unknown`.
fn method_name(method: &str) -> &'static str {
    ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"]
        .into_iter()
        .find(|m| *m == method)
        .unwrap_or("unknown")
}

/// A `ModelInferRequest` on its way through the inference path.
#[derive(Default)]
struct GrpcRequest {
    message: ModelInferRequest,
    len: usize,
}

impl WireRequest for GrpcRequest {
    fn wire_len(&self) -> usize {
        self.len
    }

    fn parse(self, limits: &Limits) -> Result<InferRequest, ProtocolError> {
        convert::infer_request(self.message, self.len, limits)
    }
}

struct GrpcReply {
    message: ModelInferResponse,
    /// `message.encoded_len()`, which walks the whole message: found once.
    len: usize,
    cache: CacheStatus,
}

impl WireReply for GrpcReply {
    const BOUNDED: bool = true;

    fn encode(answer: Answer<'_>) -> Self {
        let cache = answer.cache;
        let message = convert::infer_response(answer);
        GrpcReply { len: message.encoded_len(), message, cache }
    }

    fn wire_len(&self) -> usize {
        self.len
    }

    fn cache(&self) -> CacheStatus {
        self.cache
    }
}

/// A refusal as gRPC status: the code nearest the HTTP status, the stable problem code in
/// brackets before the detail and again in the `tessera-error-code` trailer, and `retry-after`
/// in seconds when a retry may succeed.
pub fn status(error: ApiError) -> Status {
    let code = error.code();
    let grpc = match code.status().as_u16() {
        400 | 415 | 422 => tonic::Code::InvalidArgument,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::NotFound,
        409 => tonic::Code::FailedPrecondition,
        413 | 429 => tonic::Code::ResourceExhausted,
        503 => tonic::Code::Unavailable,
        504 => tonic::Code::DeadlineExceeded,
        500 => tonic::Code::Internal,
        _ => tonic::Code::Unknown,
    };
    if code.status().is_server_error() {
        tracing::error!(error = ?error, "gRPC call failed");
    }
    quiet_status(grpc, &error)
}

/// The status of a refusal, logged by the caller if at all.
fn quiet_status(grpc: tonic::Code, error: &ApiError) -> Status {
    let code = error.code();
    let mut metadata = MetadataMap::new();
    metadata.insert("tessera-error-code", tonic::metadata::MetadataValue::from_static(code.as_str()));
    if let Some(secs) = error.retry_after() {
        metadata.insert("retry-after", secs.into());
    }
    // Details can echo what the caller sent (names, shapes): a trailer stays small.
    Status::with_metadata(grpc, format!("[{}] {}", code.as_str(), shortened(error.detail(), MAX_DETAIL)), metadata)
}

fn refused(error: impl Into<ApiError>) -> Status {
    status(error.into())
}

/// The caller's `grpc-timeout`, read once when its call arrives.
#[derive(Clone, Copy)]
struct AskedTimeout(Duration);

/// `grpc-timeout`: at most 8 digits, then a unit (Hours, Minutes, Seconds, milli, micro, nano).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn version(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

impl Inference {
    /// The caller `Admitted` let in, allowed `inference.run` in its own tenant. Without one
    /// (a call that was never admitted), nothing: fail closed.
    fn caller<T>(&self, request: &Request<T>) -> Result<(Principal, Arc<TenantInfo>), Status> {
        let principal = request.extensions().get::<Principal>().cloned().ok_or_else(|| status(unauthenticated()))?;
        let tenant = authorize(&principal).map_err(status)?;
        Ok((principal, tenant))
    }

    /// Where the call came from, as its audit event records it: the peer, or the client a
    /// trusted proxy names in `x-forwarded-for`.
    fn info<T>(&self, request: &Request<T>) -> RequestInfo {
        let metadata = request.metadata();
        let request_id = metadata
            .get("x-request-id")
            .and_then(|v| HeaderValue::from_bytes(v.as_encoded_bytes()).ok())
            .and_then(|v| RequestId::parse(&v))
            .unwrap_or_else(RequestId::generate);
        RequestInfo::from_parts(
            request.remote_addr().map(|a| a.ip()),
            Some(&self.proxies),
            metadata.get_all("x-forwarded-for").iter().map(|v| v.as_encoded_bytes()),
            metadata.get("user-agent").map(|v| v.as_encoded_bytes()),
            Some(request_id),
        )
    }
}

/// One span per call, as the HTTP root span is per request, with the caller's trace context
/// as HTTP takes it; admission records the tenant.
fn span(request: &http::Request<Body>, proxies: &TrustedProxies, method: &'static str) -> tracing::Span {
    let header = |name: &str| request.headers().get(name).and_then(|value| value.to_str().ok());
    let caller = Caller::of(header("traceparent"), header("tracestate"), || {
        let peer = request.extensions().get::<TcpConnectInfo>().and_then(|info| info.remote_addr).map(|address| address.ip());
        proxies.contains_opt(peer)
    });
    caller.root(|| {
        tracing::info_span!(parent: None, "grpc.request", otel.kind = "server", rpc.system = "grpc", rpc.method = method, tenant_id = tracing::field::Empty)
    })
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    /// Ready as `/v2/health/ready` is: ONNX Runtime loaded and Postgres answering.
    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        let ready = self.inference.models.runtime_ready() && self.probes.postgres(Duration::from_secs(1)).await.is_ok();
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn server_metadata(&self, _: Request<ServerMetadataRequest>) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse { name: "tessera".to_owned(), version: crate::VERSION.to_owned(), extensions: Vec::new() }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let (principal, tenant) = self.caller(&request)?;
        let message = request.get_ref();
        named(&message.name, "name")?;
        named(&message.version, "version")?;
        self.inference
            .readiness(&tenant, &message.name, version(&message.version), &AuditActor::from(&principal))
            .await
            .map_err(refused)?;
        Ok(Response::new(ModelReadyResponse { ready: true }))
    }

    async fn model_metadata(&self, request: Request<ModelMetadataRequest>) -> Result<Response<ModelMetadataResponse>, Status> {
        let (_, tenant) = self.caller(&request)?;
        let message = request.get_ref();
        named(&message.name, "name")?;
        named(&message.version, "version")?;
        let metadata = self.inference.metadata(&tenant, &message.name, version(&message.version)).await.map_err(refused)?;
        let tensors = |list: Vec<crate::inference::metadata::TensorMetadata>| {
            list.into_iter().map(|t| TensorMetadata { name: t.name, datatype: t.datatype, shape: t.shape }).collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: metadata.name,
            versions: metadata.versions,
            platform: metadata.platform.to_owned(),
            inputs: tensors(metadata.inputs),
            outputs: tensors(metadata.outputs),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let (principal, tenant) = self.caller(&request)?;
        let info = self.info(&request);
        let timeout = request.extensions().get::<AskedTimeout>().map(|t| t.0);
        let message = request.into_inner();
        named(&message.model_name, "model_name")?;
        named(&message.model_version, "model_version")?;
        let (name, version) = (message.model_name.clone(), version(&message.model_version).map(str::to_owned));
        let len = message.encoded_len();
        let call = InferCall {
            tenant: tenant.id,
            actor: AuditActor::from(&principal),
            name,
            version,
            request: GrpcRequest { message, len },
            timeout,
            no_cache: false,
            info,
        };
        // A caller that goes away (its deadline, a reset stream) drops this handler, but the
        // call it started still ends, and is audited and counted.
        let inference = self.inference.clone();
        let reply: GrpcReply = RunsToEnd::new(async move { inference.infer(call).await }.in_current_span())
            .await
            .map_err(|panicked| refused(ApiError::internal(panicked)))?
            .map_err(refused)?;
        Ok(Response::new(reply.message))
    }
}

/// A future polled where it is awaited, as any other; dropped before it ends, it runs on to
/// its end as a task of its own. Unlike a task from the start, a call that ends while its
/// caller waits (nearly all) costs no task, no scheduling and no wake-up across tasks. A panic
/// is answered as an error, as a task's would be, and what panicked is never polled again.
struct RunsToEnd<F: Future + Send + 'static>(Option<Pin<Box<F>>>)
where
    F::Output: Send + 'static;

impl<F: Future + Send + 'static> RunsToEnd<F>
where
    F::Output: Send + 'static,
{
    fn new(future: F) -> Self {
        Self(Some(Box::pin(future)))
    }
}

impl<F: Future + Send + 'static> Future for RunsToEnd<F>
where
    F::Output: Send + 'static,
{
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(future) = self.0.as_mut() else { panic!("RunsToEnd polled after it ended") };
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx)));
        let output = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(output)) => Ok(output),
            Err(_) => Err(Panicked),
        };
        self.0 = None;
        Poll::Ready(output)
    }
}

impl<F: Future + Send + 'static> Drop for RunsToEnd<F>
where
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        // A runtime that is shutting down drops the task unrun, as it would have dropped a
        // task spawned from the start; off a runtime there is nothing to run it on.
        if let Some(future) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(future);
        }
    }
}

/// A call's future panicked.
#[derive(Debug, thiserror::Error)]
#[error("the call panicked")]
struct Panicked;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tonics_refusal_of_a_long_message_is_answered_as_over_the_limit() {
        let code = |answer: &http::Response<Body>| {
            (answer.headers()["grpc-status"].to_str().unwrap().to_owned(), answer.headers().get("tessera-error-code").cloned())
        };
        let tonics = Status::out_of_range(format!("{TOO_LONG}: found 17 bytes, the limit is: 16 bytes")).into_http();
        let answer = over_limit(tonics, 16);
        assert_eq!(code(&answer), ("8".to_owned(), Some(http::HeaderValue::from_static("payload_too_large"))));

        // Any other OUT_OF_RANGE, or any other answer, passes unchanged.
        for answer in [Status::out_of_range("an index past the end").into_http(), Status::ok("").into_http(), http::Response::new(Body::default())] {
            let before = answer.headers().clone();
            assert_eq!(over_limit(answer, 16).headers(), &before);
        }
    }

    #[test]
    fn a_calls_span_follows_the_traceparent_of_a_trusted_proxy_only() {
        let remote = "4bf92f3577b34da6a3ce929d0e0e4736";
        let proxies = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        let request = |peer: &str, flags: &str| {
            let mut request = http::Request::new(Body::default());
            request.headers_mut().insert("traceparent", format!("00-{remote}-00f067aa0ba902b7-{flags}").parse().unwrap());
            request.extensions_mut().insert(TcpConnectInfo { local_addr: None, remote_addr: Some(format!("{peer}:4000").parse().unwrap()) });
            request
        };
        let trace = |peer: &str, flags: &str, ratio: f64| {
            crate::telemetry::traced(ratio, || drop(span(&request(peer, flags), &proxies, "ModelInfer")))
        };

        let spans = trace("10.1.2.3", "01", 0.0);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].span_context.trace_id().to_string(), remote);
        assert!(trace("10.1.2.3", "00", 1.0).is_empty());

        assert!(trace("192.0.2.1", "01", 0.0).is_empty());
        let spans = trace("192.0.2.1", "00", 1.0);
        assert_eq!(spans.len(), 1);
        assert_ne!(spans[0].span_context.trace_id().to_string(), remote);
        assert_eq!(spans[0].links.links[0].span_context.trace_id().to_string(), remote);
    }

    #[tokio::test]
    async fn a_call_awaited_to_its_end_answers_where_it_is_awaited() {
        assert_eq!(RunsToEnd::new(async { 3 }).await.ok(), Some(3));
    }

    #[test]
    fn grpc_timeouts_are_read_as_the_protocol_writes_them() {
        let read = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().expect("a header value"));
            grpc_timeout(&headers)
        };
        assert_eq!(read("100m"), Some(Duration::from_millis(100)));
        assert_eq!(read("2S"), Some(Duration::from_secs(2)));
        assert_eq!(read("99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
        for refused in ["", "m", "123456789S", "-5S", "+5S", "5", "5x", "1.5S"] {
            assert_eq!(read(refused), None, "{refused:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn a_call_that_panics_is_answered_as_an_error_and_not_run_again() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = polls.clone();
        let call = RunsToEnd::new(async move {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if counted.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                panic!("an engine's bug");
            }
            3
        });
        assert!(call.await.is_err(), "a panic is an error, not an unwinding of the server's task");
        tokio::task::yield_now().await;
        assert_eq!(polls.load(std::sync::atomic::Ordering::SeqCst), 1, "what panicked is not spawned to run again");
    }

    #[tokio::test]
    async fn a_call_whose_caller_goes_away_still_runs_to_its_end() {
        // Dropped after it started waiting, as when a caller resets its stream mid-call.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (ended, end) = tokio::sync::oneshot::channel();
        let mut call = Box::pin(RunsToEnd::new(async move {
            let _ = released.await;
            let _ = ended.send("audited");
        }));
        assert!(futures::poll!(call.as_mut()).is_pending());
        drop(call);
        release.send(()).expect("the call still waits, on a task of its own");
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), end).await.expect("in time").expect("ended"), "audited");

        // Dropped before it was ever polled: it runs all the same, as a task would have.
        let (ended, end) = tokio::sync::oneshot::channel();
        drop(RunsToEnd::new(async move {
            let _ = ended.send("audited");
        }));
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), end).await.expect("in time").expect("ended"), "audited");
    }
}
