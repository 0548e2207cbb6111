//! Usage in Postgres: the flusher that adds what the request path counted to the hourly
//! table.
//!
//! A flush takes every cell out of the recorder, merges cells that name the same row, and
//! for each tenant adds them in one statement inside that tenant's transaction (row-level
//! security holds for the flusher as for everyone). A tenant whose rows could not be written
//! gets its cells back, to be added at the next flush: nothing is counted twice (a
//! transaction commits all of a tenant's rows or none) and nothing is lost while the
//! database is away, as long as the process lives.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use super::error::UsageError;
use super::recorder::{Cell, Counts, Hour, UsageRecorder};
use crate::tenancy::TenantId;
use crate::tenancy::db::TenantTx;

#[derive(Clone)]
pub struct UsageService {
    pool: PgPool,
    recorder: UsageRecorder,
    /// One flush at a time per process: a flush asked for while another writes waits for it,
    /// so that when `flush` returns, everything recorded before the call is in Postgres.
    flushing: Arc<tokio::sync::Mutex<()>>,
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    pub rows: usize,
    /// Calls the recorder could not hold since the last flush (its cap was reached).
    pub dropped: u64,
}

/// One row's worth of deltas, ready to add.
struct Delta {
    hour: Hour,
    model: Arc<str>,
    version: i32,
    counts: Counts,
}

const UPSERT: &str = "\
INSERT INTO usage_hourly AS u (tenant_id, hour, model, version, calls, input_rows, cache_hits, bytes_in, bytes_out, \
                               errors, latency_buckets) \
SELECT $1, to_timestamp(r.hour * 3600), r.model, r.version, r.calls, r.input_rows, r.cache_hits, r.bytes_in, r.bytes_out, \
       r.errors, r.latency::bigint[] \
FROM jsonb_to_recordset($2) AS r (hour bigint, model text, version integer, calls bigint, input_rows bigint, cache_hits bigint, \
                                  bytes_in bigint, bytes_out bigint, errors jsonb, latency text) \
ORDER BY r.hour, r.model, r.version \
ON CONFLICT (tenant_id, hour, model, version) DO UPDATE SET \
    calls = u.calls + EXCLUDED.calls, \
    input_rows = u.input_rows + EXCLUDED.input_rows, \
    cache_hits = u.cache_hits + EXCLUDED.cache_hits, \
    bytes_in = u.bytes_in + EXCLUDED.bytes_in, \
    bytes_out = u.bytes_out + EXCLUDED.bytes_out, \
    errors = usage_add_counts(u.errors, EXCLUDED.errors), \
    latency_buckets = usage_add_buckets(u.latency_buckets, EXCLUDED.latency_buckets), \
    updated_at = now()";

impl UsageService {
    pub fn new(pool: PgPool, recorder: UsageRecorder) -> Self {
        Self { pool, recorder, flushing: Arc::default() }
    }

    /// What the inference path records into.
    pub fn recorder(&self) -> &UsageRecorder {
        &self.recorder
    }

    /// Adds everything recorded so far to Postgres. Tenants whose rows failed keep their
    /// cells for the next flush; the first failure is returned.
    pub async fn flush(&self) -> Result<Flushed, UsageError> {
        let _one_at_a_time = self.flushing.lock().await;
        let (cells, dropped) = self.recorder.take();
        if dropped > 0 {
            tracing::warn!(dropped, "usage: calls not counted, the recorder was full");
        }
        // Sorted, so that processes adding to the same rows lock them in the same order.
        let mut by_tenant: BTreeMap<uuid::Uuid, BTreeMap<(Hour, Arc<str>, i32), Counts>> = BTreeMap::new();
        for cell in cells {
            let rows = by_tenant.entry(cell.tenant.0).or_default();
            match rows.entry((cell.hour, cell.model, cell.version)) {
                std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().add(&cell.counts),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(cell.counts);
                }
            }
        }
        let mut flushed = Flushed { rows: 0, dropped };
        let mut first_error = None;
        for (tenant, rows) in by_tenant {
            let tenant = TenantId(tenant);
            let deltas: Vec<Delta> =
                rows.into_iter().map(|((hour, model, version), counts)| Delta { hour, model, version, counts }).collect();
            match self.add(tenant, &deltas).await {
                Ok(()) => flushed.rows += deltas.len(),
                // The tenant is gone (its rows went with it): its usage has nowhere to go.
                Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {}
                Err(e) => {
                    let cells = deltas
                        .into_iter()
                        .map(|d| Cell { tenant, model: d.model, version: d.version, hour: d.hour, counts: d.counts })
                        .collect();
                    self.recorder.restore(cells);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(flushed),
        }
    }

    async fn add(&self, tenant: TenantId, deltas: &[Delta]) -> Result<(), sqlx::Error> {
        let rows: Vec<serde_json::Value> = deltas
            .iter()
            .map(|d| {
                let c = &d.counts;
                let errors: serde_json::Map<String, serde_json::Value> =
                    c.errors.iter().map(|(code, n)| (code.as_str().to_owned(), (*n).into())).collect();
                let latency: Vec<String> = c.latency.trimmed().iter().map(u64::to_string).collect();
                serde_json::json!({
                    "hour": d.hour, "model": &*d.model, "version": d.version, "calls": c.calls, "input_rows": c.rows,
                    "cache_hits": c.cache_hits, "bytes_in": c.bytes_in, "bytes_out": c.bytes_out, "errors": errors,
                    "latency": format!("{{{}}}", latency.join(",")),
                })
            })
            .collect();
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        sqlx::query(UPSERT).bind(tenant.0).bind(serde_json::Value::Array(rows)).execute(tx.conn()).await?;
        tx.commit().await
    }

    /// Flushes every `every` (sooner when the recorder fills up) until `stopping`, then once
    /// more, so that a process that stops cleanly loses nothing it counted.
    pub fn spawn_flusher(&self, every: Duration, mut stopping: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            loop {
                let stop = tokio::select! {
                    _ = tokio::time::sleep(every) => false,
                    _ = service.recorder.full() => false,
                    changed = stopping.changed() => changed.is_err() || *stopping.borrow(),
                };
                if let Err(e) = service.flush().await {
                    tracing::warn!(error = ?e, "usage: flush failed; the counts are kept for the next one");
                }
                if stop {
                    break;
                }
            }
        })
    }
}
