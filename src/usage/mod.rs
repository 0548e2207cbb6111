//! Usage for dashboards and billing: per tenant, model version and hour, the calls, rows,
//! errors by code, cache hits, latency percentiles and bytes of inference. The request path
//! records into memory (`recorder`, with the latency `histogram`); a flusher adds the deltas
//! to Postgres every `usage.flush_interval_seconds` (`service`); readers get hours or UTC
//! days (`model`, `routes`).

pub mod error;
pub mod histogram;
pub mod model;
pub mod recorder;
pub mod routes;
pub mod service;

pub use error::UsageError;
pub use recorder::{CallUsage, UsageRecorder};
pub use service::UsageService;
