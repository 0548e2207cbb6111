//! What the inference request path records: per (model version, hour), counters and a latency
//! histogram, in memory. A call costs a thread-local shard index, an uncontended lock, a hash
//! lookup and a few additions; it allocates only for the first call of a version in an hour.
//! The flusher (`UsageService::flush`) takes the cells and adds them to Postgres.
//!
//! Only a version that resolved is recorded (the caller hands over what resolution produced),
//! so the cells are bounded by what tenants registered, never by names a caller makes up; the
//! cell count is capped besides, and a full shard asks for an early flush.

use std::cell::Cell as StdCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::Notify;
use uuid::Uuid;

use super::histogram::Histogram;
use crate::error::Code;
use crate::tenancy::TenantId;

const SHARDS: usize = 16;
/// Cells a shard holds between flushes: far beyond the versions one process serves in an
/// hour, and a bound on memory (about 2 KB a cell) whatever happens.
const MAX_CELLS_PER_SHARD: usize = 1024;

/// Hours since the Unix epoch, UTC.
pub type Hour = i64;

pub fn current_hour() -> Hour {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    (secs / 3600) as Hour
}

/// One call, as the request path knows it when it answers.
#[derive(Debug, Clone, Copy)]
pub struct CallUsage {
    /// Rows of the request's batch (successful calls; 0 otherwise).
    pub rows: u64,
    pub cache_hit: bool,
    pub bytes_in: u64,
    /// Bytes of the answer (successful calls; problem documents are not counted).
    pub bytes_out: u64,
    /// How long the call took (`Ok`), or the code it failed with.
    pub outcome: Result<Duration, Code>,
}

/// What one (version, hour) accumulated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub calls: u64,
    pub rows: u64,
    pub cache_hits: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Failed calls by code: a handful of codes at most, so a short list beats a map.
    pub errors: Vec<(Code, u64)>,
    /// Latency of successful calls.
    pub latency: Histogram,
}

impl Counts {
    fn record(&mut self, call: &CallUsage) {
        self.calls += 1;
        self.rows += call.rows;
        self.cache_hits += u64::from(call.cache_hit);
        self.bytes_in += call.bytes_in;
        self.bytes_out += call.bytes_out;
        match call.outcome {
            Ok(latency) => self.latency.observe(latency),
            Err(code) => self.add_error(code, 1),
        }
    }

    fn add_error(&mut self, code: Code, n: u64) {
        match self.errors.iter_mut().find(|(c, _)| *c == code) {
            Some((_, count)) => *count += n,
            None => self.errors.push((code, n)),
        }
    }

    pub fn add(&mut self, other: &Counts) {
        self.calls += other.calls;
        self.rows += other.rows;
        self.cache_hits += other.cache_hits;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        for &(code, n) in &other.errors {
            self.add_error(code, n);
        }
        self.latency.add(&other.latency);
    }
}

/// A (version, hour) and what it accumulated, as the flusher takes it.
#[derive(Clone, Debug)]
pub struct Cell {
    pub tenant: TenantId,
    pub model: Arc<str>,
    pub version: i32,
    pub hour: Hour,
    pub counts: Counts,
}

/// Keyed by artifact (tenant, model and version in one) and hour.
type Shard = HashMap<(Uuid, Hour), Cell>;

struct Aggregator {
    shards: Box<[Mutex<Shard>]>,
    /// Calls not recorded because their shard was full.
    dropped: AtomicU64,
    /// A shard filled up: the flusher should not wait for its interval.
    full: Notify,
}

/// The request path's handle on the aggregator. Cheap to clone.
#[derive(Clone)]
pub struct UsageRecorder {
    inner: Arc<Aggregator>,
}

impl Default for UsageRecorder {
    fn default() -> Self {
        Self::new()
    }
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Each thread keeps to one shard: HTTP workers each run on their own thread, so their
    /// locks are not contended.
    static SHARD: StdCell<usize> = StdCell::new(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
}

impl UsageRecorder {
    pub fn new() -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect();
        Self { inner: Arc::new(Aggregator { shards, dropped: AtomicU64::new(0), full: Notify::new() }) }
    }

    /// Records one call of a resolved version, in the current hour.
    pub fn record(&self, tenant: TenantId, artifact: Uuid, model: &Arc<str>, version: i32, call: CallUsage) {
        self.record_at(current_hour(), tenant, artifact, model, version, call);
    }

    /// Records one call in a given hour (the clock is the caller's: tests fill past hours).
    pub fn record_at(&self, hour: Hour, tenant: TenantId, artifact: Uuid, model: &Arc<str>, version: i32, call: CallUsage) {
        let shard = &self.inner.shards[SHARD.with(StdCell::get)];
        let mut cells = shard.lock();
        if let Some(cell) = cells.get_mut(&(artifact, hour)) {
            cell.counts.record(&call);
            return;
        }
        if cells.len() >= MAX_CELLS_PER_SHARD {
            drop(cells);
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            self.inner.full.notify_one();
            return;
        }
        let mut counts = Counts::default();
        counts.record(&call);
        cells.insert((artifact, hour), Cell { tenant, model: model.clone(), version, hour, counts });
    }

    /// Everything recorded since the last take, and how many calls were dropped meanwhile.
    pub fn take(&self) -> (Vec<Cell>, u64) {
        let mut taken = Vec::new();
        for shard in self.inner.shards.iter() {
            let cells = std::mem::take(&mut *shard.lock());
            taken.extend(cells.into_values());
        }
        (taken, self.inner.dropped.swap(0, Ordering::Relaxed))
    }

    /// Gives back cells a flush could not store, to be added again next time.
    pub fn restore(&self, cells: Vec<Cell>) {
        let mut shard = self.inner.shards[0].lock();
        for cell in cells {
            // Keyed apart from what the request path records (a nil artifact is never
            // served): restored cells are bounded by what was taken, not by the cap.
            let key = (restored_key(&cell), cell.hour);
            match shard.get_mut(&key) {
                Some(existing) => existing.counts.add(&cell.counts),
                None => {
                    shard.insert(key, cell);
                }
            }
        }
    }

    /// Resolves when a shard filled up.
    pub async fn full(&self) {
        self.inner.full.notified().await;
    }
}

/// A key for a restored cell that no served artifact has: derived from what the database
/// keys rows by (tenant, model, version).
fn restored_key(cell: &Cell) -> Uuid {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (cell.tenant, &*cell.model, cell.version).hash(&mut hasher);
    Uuid::from_u64_pair(u64::MAX, hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ms: u64) -> CallUsage {
        CallUsage { rows: 2, cache_hit: false, bytes_in: 10, bytes_out: 20, outcome: Ok(Duration::from_millis(ms)) }
    }

    #[test]
    fn calls_add_up_per_version_and_hour() {
        let recorder = UsageRecorder::new();
        let (tenant, artifact, model) = (TenantId(Uuid::new_v4()), Uuid::new_v4(), Arc::<str>::from("m"));
        recorder.record_at(10, tenant, artifact, &model, 1, ok(1));
        recorder.record_at(10, tenant, artifact, &model, 1, CallUsage { cache_hit: true, ..ok(3) });
        recorder.record_at(10, tenant, artifact, &model, 1, CallUsage { outcome: Err(Code::InvalidInput), rows: 0, bytes_out: 0, ..ok(0) });
        recorder.record_at(11, tenant, artifact, &model, 1, ok(1));
        let (mut cells, dropped) = recorder.take();
        assert_eq!(dropped, 0);
        cells.sort_by_key(|c| c.hour);
        assert_eq!(cells.len(), 2);
        let c = &cells[0].counts;
        assert_eq!((c.calls, c.rows, c.cache_hits, c.bytes_in, c.bytes_out), (3, 4, 1, 30, 40));
        assert_eq!(c.errors, vec![(Code::InvalidInput, 1)]);
        assert_eq!(c.latency.trimmed().iter().sum::<u64>(), 2);
        assert!(recorder.take().0.is_empty(), "a take empties the aggregator");
    }

    #[test]
    fn restored_cells_add_to_what_came_since() {
        let recorder = UsageRecorder::new();
        let (tenant, artifact, model) = (TenantId(Uuid::new_v4()), Uuid::new_v4(), Arc::<str>::from("m"));
        recorder.record_at(5, tenant, artifact, &model, 1, ok(1));
        let (taken, _) = recorder.take();
        recorder.record_at(5, tenant, artifact, &model, 1, ok(1));
        recorder.restore(taken.clone());
        recorder.restore(taken);
        let (cells, _) = recorder.take();
        assert_eq!(cells.iter().map(|c| c.counts.calls).sum::<u64>(), 3);
    }

    #[test]
    fn a_full_shard_drops_new_cells_and_counts_them() {
        let recorder = UsageRecorder::new();
        let (tenant, model) = (TenantId(Uuid::new_v4()), Arc::<str>::from("m"));
        for hour in 0..(MAX_CELLS_PER_SHARD as Hour + 10) {
            recorder.record_at(hour, tenant, Uuid::nil(), &model, 1, ok(1));
        }
        let (cells, dropped) = recorder.take();
        assert_eq!((cells.len(), dropped), (MAX_CELLS_PER_SHARD, 10));
    }
}
