//! Usage for dashboards and billing: per tenant, model version and hour, the calls, rows,
//! errors by code, cache hits, latency percentiles and bytes of inference. The request path
//! records into memory (`recorder`, with the latency `histogram`).

pub mod histogram;
pub mod recorder;

pub use recorder::{CallUsage, UsageRecorder};
