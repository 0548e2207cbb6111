//! High-volume events that accompany no database change (inference calls) go through this
//! sink: the request hands its event over and moves on; a background writer appends them in
//! batches, one transaction per tenant per batch, so the per-request cost is a channel send.
//!
//! Nothing is dropped: the queue is bounded and a full queue makes requests wait (back-
//! pressure), and a failed batch is retried until the database takes it. Per tenant, calls are
//! recorded one by one (`every_call`, the default), as a sample, or as aggregated counts; the
//! event states which.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{AuditEvent, Auditor, RequestInfo};

const QUEUE: usize = 65_536;
const MAX_BATCH: usize = 2_000;
const LINGER: Duration = Duration::from_millis(5);
const SETTINGS_TTL: Duration = Duration::from_secs(5);
const AGGREGATION_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CallMode {
    EveryCall,
    Sampled(f64),
    Aggregated,
}

enum Message {
    Event(Box<(AuditEvent, RequestInfo)>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct AuditSink {
    sender: mpsc::Sender<Message>,
    modes: Arc<RwLock<HashMap<Uuid, (CallMode, Instant)>>>,
    pool: PgPool,
}

impl AuditSink {
    /// Starts the background writer on the current runtime.
    pub fn start(pool: PgPool, auditor: Auditor) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(writer(pool.clone(), auditor, receiver));
        Self { sender, modes: Default::default(), pool }
    }

    /// How this tenant wants its calls recorded (cached for a few seconds).
    pub async fn mode(&self, tenant: Uuid) -> CallMode {
        if let Some((mode, at)) = self.modes.read().get(&tenant) {
            if at.elapsed() < SETTINGS_TTL {
                return *mode;
            }
        }
        let row: Option<(String, f64)> =
            sqlx::query_as("SELECT inference_mode, inference_sample_rate FROM audit_settings WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await
                .unwrap_or(None);
        let mode = match row {
            Some((mode, rate)) if mode == "sampled" => CallMode::Sampled(rate),
            Some((mode, _)) if mode == "aggregated" => CallMode::Aggregated,
            _ => CallMode::EveryCall,
        };
        self.modes.write().insert(tenant, (mode, Instant::now()));
        mode
    }

    /// Records one call event according to the tenant's mode; waits only when the queue is full.
    pub async fn call(&self, mut event: AuditEvent, info: RequestInfo) {
        let tenant = event.tenant.map(|t| t.0).unwrap_or(super::PLATFORM);
        let mode = self.mode(tenant).await;
        match mode {
            CallMode::EveryCall => {}
            CallMode::Sampled(rate) => {
                if rand::random::<f64>() >= rate {
                    return;
                }
                if let Some(details) = event.details.as_object_mut() {
                    details.insert("audit_mode".into(), "sampled".into());
                    details.insert("sample_rate".into(), rate.into());
                }
            }
            CallMode::Aggregated => {
                if let Some(details) = event.details.as_object_mut() {
                    details.insert("audit_mode".into(), "aggregated".into());
                }
            }
        }
        let _ = self.sender.send(Message::Event(Box::new((event, info)))).await;
    }

    /// Waits until every event submitted before this call is in the database.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Aggregated calls: one event per (tenant, action, resource, outcome) per window, with a count.
#[derive(Default)]
struct Aggregates {
    counts: HashMap<(Uuid, &'static str, Option<String>, &'static str), (AuditEvent, u64)>,
    since: Option<Instant>,
}

impl Aggregates {
    fn add(&mut self, event: AuditEvent) {
        let key = (event.tenant.map(|t| t.0).unwrap_or(super::PLATFORM), event.action, event.resource_id.clone(), event.outcome.as_str());
        self.since.get_or_insert_with(Instant::now);
        self.counts.entry(key).or_insert_with(|| (event, 0)).1 += 1;
    }

    fn due(&self) -> bool {
        self.since.is_some_and(|s| s.elapsed() >= AGGREGATION_WINDOW)
    }

    fn drain(&mut self) -> Vec<(AuditEvent, RequestInfo)> {
        self.since = None;
        self.counts
            .drain()
            .map(|(_, (mut event, count))| {
                if let Some(details) = event.details.as_object_mut() {
                    details.insert("calls".into(), count.into());
                    details.insert("window_seconds".into(), AGGREGATION_WINDOW.as_secs().into());
                }
                (event, RequestInfo::default())
            })
            .collect()
    }
}

async fn writer(pool: PgPool, auditor: Auditor, mut receiver: mpsc::Receiver<Message>) {
    let mut aggregates = Aggregates::default();
    loop {
        let Some(first) = receiver.recv().await else { break };
        let mut batch: Vec<(AuditEvent, RequestInfo)> = Vec::new();
        let mut flushes = Vec::new();
        let mut take = |message: Message, batch: &mut Vec<(AuditEvent, RequestInfo)>, aggregates: &mut Aggregates| match message {
            Message::Event(boxed) => {
                let (event, info) = *boxed;
                let aggregated = event.details.get("audit_mode").and_then(|m| m.as_str()) == Some("aggregated");
                if aggregated { aggregates.add(event) } else { batch.push((event, info)) }
            }
            Message::Flush(done) => flushes.push(done),
        };
        take(first, &mut batch, &mut aggregates);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(message)) => take(message, &mut batch, &mut aggregates),
                _ => break,
            }
        }
        if aggregates.due() || !flushes.is_empty() {
            batch.extend(aggregates.drain());
        }
        write_with_retry(&pool, &auditor, batch).await;
        for done in flushes {
            let _ = done.send(());
        }
    }
    write_with_retry(&pool, &auditor, aggregates.drain()).await;
}

/// One transaction per tenant; retried with backoff until it lands.
async fn write_with_retry(pool: &PgPool, auditor: &Auditor, batch: Vec<(AuditEvent, RequestInfo)>) {
    let mut by_tenant: HashMap<Uuid, Vec<(AuditEvent, RequestInfo)>> = HashMap::new();
    for (event, info) in batch {
        by_tenant.entry(event.tenant.map(|t| t.0).unwrap_or(super::PLATFORM)).or_default().push((event, info));
    }
    for (_, events) in by_tenant {
        let mut delay = Duration::from_millis(50);
        loop {
            match write(pool, auditor, &events).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::error!(error = ?error, events = events.len(), "audit batch not written; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

async fn write(pool: &PgPool, auditor: &Auditor, events: &[(AuditEvent, RequestInfo)]) -> Result<(), crate::error::ApiError> {
    let mut tx = pool.begin().await?;
    auditor.record_each(&mut tx, events.to_vec()).await?;
    tx.commit().await?;
    Ok(())
}
