//! Per-model inference metrics, registered in the process's Prometheus registry: requests by
//! outcome and cache result, end-to-end latency, queue depth, batch sizes and engine time.
//! Labels are the tenant id and the name of a model that resolved (anything else is
//! `unknown`): bounded by what tenants register, never by what callers send.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use uuid::Uuid;

use super::cache::CacheStatus;
use crate::tenancy::TenantId;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub tenant: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    tenant: String,
    model: String,
    outcome: &'static str,
    cache: &'static str,
}

const SECONDS: [f64; 14] = [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 10.0];
const ROWS: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

fn seconds() -> Histogram {
    Histogram::new(SECONDS)
}

fn rows() -> Histogram {
    Histogram::new(ROWS)
}

pub struct InferenceMetrics {
    calls: Family<CallLabels, Counter>,
    latency: Family<ModelLabels, Histogram, fn() -> Histogram>,
    queue: Family<ModelLabels, Gauge>,
    batch: Family<ModelLabels, Histogram, fn() -> Histogram>,
    run: Family<ModelLabels, Histogram, fn() -> Histogram>,
    /// Each model's series, found by tenant and name without building labels: a call records
    /// its metrics without formatting the tenant id, allocating or hashing label strings.
    models: RwLock<HashMap<Uuid, HashMap<String, Arc<ModelSeries>>>>,
}

/// One model's per-call series. Counters by outcome and cache result appear when first used.
struct ModelSeries {
    labels: ModelLabels,
    latency: Histogram,
    /// By outcome (success, error) and cache result (in `CacheStatus` order).
    calls: [[OnceLock<Counter>; 3]; 2],
}

/// What a model's workers record, without reaching for the registry per run.
#[derive(Clone)]
pub struct WorkerMetrics {
    pub batch_rows: Histogram,
    pub run_seconds: Histogram,
    /// Set by the pool as it queues a job.
    pub queue_depth: Gauge,
}

impl InferenceMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            calls: Family::default(),
            latency: Family::new_with_constructor(seconds),
            queue: Family::default(),
            batch: Family::new_with_constructor(rows),
            run: Family::new_with_constructor(seconds),
            models: RwLock::default(),
        };
        registry.register("inference_requests", "Inference requests by model, outcome and cache result", metrics.calls.clone());
        registry.register("inference_request_duration_seconds", "End-to-end inference latency by model", metrics.latency.clone());
        registry.register("inference_queue_depth", "Jobs waiting for a worker, by model", metrics.queue.clone());
        registry.register("inference_batch_rows", "Rows per engine run (dynamic batching), by model", metrics.batch.clone());
        registry.register("inference_run_duration_seconds", "Engine run time per batch, by model", metrics.run.clone());
        metrics
    }

    fn labels(tenant: TenantId, model: &str) -> ModelLabels {
        ModelLabels { tenant: tenant.to_string(), model: model.to_owned() }
    }

    fn series(&self, tenant: TenantId, model: &str) -> Arc<ModelSeries> {
        if let Some(series) = self.models.read().get(&tenant.0).and_then(|m| m.get(model)) {
            return series.clone();
        }
        let labels = Self::labels(tenant, model);
        let series = Arc::new(ModelSeries {
            latency: self.latency.get_or_create(&labels).clone(),
            calls: Default::default(),
            labels,
        });
        self.models.write().entry(tenant.0).or_default().entry(model.to_owned()).or_insert(series).clone()
    }

    pub fn observe(&self, tenant: TenantId, model: &str, ok: bool, cache: CacheStatus, elapsed: Duration) {
        let series = self.series(tenant, model);
        series.latency.observe(elapsed.as_secs_f64());
        let outcome = if ok { "success" } else { "error" };
        series.calls[usize::from(!ok)][cache as usize]
            .get_or_init(|| {
                let ModelLabels { tenant, model } = series.labels.clone();
                self.calls.get_or_create(&CallLabels { tenant, model, outcome, cache: cache.as_str() }).clone()
            })
            .inc();
    }

    pub fn worker(&self, tenant: TenantId, model: &str) -> WorkerMetrics {
        let labels = Self::labels(tenant, model);
        WorkerMetrics {
            batch_rows: self.batch.get_or_create(&labels).clone(),
            run_seconds: self.run.get_or_create(&labels).clone(),
            queue_depth: self.queue.get_or_create(&labels).clone(),
        }
    }
}
