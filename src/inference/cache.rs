//! Redis result cache for deterministic models. The key is the tenant's artifact id (one per
//! tenant, model and version: a new version or a moved alias resolves to a different one) and
//! a SHA-256 over the canonical inputs, parameters and requested outputs. Identical concurrent
//! misses run once (single flight). Redis being slow or down never fails a request: lookups
//! give up after a few milliseconds, and after a failure the cache is skipped for a while and
//! then tried again by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::engine::RunOutput;
use super::protocol::{DataType, TensorData};
use crate::redis_store::RedisStore;
use tracing::Instrument;

const BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// A flight's outcome as its followers see it: the outputs and whether they came from Redis.
pub type Shared = Arc<(Vec<RunOutput>, CacheStatus)>;

pub struct ResultCache {
    redis: RedisStore,
    timeout: Duration,
    /// Larger results are not stored.
    max_entry_bytes: usize,
    epoch: Instant,
    /// Milliseconds since `epoch` before which Redis is not asked (after a failure).
    skip_until: AtomicU64,
    inflight: Arc<Mutex<HashMap<[u8; 32], broadcast::Sender<Shared>>>>,
}

/// Whoever asks first for a key looks in Redis and, on a miss, runs the model; the others
/// wait for its result.
pub enum Flight {
    Leader(FlightGuard),
    Follower(broadcast::Receiver<Shared>),
}

pub struct FlightGuard {
    key: [u8; 32],
    sender: broadcast::Sender<Shared>,
    inflight: Arc<Mutex<HashMap<[u8; 32], broadcast::Sender<Shared>>>>,
}

impl FlightGuard {
    /// Ends the flight, then hands the leader's result to the followers. Removing first means
    /// no request can join a flight whose result has already gone out.
    pub fn land(self, outputs: &[RunOutput], status: CacheStatus) {
        self.end();
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(Arc::new((outputs.to_vec(), status)));
        }
    }

    fn end(&self) {
        let mut inflight = self.inflight.lock();
        if inflight.get(&self.key).is_some_and(|s| s.same_channel(&self.sender)) {
            inflight.remove(&self.key);
        }
    }
}

/// A leader that fails or is cancelled ends its flight unlanded: its followers see the channel
/// close and run the model themselves.
impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.end();
    }
}

impl ResultCache {
    pub fn new(redis: RedisStore, timeout: Duration, max_entry_bytes: usize) -> Self {
        Self { redis, timeout, max_entry_bytes, epoch: Instant::now(), skip_until: AtomicU64::new(0), inflight: Default::default() }
    }

    pub fn key(artifact: Uuid, inputs: &[(Vec<usize>, TensorData)], outputs: &[(usize, bool)], parameters: &serde_json::Map<String, serde_json::Value>) -> [u8; 32] {
        let mut canonical = Vec::with_capacity(256);
        canonical.extend_from_slice(artifact.as_bytes());
        for (shape, data) in inputs {
            canonical.push(data.datatype() as u8);
            canonical.extend_from_slice(&(shape.len() as u32).to_le_bytes());
            for d in shape {
                canonical.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            data.write_canonical(&mut canonical);
        }
        for (index, _) in outputs {
            canonical.extend_from_slice(&(*index as u32).to_le_bytes());
        }
        canonical.extend_from_slice(serde_json::to_string(parameters).unwrap_or_default().as_bytes());
        Sha256::digest(&canonical).into()
    }

    fn redis_key(&self, tenant: Uuid, key: &[u8; 32]) -> String {
        self.redis.key(&["infer", &tenant.to_string(), &hex::encode(key)])
    }

    fn available(&self) -> bool {
        self.epoch.elapsed().as_millis() as u64 >= self.skip_until.load(Ordering::Relaxed)
    }

    fn failed(&self, error: &str) {
        tracing::warn!(error, "result cache unavailable; serving without it for a while");
        self.skip_until.store((self.epoch.elapsed() + BACKOFF).as_millis() as u64, Ordering::Relaxed);
    }

    pub async fn get(&self, tenant: Uuid, key: &[u8; 32]) -> Option<Vec<RunOutput>> {
        if !self.available() {
            return None;
        }
        let mut conn = self.redis.connection();
        let redis_key = self.redis_key(tenant, key);
        let lookup = conn.get::<_, Option<Vec<u8>>>(&redis_key).instrument(redis_span("GET"));
        match tokio::time::timeout(self.timeout, lookup).await {
            Ok(Ok(Some(bytes))) => decode(&bytes),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                None
            }
            Err(_) => {
                self.failed("lookup timed out");
                None
            }
        }
    }

    /// Stores before the flight lands, so that a request arriving just after it finds the
    /// value in Redis instead of running the model again. Bounded by the cache timeout. A
    /// result larger than `max_entry_bytes` is not stored (every element takes at least a
    /// byte, so most are known too large before they are encoded).
    pub async fn put(&self, tenant: Uuid, key: &[u8; 32], outputs: &[RunOutput], ttl_seconds: u64) {
        if !self.available() || ttl_seconds == 0 || outputs.iter().map(|o| o.data.len()).sum::<usize>() > self.max_entry_bytes {
            return;
        }
        let value = encode(outputs);
        if value.len() > self.max_entry_bytes {
            return;
        }
        let redis_key = self.redis_key(tenant, key);
        let mut conn = self.redis.connection();
        let store = conn.set_ex::<_, _, ()>(&redis_key, value, ttl_seconds).instrument(redis_span("SETEX"));
        match tokio::time::timeout(self.timeout * 4, store).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed("store timed out"),
        }
    }

    pub fn join(&self, key: [u8; 32]) -> Flight {
        let mut inflight = self.inflight.lock();
        if let Some(sender) = inflight.get(&key) {
            return Flight::Follower(sender.subscribe());
        }
        let (sender, _) = broadcast::channel(1);
        inflight.insert(key, sender.clone());
        Flight::Leader(FlightGuard { key, sender, inflight: self.inflight.clone() })
    }
}

fn redis_span(operation: &'static str) -> tracing::Span {
    tracing::debug_span!(target: crate::telemetry::CLIENT_SPANS, "redis", otel.kind = "client", db.system = "redis", db.operation = operation)
}

fn encode(outputs: &[RunOutput]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + outputs.iter().map(|o| o.data.len() * 4).sum::<usize>());
    out.extend_from_slice(&(outputs.len() as u32).to_le_bytes());
    for o in outputs {
        out.push(o.data.datatype() as u8);
        out.extend_from_slice(&(o.shape.len() as u32).to_le_bytes());
        for d in &o.shape {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        let mut data = Vec::new();
        o.data.write_canonical(&mut data);
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(&data);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}


/// Anything unreadable is treated as a miss.
fn decode(bytes: &[u8]) -> Option<Vec<RunOutput>> {
    let mut r = Reader(bytes);
    let count = r.u32()? as usize;
    let mut outputs = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let tag = r.take(1)?[0];
        let datatype = *DataType::ALL.iter().find(|d| **d as u8 == tag)?;
        let rank = r.u32()? as usize;
        let shape = (0..rank).map(|_| r.u64().map(|d| d as usize)).collect::<Option<Vec<_>>>()?;
        let len = r.u64()? as usize;
        let count = shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d))?;
        let data = TensorData::from_canonical(datatype, r.take(len)?, count)?;
        outputs.push(RunOutput { shape, data });
    }
    r.0.is_empty().then_some(outputs)
}
