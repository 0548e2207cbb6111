//! Usage in Postgres: the flusher that adds what the request path counted to the hourly
//! table, and the reads (pages of buckets, the tenant's quotas).
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

use futures::Stream;
use sqlx::PgPool;
use time::OffsetDateTime;

use super::error::UsageError;
use super::histogram::quantile_ms;
use super::model::{Cursor, Quota, QuotaUse, UsageBucket, UsageQuery};
use super::recorder::{Cell, Counts, Hour, UsageRecorder};
use crate::registry::RegistryService;
use crate::tenancy::db::TenantTx;
use crate::tenancy::{TenantId, TenantInfo};

#[derive(Clone)]
pub struct UsageService {
    pool: PgPool,
    recorder: UsageRecorder,
    registry: RegistryService,
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

/// Buckets of a window, hours summed into days when asked: one query for both, grouped by
/// the bucket's start. The cursor bounds the scan (`hour >= start`) and then the order.
const PAGE: &str = "\
SELECT * FROM ( \
    SELECT date_trunc($2, hour, 'UTC') AS start, model, version, sum(calls)::bigint AS calls, \
           sum(input_rows)::bigint AS input_rows, sum(cache_hits)::bigint AS cache_hits, sum(bytes_in)::bigint AS bytes_in, \
           sum(bytes_out)::bigint AS bytes_out, usage_sum_counts(errors) AS errors, \
           usage_sum_buckets(latency_buckets) AS latency_buckets \
    FROM usage_hourly \
    WHERE tenant_id = $1 AND hour >= greatest($3, $7) AND hour < $4 \
      AND ($5::text IS NULL OR model = $5) AND ($6::integer IS NULL OR version = $6) \
    GROUP BY 1, 2, 3) AS b \
WHERE $7::timestamptz IS NULL OR (b.start, b.model, b.version) > ($7, $8::text, $9::integer) \
ORDER BY 1, 2, 3 LIMIT $10";

type PageRow = (OffsetDateTime, String, i32, i64, i64, i64, i64, i64, serde_json::Value, Vec<i64>);

fn bucket(row: PageRow) -> UsageBucket {
    let (start, model, version, calls, rows, cache_hits, bytes_in, bytes_out, errors, latency) = row;
    let errors = match errors {
        serde_json::Value::Object(map) => map.into_iter().map(|(k, v)| (k, v.as_i64().unwrap_or(0))).collect(),
        _ => BTreeMap::new(),
    };
    UsageBucket {
        start,
        model,
        version,
        calls,
        rows,
        errors,
        cache_hits,
        p50_ms: quantile_ms(&latency, 0.5),
        p99_ms: quantile_ms(&latency, 0.99),
        bytes_in,
        bytes_out,
    }
}

impl UsageService {
    pub fn new(pool: PgPool, recorder: UsageRecorder, registry: RegistryService) -> Self {
        Self { pool, recorder, registry, flushing: Arc::default() }
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

    /// One page of buckets, ordered by (start, model, version), after `cursor`.
    pub async fn page(&self, tenant: TenantId, query: &UsageQuery, cursor: Option<&Cursor>, limit: i64) -> Result<Vec<UsageBucket>, UsageError> {
        let mut tx = TenantTx::begin_snapshot(&self.pool, tenant).await?;
        let rows: Vec<PageRow> = sqlx::query_as(PAGE)
            .bind(tenant.0)
            .bind(query.granularity.as_str())
            .bind(query.from)
            .bind(query.to)
            .bind(query.model.as_deref())
            .bind(query.version)
            .bind(cursor.map(|c| c.start))
            .bind(cursor.map(|c| c.model.as_str()))
            .bind(cursor.map(|c| c.version))
            .bind(limit)
            .fetch_all(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(bucket).collect())
    }

    /// Every bucket of the window, a page at a time: memory stays bounded however long the
    /// export.
    pub fn stream(&self, tenant: TenantId, query: UsageQuery) -> impl Stream<Item = Result<Vec<UsageBucket>, UsageError>> + use<> {
        const PAGE_SIZE: i64 = 1000;
        let service = self.clone();
        futures::stream::try_unfold(Some(None::<Cursor>), move |state| {
            let (service, query) = (service.clone(), query.clone());
            async move {
                let Some(cursor) = state else { return Ok::<_, UsageError>(None) };
                let page = service.page(tenant, &query, cursor.as_ref(), PAGE_SIZE).await?;
                let next = (page.len() as i64 == PAGE_SIZE).then(|| page.last().map(Cursor::after)).flatten();
                Ok(if page.is_empty() { None } else { Some((page, next.map(Some))) })
            }
        })
    }

    /// The tenant's quotas and what is used of them now.
    pub async fn quota(&self, tenant: &TenantInfo) -> Result<Quota, UsageError> {
        let used = self.registry.quota_use(tenant.id).await?;
        Ok(Quota {
            models: QuotaUse { used: used.models, limit: used.max_models },
            storage_bytes: QuotaUse { used: used.storage_bytes, limit: used.max_storage_bytes },
            rate_limit_per_second: tenant.rate_limit_per_second as i32,
            rate_limit_burst: tenant.rate_limit_burst as i32,
        })
    }
}
