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

use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_actix_web::RootSpanBuilder;
use tracing_subscriber::layer::SubscriberExt;
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
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.otlp.sample_ratio))))
                .with_resource(resource)
                .build(),
        )
    };
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("tessera"))
            .with_error_records_to_exceptions(true)
            .with_filter(EnvFilter::new(TRACE_FILTER))
    });

    tracing_subscriber::registry().with(fmt_layer.with_filter(filter)).with(otel_layer).try_init()?;
    Ok(TelemetryGuard { provider })
}

/// The per-request root span: request id, method, route template and status.
pub struct TesseraRootSpan;

impl RootSpanBuilder for TesseraRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let extensions = request.extensions();
        let request_id = extensions.get::<RequestId>().map(RequestId::as_str).unwrap_or("");
        let span = tracing::info_span!(
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
        );
        if request.headers().contains_key("traceparent") {
            let remote = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
            let peer = request.peer_addr().map(|address| address.ip());
            if request.app_data::<TrustedProxies>().is_some_and(|proxies| proxies.contains_opt(peer)) {
                // Fails only when nothing traces; then there is nothing to attach either.
                let _ = span.set_parent(remote);
            } else {
                let context = remote.span().span_context().clone();
                if context.is_valid() {
                    span.add_link(context);
                }
            }
        }
        span
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

/// The request's headers as the W3C propagator reads them.
struct HeaderExtractor<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}
