//! Logs and traces: a `tracing` subscriber (text or JSON) plus optional OTLP trace export.
//!
//! Export runs on the OpenTelemetry batch processor's own thread with a bounded queue: an
//! unreachable collector costs dropped spans, never a blocked or failed request.
//!
//! Logs and traces are filtered apart: `log_filter` decides what is printed, never what is
//! traced, so a quiet log level does not silence traces. Traces take every span at `info`
//! and the client spans around Postgres and Redis (`CLIENT_SPANS`, `debug`, which cost
//! nothing while nothing traces), sampled by `otlp.sample_ratio`. A W3C `traceparent` from a
//! peer in `server.trusted_proxies` makes the request's span a child of the caller's, sampling
//! decision included; from anyone else it is only a link, so that outside callers can neither
//! force every request of theirs into the export nor keep theirs out of it.
//!
//! Sampling is decided when a trace's root span is made (`HeadSampled`), and only the spans of
//! chosen traces reach the OpenTelemetry layer: that layer builds every span it sees, its
//! attributes formatted, and starts it and attaches its context on every entry, before its
//! sampler has a say. A trace left out costs a lookup per span instead.

use std::any::TypeId;
use std::cell::Cell;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderName;
use actix_web::{Error, HttpMessage};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Metadata, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_actix_web::RootSpanBuilder;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, TelemetrySettings};
use crate::net::TrustedProxies;
use crate::request::RequestId;

/// The target of the spans around each Postgres transaction and Redis command: `debug`, so
/// only a trace (or a log filter asking for them) pays for them.
pub const CLIENT_SPANS: &str = "tessera::client";
/// What traces take, whatever the log filter says.
const TRACE_FILTER: &str = "info,tessera::client=debug";

/// Flushes exported spans when dropped at the end of `main`.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber. Call once per process.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_new(&settings.log_filter)?;
    let fmt_layer: Box<dyn Layer<Registry> + Send + Sync> = match settings.log_format {
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(true).with_span_list(false),
        ),
        LogFormat::Text => Box::new(tracing_subscriber::fmt::layer().with_target(true)),
    };

    let provider = if settings.otlp.endpoint.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(settings.otlp.endpoint.clone())
            .with_timeout(Duration::from_millis(settings.otlp.timeout_ms))
            .build()?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(settings.service_name.clone()).build();
        Some(tracer_provider(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource)))
    };
    let otel_layer = provider.as_ref().map(|p| trace_layer(p, settings.otlp.sample_ratio));

    tracing_subscriber::registry().with(fmt_layer.with_filter(filter)).with(otel_layer).try_init()?;
    Ok(TelemetryGuard { provider })
}

fn tracer_provider(builder: opentelemetry_sdk::trace::TracerProviderBuilder) -> SdkTracerProvider {
    // `HeadSampled` has chosen every root it lets through.
    builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))).build()
}

/// What reaches `provider`: the chosen traces' spans that `TRACE_FILTER` takes.
fn trace_layer<S>(provider: &SdkTracerProvider, ratio: f64) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    // Without context activation a span's parent is the current tracing span, as
    // `HeadSampled` finds it, and no context is attached on every entry: nothing here reads
    // the current OpenTelemetry context.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tessera"))
        .with_error_records_to_exceptions(true)
        .with_context_activation(false);
    HeadSampled::new(layer, ratio).with_filter(EnvFilter::new(TRACE_FILTER))
}

// Looked up by name on every request: made once, not copied from a `&str` each time.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The per-request root span: request id, method, route template and status.
pub struct TesseraRootSpan;

impl RootSpanBuilder for TesseraRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let extensions = request.extensions();
        let request_id = extensions.get::<RequestId>().map(RequestId::as_str).unwrap_or("");
        let headers = request.headers();
        let header = |name: &HeaderName| headers.get(name).and_then(|value| value.to_str().ok());
        let caller = Caller::of(header(&TRACEPARENT), header(&TRACESTATE), || {
            let peer = request.peer_addr().map(|address| address.ip());
            request.app_data::<TrustedProxies>().is_some_and(|proxies| proxies.contains_opt(peer))
        });
        caller.root(|| {
            tracing::info_span!(
                parent: None,
                "http_request",
                otel.kind = "server",
                otel.name = tracing::field::Empty,
                http.method = %request.method(),
                http.route = tracing::field::Empty,
                http.target = %request.path(),
                http.status_code = tracing::field::Empty,
                request_id = %request_id,
                tenant_id = tracing::field::Empty,
                exception.message = tracing::field::Empty,
            )
        })
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        match outcome {
            Ok(response) => {
                span.record("http.status_code", response.status().as_u16());
                if let Some(error) = response.response().error() {
                    span.record("exception.message", tracing::field::display(error));
                }
            }
            Err(error) => {
                span.record("http.status_code", error.as_response_error().status_code().as_u16());
                span.record("exception.message", tracing::field::display(error));
            }
        }
    }
}

/// The trace context a call came with, and whether its sender may decide for it.
pub struct Caller {
    remote: Option<(opentelemetry::Context, bool)>,
}

impl Caller {
    /// From a call's `traceparent` and `tracestate`; `trusted` (asked only when a valid
    /// `traceparent` came) says whether the peer is a trusted proxy.
    pub fn of(traceparent: Option<&str>, tracestate: Option<&str>, trusted: impl FnOnce() -> bool) -> Self {
        let Some(traceparent) = traceparent else { return Caller { remote: None } };
        // On an empty context: a malformed header yields nothing, not whatever is current.
        let headers = TraceHeaders { traceparent, tracestate };
        let remote = TraceContextPropagator::new().extract_with_context(&opentelemetry::Context::new(), &headers);
        if !remote.span().span_context().is_valid() {
            return Caller { remote: None };
        }
        let trusted = trusted();
        Caller { remote: Some((remote, trusted)) }
    }

    /// Makes the call's root span with `make`, which makes one span with no parent
    /// (`parent: None`): a child of a trusted caller's span, its sampling decision included;
    /// linked to anyone else's, and sampled by the ratio like a call without one.
    pub fn root(self, make: impl FnOnce() -> Span) -> Span {
        let decided = self.remote.as_ref().filter(|(_, trusted)| *trusted).map(|(remote, _)| remote.span().span_context().is_sampled());
        let span = {
            let _decision = Decision::set(decided);
            make()
        };
        match self.remote {
            // Fails only when nothing traces this span; then there is nothing to attach either.
            Some((remote, true)) => {
                let _ = span.set_parent(remote);
            }
            Some((remote, false)) => span.add_link(remote.span().span_context().clone()),
            None => {}
        }
        span
    }
}

/// A call's trace headers as the W3C propagator reads them.
struct TraceHeaders<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for TraceHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        let mut keys = vec!["traceparent"];
        keys.extend(self.tracestate.map(|_| "tracestate"));
        keys
    }
}

thread_local! {
    /// The decision `Caller::root` has taken for the root span it is making on this thread.
    static ROOT_DECISION: Cell<Option<bool>> = const { Cell::new(None) };
}

/// `ROOT_DECISION` for as long as it lives, however its scope ends.
struct Decision;

impl Decision {
    fn set(decided: Option<bool>) -> Self {
        ROOT_DECISION.set(decided);
        Decision
    }
}

impl Drop for Decision {
    fn drop(&mut self) {
        ROOT_DECISION.set(None);
    }
}

/// Marks a span of a chosen trace, and so every span made under it. The spans of traces left
/// out, nearly all at a low ratio, carry nothing: no allocation for them.
struct Sampled;

/// Lets only the spans of chosen traces through to `inner`: a root span is chosen with
/// probability `ratio`, or as `Caller::root` decided; every other span as its parent was.
struct HeadSampled<L> {
    inner: L,
    ratio: f64,
}

impl<L> HeadSampled<L> {
    fn new(inner: L, ratio: f64) -> Self {
        HeadSampled { inner, ratio }
    }

    fn choose_root(&self) -> bool {
        ROOT_DECISION.take().unwrap_or_else(|| self.ratio >= 1.0 || (self.ratio > 0.0 && rand::random::<f64>() < self.ratio))
    }
}

fn chosen<S: Subscriber + for<'a> LookupSpan<'a>>(id: &Id, ctx: &Context<'_, S>) -> bool {
    ctx.span(id).is_some_and(|span| span.extensions().get::<Sampled>().is_some())
}

impl<S, L> Layer<S> for HeadSampled<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.enabled(metadata, ctx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.inner.max_level_hint()
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        // The parent as the OpenTelemetry layer finds it: explicit, else the current span.
        let parent = match attrs.parent() {
            Some(parent) => ctx.span(parent),
            None if attrs.is_contextual() => ctx.lookup_current(),
            None => None,
        };
        let chosen = parent.map(|parent| parent.extensions().get::<Sampled>().is_some());
        if !chosen.unwrap_or_else(|| self.choose_root()) {
            return;
        }
        match ctx.span(id) {
            Some(span) => span.extensions_mut().insert(Sampled),
            None => return,
        }
        self.inner.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if chosen(id, &ctx) {
            self.inner.on_record(id, values, ctx);
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        if chosen(id, &ctx) {
            self.inner.on_follows_from(id, follows, ctx);
        }
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.inner.event_enabled(event, ctx)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // An event outside any span is no part of a trace: the layer behind drops it too.
        let chosen = ctx.event_span(event).is_some_and(|span| span.extensions().get::<Sampled>().is_some());
        if chosen {
            self.inner.on_event(event, ctx);
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if chosen(id, &ctx) {
            self.inner.on_enter(id, ctx);
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if chosen(id, &ctx) {
            self.inner.on_exit(id, ctx);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if chosen(&id, &ctx) {
            self.inner.on_close(id, ctx);
        }
    }

    fn on_id_change(&self, old: &Id, new: &Id, ctx: Context<'_, S>) {
        self.inner.on_id_change(old, new, ctx);
    }

    // `OpenTelemetrySpanExt` (`set_parent`, `add_link`) finds the inner layer this way.
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            Some(self as *const Self as *const ())
        } else {
            // Safety: forwarded to the layer that answers for the type.
            unsafe { self.inner.downcast_raw(id) }
        }
    }
}

/// Runs `work` under the production trace layer at `ratio`; the spans it exported.
#[cfg(test)]
pub(crate) fn traced(ratio: f64, work: impl FnOnce()) -> Vec<opentelemetry_sdk::trace::SpanData> {
    use std::sync::{Arc, Mutex};

    use opentelemetry_sdk::trace::{SpanData, SpanExporter};

    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    let kept = Kept::default();
    let provider = tracer_provider(SdkTracerProvider::builder().with_simple_exporter(kept.clone()));
    tracing::subscriber::with_default(tracing_subscriber::registry().with(trace_layer(&provider, ratio)), work);
    provider.force_flush().unwrap();
    let spans = kept.0.lock().unwrap().clone();
    spans
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_sdk::trace::SpanData;

    use super::*;

    /// A call's work: a root span as a request's, a child, a client span, an event and a field.
    fn call(caller: Caller) {
        let root = caller.root(|| tracing::info_span!(parent: None, "http_request", tenant_id = tracing::field::Empty));
        let _entered = root.enter();
        root.record("tenant_id", "acme");
        tracing::info_span!("inference.queue_and_run").in_scope(|| {
            tracing::debug_span!(target: CLIENT_SPANS, "redis").in_scope(|| tracing::info!("looked up"));
        });
    }

    fn traceparent(trace: &str, flags: &str) -> String {
        format!("00-{trace}-00f067aa0ba902b7-{flags}")
    }

    const REMOTE_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    fn names(spans: &[SpanData]) -> Vec<&str> {
        spans.iter().map(|s| s.name.as_ref()).collect()
    }

    /// Counts what reaches it.
    #[derive(Clone, Default)]
    struct Reached(Arc<AtomicUsize>);

    impl Reached {
        fn count(&self) -> usize {
            self.0.swap(0, Ordering::Relaxed)
        }
    }

    impl<S: Subscriber> Layer<S> for Reached {
        fn on_new_span(&self, _: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn on_record(&self, _: &Id, _: &Record<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn on_enter(&self, _: &Id, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn on_exit(&self, _: &Id, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn on_close(&self, _: Id, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs `work` with `HeadSampled` at `ratio` before `reached`.
    fn reaching(reached: &Reached, ratio: f64, work: impl FnOnce()) -> usize {
        let subscriber = tracing_subscriber::registry().with(HeadSampled::new(reached.clone(), ratio));
        tracing::subscriber::with_default(subscriber, work);
        reached.count()
    }

    #[test]
    fn a_trace_left_out_never_reaches_the_layer_behind() {
        let reached = Reached::default();
        assert_eq!(reaching(&reached, 0.0, || call(Caller::of(None, None, || true))), 0);
        // Three spans made, entered, left and closed; one field recorded, one event.
        assert_eq!(reaching(&reached, 1.0, || call(Caller::of(None, None, || true))), 14);
        // A trusted caller's decision is taken here, not left to the sampler behind.
        let unsampled = traceparent(REMOTE_TRACE, "00");
        assert_eq!(reaching(&reached, 1.0, || call(Caller::of(Some(&unsampled), None, || true))), 0);
        let sampled = traceparent(REMOTE_TRACE, "01");
        assert_eq!(reaching(&reached, 0.0, || call(Caller::of(Some(&sampled), None, || true))), 14);
    }

    #[test]
    fn a_trace_left_out_reaches_no_exporter_and_a_chosen_one_is_whole() {
        assert!(traced(0.0, || call(Caller::of(None, None, || true))).is_empty());

        let spans = traced(1.0, || call(Caller::of(None, None, || true)));
        assert_eq!(names(&spans), ["redis", "inference.queue_and_run", "http_request"]);
        let by_name: HashMap<&str, &SpanData> = spans.iter().map(|s| (s.name.as_ref(), s)).collect();
        let root = by_name["http_request"];
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert!(root.links.links.is_empty());
        assert!(root.attributes.iter().any(|kv| kv.key.as_str() == "tenant_id" && kv.value.as_str() == "acme"));
        assert_eq!(by_name["inference.queue_and_run"].parent_span_id, root.span_context.span_id());
        assert_eq!(by_name["redis"].parent_span_id, by_name["inference.queue_and_run"].span_context.span_id());
        assert_eq!(by_name["redis"].events.events.len(), 1);
        assert!(spans.iter().all(|s| s.span_context.trace_id() == root.span_context.trace_id()));
    }

    #[test]
    fn a_trusted_callers_decision_holds_whatever_the_ratio() {
        let sampled = traceparent(REMOTE_TRACE, "01");
        let spans = traced(0.0, || call(Caller::of(Some(&sampled), None, || true)));
        assert_eq!(spans.len(), 3, "{spans:?}");
        let remote = TraceId::from_hex(REMOTE_TRACE).unwrap();
        assert!(spans.iter().all(|s| s.span_context.trace_id() == remote));
        let root = spans.iter().find(|s| s.name == "http_request").unwrap();
        assert_eq!(root.parent_span_id, SpanId::from_hex("00f067aa0ba902b7").unwrap());
        assert!(root.parent_span_is_remote);

        let unsampled = traceparent(REMOTE_TRACE, "00");
        assert!(traced(1.0, || call(Caller::of(Some(&unsampled), None, || true))).is_empty());
    }

    #[test]
    fn an_outside_callers_traceparent_decides_nothing() {
        // A caller that is no trusted proxy asks for its trace to be kept, then left out.
        let sampled = traceparent(REMOTE_TRACE, "01");
        assert!(traced(0.0, || call(Caller::of(Some(&sampled), None, || false))).is_empty());

        let unsampled = traceparent(REMOTE_TRACE, "00");
        let spans = traced(1.0, || call(Caller::of(Some(&unsampled), None, || false)));
        assert_eq!(spans.len(), 3, "{spans:?}");
        let remote = TraceId::from_hex(REMOTE_TRACE).unwrap();
        let root = spans.iter().find(|s| s.name == "http_request").unwrap();
        assert_ne!(root.span_context.trace_id(), remote);
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert_eq!(root.links.links.iter().map(|l| l.span_context.trace_id()).collect::<Vec<_>>(), [remote]);
    }

    #[test]
    fn a_malformed_traceparent_is_no_traceparent_even_inside_another_trace() {
        for garbage in ["00-00000000000000000000000000000000-00f067aa0ba902b7-01", "ff-xyz", "", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"] {
            let mut asked = false;
            let spans = traced(1.0, || {
                // Made while a chosen span is current, whose context it must not take for the caller's.
                let _outer = tracing::info_span!("outer").entered();
                call(Caller::of(Some(garbage), None, || {
                    asked = true;
                    true
                }));
            });
            assert!(!asked, "{garbage:?}: the peer was looked up");
            let root = spans.iter().find(|s| s.name == "http_request").unwrap();
            let outer = spans.iter().find(|s| s.name == "outer").unwrap();
            assert_eq!(root.parent_span_id, SpanId::INVALID, "{garbage:?}");
            assert_ne!(root.span_context.trace_id(), outer.span_context.trace_id(), "{garbage:?}");
            assert!(root.links.links.is_empty(), "{garbage:?}");
        }
    }

    #[test]
    fn traces_are_chosen_whole_at_the_ratio() {
        const CALLS: usize = 2000;
        let spans = traced(0.3, || (0..CALLS).for_each(|_| call(Caller::of(None, None, || true))));
        let mut per_trace: HashMap<TraceId, usize> = HashMap::new();
        for span in &spans {
            *per_trace.entry(span.span_context.trace_id()).or_default() += 1;
        }
        // 600 expected, a standard deviation of 20.5: seven of them either way.
        assert!((450..=750).contains(&per_trace.len()), "{} of {CALLS} traces kept", per_trace.len());
        assert!(per_trace.values().all(|&n| n == 3), "a trace was kept in part");
    }

    #[test]
    fn a_decision_ends_with_the_root_it_was_taken_for() {
        let unsampled = traceparent(REMOTE_TRACE, "00");
        let spans = traced(1.0, || {
            call(Caller::of(Some(&unsampled), None, || true));
            // Nor does it outlive a root that was never made.
            let made = std::panic::catch_unwind(|| Caller::of(Some(&unsampled), None, || true).root(|| panic!("no span")));
            assert!(made.is_err());
            tracing::info_span!(parent: None, "inference.batch").in_scope(|| {});
        });
        assert_eq!(names(&spans), ["inference.batch"]);
    }

    #[test]
    fn a_root_made_inside_a_left_out_trace_is_decided_on_its_own() {
        // As the model worker's batch span (`parent: None`) is, whatever its caller's trace;
        // and a span whose parent traces do not take (`debug`) is a root too.
        let unsampled = traceparent(REMOTE_TRACE, "00");
        let spans = traced(1.0, || {
            let left_out = Caller::of(Some(&unsampled), None, || true).root(|| tracing::info_span!(parent: None, "http_request"));
            left_out.in_scope(|| {
                tracing::info_span!(parent: None, "inference.batch").in_scope(|| {});
                let hidden = tracing::debug_span!("hidden");
                tracing::info_span!(parent: &hidden, "under_hidden").in_scope(|| {});
            });
        });
        assert_eq!(names(&spans), ["inference.batch", "under_hidden"]);
        assert!(spans.iter().all(|s| s.parent_span_id == SpanId::INVALID));
    }
}
