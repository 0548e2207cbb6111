//! Logs and traces: a `tracing` subscriber (text or JSON) plus optional OTLP trace export.
//!
//! Export runs on the OpenTelemetry batch processor's own thread with a bounded queue: an
//! unreachable collector costs dropped spans, never a blocked or failed request.

use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Span;
use tracing_actix_web::RootSpanBuilder;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, TelemetrySettings};
use crate::request::RequestId;

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
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("tessera")).with_error_records_to_exceptions(true));

    tracing_subscriber::registry().with(fmt_layer).with(otel_layer).with(filter).try_init()?;
    Ok(TelemetryGuard { provider })
}

/// The per-request root span: request id, method, route template and status.
pub struct TesseraRootSpan;

impl RootSpanBuilder for TesseraRootSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let extensions = request.extensions();
        let request_id = extensions.get::<RequestId>().map(RequestId::as_str).unwrap_or("");
        tracing::info_span!(
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
