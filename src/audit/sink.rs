//! High-volume events that accompany no database change (inference calls) go through this
//! sink: the request hands its event over and moves on; a background writer appends them in
//! batches. Every call is recorded, but calls of one tenant, action and actor that arrive within
//! a few milliseconds share one chained record, whose `details.calls` lists each call (time,
//! resource, outcome, client, request id, details; what all of them share is stated once in
//! `details.common`). A Postgres row per call would cost more than
//! the call itself; a row per batch keeps auditing every call affordable.
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
/// The fields of a call. In a shared record, those every call has in common are stored once in
/// `details.common`; the others are arrays in this order, named once in `details.call_fields`:
/// fewer bytes than objects, and nothing to sort when canonicalising.
pub const CALL_FIELDS: [&str; 8] =
    ["at", "resource_type", "resource_id", "outcome", "client_addr", "user_agent", "request_id", "details"];
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
    Event(Box<(AuditEvent, RequestInfo)>, String),
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
        let at = super::chain::format_time(super::chain::now_micros());
        let _ = self.sender.send(Message::Event(Box::new((event, info)), at)).await;
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
        let mut batch: Vec<Call> = Vec::new();
        let mut flushes = Vec::new();
        let mut take = |message: Message, batch: &mut Vec<Call>, aggregates: &mut Aggregates| match message {
            Message::Event(boxed, at) => {
                let (event, info) = *boxed;
                let aggregated = event.details.get("audit_mode").and_then(|m| m.as_str()) == Some("aggregated");
                if aggregated { aggregates.add(event) } else { batch.push(Call { event, info, at, summary: false }) }
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
            batch.extend(aggregates.drain().into_iter().map(|(event, info)| Call { event, info, at: String::new(), summary: true }));
        }
        write_with_retry(&pool, &auditor, batch).await;
        for done in flushes {
            let _ = done.send(());
        }
    }
    let rest = aggregates.drain().into_iter().map(|(event, info)| Call { event, info, at: String::new(), summary: true }).collect();
    write_with_retry(&pool, &auditor, rest).await;
}

/// Splits a record's calls into the fields every call shares (`common`, named once) and the
/// fields that vary (`call_fields`, one array per call in that order). A burst of calls from
/// one client to one model repeats its address, user agent, model and outcome: stored once,
/// they no longer cost JSON, hashing and Postgres storage per call.
fn compact(
    entries: Vec<[serde_json::Value; CALL_FIELDS.len()]>,
) -> (serde_json::Map<String, serde_json::Value>, Vec<&'static str>, Vec<serde_json::Value>) {
    let shared: Vec<bool> = (0..CALL_FIELDS.len())
        .map(|f| CALL_FIELDS[f] != "at" && entries.iter().all(|e| e[f] == entries[0][f]))
        .collect();
    let mut common = serde_json::Map::new();
    if let Some(first) = entries.first() {
        for (f, name) in CALL_FIELDS.iter().enumerate() {
            if shared[f] {
                common.insert((*name).to_owned(), first[f].clone());
            }
        }
    }
    let call_fields: Vec<&'static str> = CALL_FIELDS.iter().zip(&shared).filter(|(_, s)| !**s).map(|(n, _)| *n).collect();
    let calls = entries
        .into_iter()
        .map(|entry| serde_json::Value::Array(entry.into_iter().zip(&shared).filter(|(_, s)| !**s).map(|(v, _)| v).collect()))
        .collect();
    (common, call_fields, calls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shared_fields_are_stated_once_and_expand_back() {
        let entry = |at: &str, rows: u64| -> [serde_json::Value; CALL_FIELDS.len()] {
            [at.into(), "model".into(), "m".into(), "success".into(), "10.0.0.1".into(), serde_json::Value::Null, at.into(), json!({ "rows": rows })]
        };
        let (common, fields, calls) = compact(vec![entry("t1", 1), entry("t2", 2)]);
        assert_eq!(fields, ["at", "request_id", "details"]);
        assert_eq!(common["client_addr"], "10.0.0.1");
        let details = json!({ "call_fields": fields, "common": common, "calls": calls });
        let expanded = expand_calls(&details);
        assert_eq!(expanded.len(), 2);
        assert_eq!(expanded[1]["details"]["rows"], 2);
        assert_eq!(expanded[1]["resource_id"], "m");
        assert_eq!(expanded[0].len(), CALL_FIELDS.len());
    }
}

/// The calls of a shared record as whole objects (field name → value), `common` fields
/// included: how a reader of an export sees each call.
pub fn expand_calls(details: &serde_json::Value) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let fields: Vec<&str> = details["call_fields"].as_array().map(|f| f.iter().filter_map(|n| n.as_str()).collect()).unwrap_or_default();
    let common = details["common"].as_object().cloned().unwrap_or_default();
    let Some(calls) = details["calls"].as_array() else { return Vec::new() };
    calls
        .iter()
        .map(|call| {
            let mut full = common.clone();
            if let Some(values) = call.as_array() {
                for (name, value) in fields.iter().zip(values) {
                    full.insert((*name).to_owned(), value.clone());
                }
            }
            full
        })
        .collect()
}

/// One submitted call (or, `summary`, one aggregated count that is written as it is).
#[derive(Clone)]
struct Call {
    event: AuditEvent,
    info: RequestInfo,
    at: String,
    summary: bool,
}

/// One transaction per tenant; retried with backoff until it lands.
async fn write_with_retry(pool: &PgPool, auditor: &Auditor, batch: Vec<Call>) {
    let mut by_tenant: HashMap<Uuid, Vec<Call>> = HashMap::new();
    for call in batch {
        by_tenant.entry(call.event.tenant.map(|t| t.0).unwrap_or(super::PLATFORM)).or_default().push(call);
    }
    for (tenant, calls) in by_tenant {
        let mut delay = Duration::from_millis(50);
        loop {
            match write(pool, auditor, tenant, &calls).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::error!(error = ?error, calls = calls.len(), "audit batch not written; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

async fn write(pool: &PgPool, auditor: &Auditor, tenant: Uuid, calls: &[Call]) -> Result<(), crate::error::ApiError> {
    let mut tx = pool.begin().await?;
    let policy = auditor.mask_policy(&mut tx, tenant).await?;
    let mut records: Vec<(AuditEvent, RequestInfo)> = Vec::new();
    // Group calls by (action, actor, outcome), keeping arrival order within each group.
    let mut groups: Vec<((&'static str, &'static str, Option<&str>, &'static str, &str), Vec<&Call>)> = Vec::new();
    for call in calls {
        if call.summary {
            records.push((call.event.clone(), call.info.clone()));
            continue;
        }
        // The mode is part of the key: a record states one mode for all its calls.
        let mode = call.event.details.get("audit_mode").and_then(|m| m.as_str()).unwrap_or("");
        let key = (call.event.action, call.event.actor.kind, call.event.actor.id.as_deref(), call.event.outcome.as_str(), mode);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(call),
            None => groups.push((key, vec![call])),
        }
    }
    for (_, group) in groups {
        let first = &group[0].event;
        let mode = first.details.get("audit_mode").cloned().unwrap_or_else(|| "every_call".into());
        let entries: Vec<[serde_json::Value; CALL_FIELDS.len()]> = group
            .iter()
            .map(|c| {
                let mut details = c.event.details.clone();
                if let Some(d) = details.as_object_mut() {
                    d.remove("audit_mode");
                    d.remove("sample_rate");
                }
                [
                    c.at.as_str().into(),
                    c.event.resource_type.into(),
                    c.event.resource_id.as_deref().into(),
                    c.event.outcome.as_str().into(),
                    c.info.client_addr.as_deref().map(|a| if policy.client_addr { super::redact::mask_addr(a) } else { a.to_owned() }).into(),
                    c.info.user_agent.as_deref().into(),
                    c.info.request_id.as_deref().into(),
                    details,
                ]
            })
            .collect();
        let (common, call_fields, calls) = compact(entries);
        let mut details = serde_json::json!({
            "audit_mode": mode, "count": calls.len(), "call_fields": call_fields, "common": common, "calls": calls,
        });
        if let Some(rate) = first.details.get("sample_rate") {
            details["sample_rate"] = rate.clone();
        }
        let same_resource = group.iter().all(|c| c.event.resource_id == first.resource_id);
        let mut record = AuditEvent::new(first.tenant, first.actor.clone(), first.action).details(details);
        if same_resource {
            record.resource_type = first.resource_type;
            record.resource_id = first.resource_id.clone();
        }
        record.outcome = first.outcome;
        records.push((record, RequestInfo::default()));
    }
    auditor.record_each(&mut tx, records).await?;
    tx.commit().await?;
    Ok(())
}
