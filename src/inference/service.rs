//! One inference call, end to end: parse (OIP v2 JSON or binary extension), resolve and load
//! the model, check inputs against its signature, consult the result cache, queue the job
//! for a worker (or refuse at once when the queue is full), wait no longer than the deadline,
//! encode the answer, and hand the call's audit event to the batched sink.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::cache::{CacheStatus, Flight, ResultCache};
use super::engine::RunOutput;
use super::error::InferenceError;
use super::metrics::InferenceMetrics;
use super::models::{LoadedModel, ModelManager, Resolved};
use super::quiet::{self, CallInProgress};
use super::protocol::{EncodedResponse, InferOutput, InferRequest, Limits, ProtocolError, encode_infer_response, parse_infer_request_bytes};
use super::validate::{Prepared, prepare};
use super::worker::{Job, WorkError};
use crate::audit::sink::{AuditSink, CallEvent};
use crate::audit::{AuditActor, Outcome};
use crate::request::RequestInfo;
use crate::error::ErrorCode;
use crate::tenancy::TenantId;
use crate::usage::{CallUsage, UsageRecorder};

/// Requests larger than this are parsed, validated and keyed on the blocking pool rather than
/// the executor.
const PARSE_INLINE_BYTES: usize = 64 * 1024;

/// How long a quiet server's HTTP worker polls for the model's answer before parking: enough
/// for a small model, a fraction of a larger one's run.
const POLL_FOR_ANSWER: Duration = Duration::from_micros(100);

#[derive(Clone)]
pub struct InferenceService {
    pub models: Arc<ModelManager>,
    cache: Arc<ResultCache>,
    audit: AuditSink,
    pub metrics: Arc<InferenceMetrics>,
    usage: UsageRecorder,
    limits: Arc<Limits>,
}

/// One call as its protocol delivered it. `R` is the request still in the protocol's form:
/// it is parsed only once the model resolved, so an unknown model answers 404 whatever the body.
pub struct InferCall<R> {
    pub tenant: TenantId,
    pub actor: AuditActor,
    pub name: String,
    /// Owned: the call's audit event takes it over when the call is done.
    pub version: Option<String>,
    pub request: R,
    /// Deadline asked for outside the request (a header, a gRPC deadline), if any.
    pub timeout: Option<Duration>,
    /// `Cache-Control: no-cache`.
    pub no_cache: bool,
    pub info: RequestInfo,
}

/// An inference request in a protocol's wire form (the HTTP body, a gRPC message). Parsing
/// takes it over, so that its tensors move into the request rather than being copied; the
/// default is what is left behind.
pub trait WireRequest: Default + Send + 'static {
    /// Bytes received, as usage counts them.
    fn wire_len(&self) -> usize;
    fn parse(self, limits: &Limits) -> Result<InferRequest, ProtocolError>;
}

/// What a call answers, before any protocol encodes it.
pub struct Answer<'a> {
    pub model: &'a str,
    pub version: &'a str,
    pub id: Option<&'a str>,
    pub outputs: Vec<InferOutput>,
    /// Per output: whether the caller asked for it in binary (raw) form.
    pub binary: &'a [bool],
    pub cache: CacheStatus,
}

/// A protocol's encoding of an [`Answer`].
pub trait WireReply: Sized {
    /// Whether answers are bounded as requests are (`inference.max_request_bytes`): a gRPC
    /// message is, an HTTP body is not.
    const BOUNDED: bool = false;
    fn encode(answer: Answer<'_>) -> Self;
    /// Bytes sent, as usage counts them.
    fn wire_len(&self) -> usize;
    fn cache(&self) -> CacheStatus;
}

/// The HTTP body of an OIP v2 request: JSON, or JSON then binary tensors.
#[derive(Default)]
pub struct HttpBody {
    pub body: Bytes,
    /// `Inference-Header-Content-Length`: the JSON part of a binary-extension body.
    pub json_len: Option<usize>,
}

impl WireRequest for HttpBody {
    fn wire_len(&self) -> usize {
        self.body.len()
    }

    fn parse(self, limits: &Limits) -> Result<InferRequest, ProtocolError> {
        parse_infer_request_bytes(&self.body, self.json_len, limits)
    }
}

pub struct InferReply {
    pub encoded: EncodedResponse,
    pub cache: CacheStatus,
}

impl WireReply for InferReply {
    fn encode(answer: Answer<'_>) -> Self {
        let mut parameters = serde_json::Map::new();
        parameters.insert("cache".to_owned(), json!(answer.cache.as_str()));
        let names: Vec<&str> = answer.outputs.iter().map(|o| o.name.as_str()).collect();
        let encoded = encode_infer_response(answer.model, Some(answer.version), answer.id, Some(&parameters), &answer.outputs, |name| {
            names.iter().position(|n| *n == name).is_some_and(|i| answer.binary[i])
        });
        InferReply { encoded, cache: answer.cache }
    }

    fn wire_len(&self) -> usize {
        self.encoded.body.len()
    }

    fn cache(&self) -> CacheStatus {
        self.cache
    }
}

fn failed(e: WorkError) -> InferenceError {
    match e {
        WorkError::Failed(message) => InferenceError::ModelFailed(message),
        WorkError::Crashed => InferenceError::WorkerCrashed,
        WorkError::DeadlineExceeded => InferenceError::DeadlineBeforeRun,
    }
}

impl InferenceService {
    pub fn new(
        models: Arc<ModelManager>,
        cache: Arc<ResultCache>,
        audit: AuditSink,
        metrics: Arc<InferenceMetrics>,
        usage: UsageRecorder,
    ) -> Self {
        Self { models, cache, audit, metrics, usage, limits: Arc::new(Limits::default()) }
    }

    pub async fn infer<R: WireRequest, A: WireReply>(&self, mut call: InferCall<R>) -> Result<A, InferenceError> {
        let started = Instant::now();
        let _in_progress = CallInProgress::enter();
        // Resolve first: an unknown model is a 404 before any body is parsed, and metric
        // labels only ever name models that exist (a caller cannot mint series).
        let bytes_in = call.request.wire_len() as u64;
        let (result, resolved) = match self.models.resolve(call.tenant, &call.name, call.version.as_deref()).await {
            Ok(resolved) => (self.infer_inner::<R, A>(&mut call, &resolved, started).await, Some(resolved)),
            Err(e) => (Err(e), None),
        };
        let (outcome, cache, rows) = match &result {
            Ok((reply, rows)) => (Outcome::Success, reply.cache(), *rows),
            Err(e) if e.code().status().is_client_error() => (Outcome::Denied, CacheStatus::Bypass, 0),
            Err(_) => (Outcome::Failure, CacheStatus::Bypass, 0),
        };
        let label = if resolved.is_some() { call.name.as_str() } else { "unknown" };
        let elapsed = started.elapsed();
        self.metrics.observe(call.tenant, label, outcome == Outcome::Success, cache, elapsed);
        // Usage names only versions that resolved: a caller's made-up names count nowhere.
        if let Some(resolved) = &resolved {
            let usage = CallUsage {
                rows: rows as u64,
                cache_hit: cache == CacheStatus::Hit,
                bytes_in,
                bytes_out: result.as_ref().map_or(0, |(reply, _)| reply.wire_len() as u64),
                outcome: match &result {
                    Ok(_) => Ok(elapsed),
                    Err(e) => Err(e.code()),
                },
            };
            self.usage.record(call.tenant, resolved.artifact, &resolved.name, resolved.version, usage);
        }
        let event = CallEvent {
            tenant: call.tenant,
            actor: call.actor,
            model: resolved.map_or_else(|| Arc::from(call.name), |r| r.name.clone()),
            version: call.version,
            outcome,
            cache: cache.as_str(),
            rows: rows as u64,
            code: result.as_ref().err().map(|e| e.code().as_str()),
            not_recordable: false,
            info: call.info,
        };
        self.audit.call(event).await;
        result.map(|(reply, _)| reply)
    }

    async fn infer_inner<R: WireRequest, A: WireReply>(
        &self,
        call: &mut InferCall<R>,
        resolved: &Resolved,
        started: Instant,
    ) -> Result<(A, usize), InferenceError> {
        let request = std::mem::take(&mut call.request);
        // Parsing, validation and the cache key each read every element: a large request's
        // go to the blocking pool, not to a thread that serves other callers.
        let large = request.wire_len() > PARSE_INLINE_BYTES;
        let mut request = if large {
            let limits = self.limits.clone();
            tokio::task::spawn_blocking(move || request.parse(&limits)).await.map_err(anyhow::Error::new)?
        } else {
            request.parse(&self.limits)
        }?;

        let settings = self.models.settings();
        let asked = request
            .parameters
            .remove("timeout")
            .and_then(|v| v.as_u64())
            .map(Duration::from_micros)
            .or(call.timeout);
        let timeout = asked
            .unwrap_or(Duration::from_millis(settings.default_timeout_ms))
            .min(Duration::from_millis(settings.max_timeout_ms));
        let deadline = started + timeout;
        let bypass = call.no_cache || request.parameters.remove("no_cache").is_some_and(|v| v == json!(true));
        let id = request.id.take();

        let model = match self.models.loaded(resolved) {
            Some(model) => model,
            None => {
                let loading = self.models.get(call.tenant, &call.name, resolved, &call.actor).instrument(tracing::info_span!("inference.model"));
                Box::pin(tokio::time::timeout_at(deadline.into(), loading))
                    .await
                    .map_err(|_| InferenceError::DeadlineWhileLoading)??
            }
        };
        let parameters = std::mem::take(&mut request.parameters);
        let prepared = if large {
            let model = model.clone();
            tokio::task::spawn_blocking(move || prepare(&model, request)).await.map_err(anyhow::Error::new)??
        } else {
            prepare(&model, request)?
        };
        let rows = prepared.inputs.first().and_then(|(s, _)| s.first().copied()).unwrap_or(1);
        let selected: Vec<(usize, bool)> = prepared.outputs.clone();

        let (outputs, cache) = if model.cache_ttl_seconds == 0 || bypass {
            (self.run(&model, prepared, deadline).await?, CacheStatus::Bypass)
        } else {
            // Boxed: most calls never reach Redis, and every call's future would otherwise
            // carry room for its requests (and be copied when the handler is boxed).
            Box::pin(self.cached_run(&model, prepared, parameters, large, call.tenant, deadline)).await?
        };

        let outputs: Vec<InferOutput> = outputs
            .into_iter()
            .zip(&selected)
            .map(|(o, (index, _))| InferOutput { name: model.outputs[*index].name.clone(), shape: o.shape, data: o.data })
            .collect();
        let binary: Vec<bool> = selected.iter().map(|(_, b)| *b).collect();
        let answer = Answer { model: &model.name, version: &model.version_label, id: id.as_deref(), outputs, binary: &binary, cache };
        let reply = A::encode(answer);
        // Refused here rather than by the protocol's encoder, so that the caller reads why and
        // the call is audited as what it was.
        if A::BOUNDED && reply.wire_len() > settings.max_request_bytes {
            return Err(InferenceError::AnswerTooLarge { bytes: reply.wire_len(), limit: settings.max_request_bytes });
        }
        Ok((reply, rows))
    }

    /// A call to a model whose results are cached: joins the flight for its inputs, answers from
    /// Redis or runs the model and stores the outputs.
    async fn cached_run(
        &self,
        model: &LoadedModel,
        prepared: Prepared,
        parameters: serde_json::Map<String, serde_json::Value>,
        large: bool,
        tenant: TenantId,
        deadline: Instant,
    ) -> Result<(Vec<RunOutput>, CacheStatus), InferenceError> {
        // The key hashes every input: a large request's on the blocking pool.
        let (key, prepared) = if large {
            let artifact = model.artifact;
            tokio::task::spawn_blocking(move || (ResultCache::key(artifact, &prepared.inputs, &prepared.outputs, &parameters), prepared))
                .await
                .map_err(anyhow::Error::new)?
        } else {
            (ResultCache::key(model.artifact, &prepared.inputs, &prepared.outputs, &parameters), prepared)
        };
        let tenant = tenant.0;
        // Join before looking: a request arriving as a flight lands then finds the value
        // in Redis (stored before landing) rather than running the model a second time.
        match self.cache.join(key) {
            Flight::Leader(guard) => {
                let (outputs, status) = match self.cache.get(tenant, &key).await {
                    Some(hit) => (hit, CacheStatus::Hit),
                    None => {
                        // On failure the guard drops unlanded: followers then run the model
                        // themselves and meet their own outcome (their deadline, the queue).
                        let outputs = self.run(model, prepared, deadline).await?;
                        self.cache.put(tenant, &key, &outputs, model.cache_ttl_seconds).await;
                        (outputs, CacheStatus::Miss)
                    }
                };
                guard.land(&outputs, status);
                Ok((outputs, status))
            }
            Flight::Follower(mut receiver) => match tokio::time::timeout_at(deadline.into(), receiver.recv()).await {
                Ok(Ok(shared)) => Ok((shared.0.clone(), shared.1)),
                // The leader went away without a result (it failed or was cancelled).
                Ok(Err(_)) => Ok((self.run(model, prepared, deadline).await?, CacheStatus::Miss)),
                Err(_) => Err(InferenceError::DeadlineWhileWaiting),
            },
        }
    }

    /// Queues the job and waits for its outputs (the selected ones, in request order).
    async fn run(&self, model: &LoadedModel, prepared: Prepared, deadline: Instant) -> Result<Vec<RunOutput>, InferenceError> {
        let (reply, mut answer) = oneshot::channel();
        let job = Job {
            inputs: prepared.inputs,
            deadline: Some(deadline),
            batchable: prepared.batchable,
            span: tracing::Span::current(),
            reply,
        };
        if model.pool.submit(job).is_err() {
            return Err(InferenceError::Overloaded(model.name.clone()));
        }
        let waiting = tracing::info_span!("inference.queue_and_run", model = %model.name, version = model.version);
        let polled = waiting.in_scope(|| {
            quiet::poll(POLL_FOR_ANSWER, || match answer.try_recv() {
                Ok(result) => Some(Ok(result)),
                Err(oneshot::error::TryRecvError::Closed) => Some(Err(())),
                Err(oneshot::error::TryRecvError::Empty) => None,
            })
        });
        let answered = match polled {
            Some(answered) => answered,
            None => match tokio::time::timeout_at(deadline.into(), answer).instrument(waiting).await {
                Err(_) => return Err(InferenceError::DeadlineBeforeAnswer),
                Ok(answered) => answered.map_err(|_| ()),
            },
        };
        let all = match answered {
            Err(()) => return Err(InferenceError::WorkerStopped),
            Ok(result) => result.map_err(failed)?,
        };
        let mut all: Vec<Option<RunOutput>> = all.into_iter().map(Some).collect();
        prepared
            .outputs
            .iter()
            .map(|(index, _)| {
                all.get_mut(*index)
                    .and_then(Option::take)
                    .ok_or(InferenceError::MissingOutputs)
            })
            .collect()
    }
}
