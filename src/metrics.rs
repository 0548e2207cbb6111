//! Prometheus metrics: one registry per process, rendered at `GET /metrics`.
//!
//! Labels are bounded: routes are recorded by their template (`/v1/tenants/{tenant}`), never by
//! the raw path, anything that matched no route is `unmatched`, and a method outside HTTP's
//! own is `other`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// One of a fixed set (`other` for any method HTTP does not define): never what a caller sent.
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// Latency buckets from 50 µs to 10 s: Tessera's fast paths live well under a millisecond.
const LATENCY_BUCKETS: [f64; 16] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The HTTP series of one method, route template and status.
#[derive(Clone)]
pub struct HttpSeries {
    requests: Counter,
    duration: Histogram,
}

impl HttpSeries {
    pub fn observe(&self, seconds: f64) {
        self.requests.inc();
        self.duration.observe(seconds);
    }
}

pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
    dependency_up: Family<DependencyLabels, Gauge>,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Self::with(|_| ()).0
    }

    /// The registry with the HTTP and build series, plus whatever `more` registers: the
    /// capabilities' own metrics, which this module does not know.
    pub fn with<T>(more: impl FnOnce(&mut Registry) -> T) -> (Arc<Self>, T) {
        let mut registry = Registry::with_prefix("tessera");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration = Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register("http_requests", "HTTP requests handled, by route template and status", http_requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by route template and status",
            http_duration.clone(),
        );
        let dependency_up = Family::<DependencyLabels, Gauge>::default();
        registry.register(
            "dependency_up",
            "Whether a dependency answered the last readiness probe (1) or not (0)",
            dependency_up.clone(),
        );
        let more = more(&mut registry);
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info.get_or_create(&BuildLabels { version: crate::VERSION.to_owned() }).set(1);
        registry.register("build_info", "Tessera build information (always 1)", build_info);
        (Arc::new(Self { registry, http_requests, http_duration, dependency_up }), more)
    }

    /// One label set's HTTP series, to keep and record into without finding them again.
    pub fn http_series(&self, labels: &HttpLabels) -> HttpSeries {
        HttpSeries {
            requests: self.http_requests.get_or_create(labels).clone(),
            duration: self.http_duration.get_or_create(labels).clone(),
        }
    }

    pub fn dependency_up(&self, dependency: &'static str, up: bool) {
        self.dependency_up.get_or_create(&DependencyLabels { dependency }).set(i64::from(up));
    }

    /// OpenMetrics text exposition (scraped by Prometheus).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
