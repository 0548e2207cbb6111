//! High-volume events that accompany no database change (inference calls) go through this
//! sink: the request hands its event over and moves on; a background writer appends them in
//! batches. Every call is recorded, but calls of one tenant, action and actor that arrive within
//! the same 50 ms share one chained record, whose `details.calls` lists each call (time,
//! resource, outcome, client, request id, details; what all of them share is stated once in
//! `details.common`). A Postgres row per call would cost more than
//! the call itself; a row per batch keeps auditing every call affordable.
//!
//! Nothing is dropped: the queue is bounded and a full queue makes requests wait (back-
//! pressure), and a failed batch is retried until the database takes it. Per tenant, calls are
//! recorded one by one (`every_call`, the default), as a sample, or as aggregated counts; the
//! event states which.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, oneshot};
use uuid::Uuid;

use super::service::InferenceAuditMode;
use super::redact::{MaskPolicy, mask_ip, write_addr};
use crate::request::RequestInfo;
use super::{AuditActor, AuditEvent, Auditor, Outcome, Record, chain};
use crate::tenancy::TenantId;

const QUEUE: usize = 65_536;
/// The fields of a call. In a shared record, those every call has in common are stored once in
/// `details.common`; the others are arrays in this order, named once in `details.call_fields`:
/// fewer bytes than objects, and nothing to sort when canonicalising.
pub const CALL_FIELDS: [&str; 8] =
    ["at", "resource_type", "resource_id", "outcome", "client_addr", "user_agent", "request_id", "details"];

/// `CALL_FIELDS` as values: the writer picks a call's fields by position, not by name.
#[derive(Clone, Copy, PartialEq)]
enum CallField {
    At,
    ResourceType,
    ResourceId,
    Outcome,
    ClientAddr,
    UserAgent,
    RequestId,
    Details,
}

impl CallField {
    const ALL: [CallField; CALL_FIELDS.len()] = [
        CallField::At,
        CallField::ResourceType,
        CallField::ResourceId,
        CallField::Outcome,
        CallField::ClientAddr,
        CallField::UserAgent,
        CallField::RequestId,
        CallField::Details,
    ];

    fn name(self) -> &'static str {
        CALL_FIELDS[self as usize]
    }
}

const MAX_BATCH: usize = 2_000;
/// How long a batch gathers. Each batch costs a transaction of four statements and a commit
/// whatever its size, so fewer, larger batches leave more of the machine to the calls
/// themselves (BENCHMARKS.md measures what auditing every call costs). Events still reach the
/// database within about a twentieth of a second, and `flush` does not wait for it.
const LINGER: Duration = Duration::from_millis(50);
const SETTINGS_TTL: Duration = Duration::from_secs(5);
const AGGREGATION_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CallMode {
    EveryCall,
    Sampled(f64),
    Aggregated,
}

impl CallMode {
    /// As records state it in `details.audit_mode`: the setting's own spelling.
    fn label(self) -> &'static str {
        match self {
            CallMode::EveryCall => InferenceAuditMode::EveryCall,
            CallMode::Sampled(_) => InferenceAuditMode::Sampled,
            CallMode::Aggregated => InferenceAuditMode::Aggregated,
        }
        .as_str()
    }
}

/// One inference call as the request path hands it over: plain values and header values, no
/// JSON tree and nothing formatted, so that recording a call costs the request next to
/// nothing. The writer renders it as an `inference.call` of the model, with the details
/// `{"cache", "code" (failed calls only), "rows", "version"}`.
#[derive(Debug, Clone)]
pub struct CallEvent {
    pub tenant: TenantId,
    pub actor: AuditActor,
    /// Shared with the model's resolution: the writer drops a reference, not an allocation.
    pub model: Arc<str>,
    /// The version or alias asked for, if any.
    pub version: Option<String>,
    pub outcome: Outcome,
    pub cache: &'static str,
    pub rows: u64,
    /// The error's code, for calls that failed.
    pub code: Option<&'static str>,
    pub info: RequestInfo,
    /// The database refused this call's record as it came, so it is written without the
    /// values its request brought in, its model `NOT_RECORDABLE`, and says so in its details.
    pub not_recordable: bool,
}

impl CallEvent {
    pub const ACTION: &'static str = "inference.call";

    /// The details as canonical JSON (keys in byte order), redacted by the rules of any event.
    fn write_details(&self, policy: MaskPolicy, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"cache\":");
        chain::write_string(self.cache, policy, out);
        if let Some(code) = self.code {
            out.extend_from_slice(b",\"code\":");
            chain::write_string(code, policy, out);
        }
        if self.not_recordable {
            out.extend_from_slice(b",\"not_recordable\":true");
        }
        write!(out, ",\"rows\":{},\"version\":", self.rows).expect("writing to a Vec cannot fail");
        match &self.version {
            Some(version) => chain::write_string(version, policy, out),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b'}');
    }

    /// The same details as a JSON value, for the records that count calls: read back from
    /// `write_details`, so that the two cannot differ.
    fn details(&self) -> serde_json::Value {
        let mut written = Vec::with_capacity(64);
        self.write_details(MaskPolicy::default(), &mut written);
        serde_json::from_slice(&written).expect("call details are JSON")
    }

    fn same_details(&self, other: &CallEvent) -> bool {
        (self.cache, self.code, self.rows, &self.version, self.not_recordable)
            == (other.cache, other.code, other.rows, &other.version, other.not_recordable)
    }
}

enum Message {
    Call(CallEvent, OffsetDateTime, CallMode),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct AuditSink {
    sender: mpsc::Sender<Message>,
    /// Cuts the writer's linger short when someone waits in `flush`.
    flushing: Arc<Notify>,
    modes: Arc<RwLock<HashMap<Uuid, (CallMode, Instant)>>>,
    pool: PgPool,
}

impl AuditSink {
    /// Starts the background writer on the current runtime.
    pub fn start(pool: PgPool, auditor: Auditor) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let flushing = Arc::new(Notify::new());
        tokio::spawn(writer(pool.clone(), auditor, receiver, flushing.clone()));
        Self { sender, flushing, modes: Default::default(), pool }
    }

    /// How this tenant wants its calls recorded (cached for a few seconds). The query is boxed:
    /// every call awaits this, and only one every few seconds needs room for it.
    pub async fn mode(&self, tenant: Uuid) -> CallMode {
        if let Some((mode, at)) = self.modes.read().get(&tenant) {
            if at.elapsed() < SETTINGS_TTL {
                return *mode;
            }
        }
        Box::pin(self.read_mode(tenant)).await
    }

    async fn read_mode(&self, tenant: Uuid) -> CallMode {
        // Unreadable settings (the database down, a row that does not decode) record every
        // call: the mode that loses nothing.
        let row: Option<(InferenceAuditMode, f64)> =
            sqlx::query_as("SELECT inference_mode, inference_sample_rate FROM audit_settings WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await
                .unwrap_or(None);
        let mode = match row {
            Some((InferenceAuditMode::Sampled, rate)) => CallMode::Sampled(rate),
            Some((InferenceAuditMode::Aggregated, _)) => CallMode::Aggregated,
            Some((InferenceAuditMode::EveryCall, _)) | None => CallMode::EveryCall,
        };
        self.modes.write().insert(tenant, (mode, Instant::now()));
        mode
    }

    /// Records one call event according to the tenant's mode; waits only when the queue is full.
    /// The mode travels beside the event; the writer states it once per record.
    pub async fn call(&self, event: CallEvent) {
        let mode = self.mode(event.tenant.0).await;
        if let CallMode::Sampled(rate) = mode {
            if rand::random::<f64>() >= rate {
                return;
            }
        }
        let at = super::chain::now_micros();
        let _ = self.sender.send(Message::Call(event, at, mode)).await;
    }

    /// Waits until every event submitted before this call is in the database.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).await.is_ok() {
            self.flushing.notify_one();
            let _ = wait.await;
        }
    }
}

/// Aggregated calls: one event per (tenant, model, outcome) per window, with a count.
#[derive(Default)]
struct Aggregates {
    counts: HashMap<(Uuid, &'static str), HashMap<String, (CallEvent, u64)>>,
    since: Option<Instant>,
}

impl Aggregates {
    fn add(&mut self, event: CallEvent) {
        self.since.get_or_insert_with(Instant::now);
        let models = self.counts.entry((event.tenant.0, event.outcome.as_str())).or_default();
        match models.get_mut(&*event.model) {
            Some((_, count)) => *count += 1,
            None => {
                models.insert(event.model.to_string(), (event, 1));
            }
        }
    }

    fn due(&self) -> bool {
        self.since.is_some_and(|s| s.elapsed() >= AGGREGATION_WINDOW)
    }

    fn drain(&mut self) -> Vec<AuditEvent> {
        self.since = None;
        self.counts
            .drain()
            .flat_map(|(_, models)| models.into_values())
            .map(|(event, count)| {
                let mut details = event.details();
                details["audit_mode"] = CallMode::Aggregated.label().into();
                details["calls"] = count.into();
                details["window_seconds"] = AGGREGATION_WINDOW.as_secs().into();
                AuditEvent::new(Some(event.tenant), event.actor, CallEvent::ACTION)
                    .resource("model", &event.model)
                    .outcome(event.outcome)
                    .details(details)
            })
            .collect()
    }
}

async fn writer(pool: PgPool, auditor: Auditor, mut receiver: mpsc::Receiver<Message>, flushing: Arc<Notify>) {
    let mut aggregates = Aggregates::default();
    loop {
        let Some(first) = receiver.recv().await else {
            break;
        };
        let mut batch: Vec<Call> = Vec::new();
        let mut flushes = Vec::new();
        let mut take = |message: Message, batch: &mut Vec<Call>, aggregates: &mut Aggregates| match message {
            Message::Call(event, _, CallMode::Aggregated) => aggregates.add(event),
            Message::Call(event, at, mode) => batch.push(Call { event, at, mode }),
            Message::Flush(done) => flushes.push(done),
        };
        let flush_now = matches!(first, Message::Flush(_));
        take(first, &mut batch, &mut aggregates);
        // The batch gathers while the writer sleeps, then is drained: two wake-ups of this task
        // per batch, where waiting on the channel would cost a wake-up (and a thread switch)
        // per call. A backlog is drained at once.
        if receiver.len() < MAX_BATCH && !flush_now {
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = flushing.notified() => {}
            }
        }
        for _ in 1..MAX_BATCH {
            match receiver.try_recv() {
                Ok(message) => take(message, &mut batch, &mut aggregates),
                Err(_) => break,
            }
        }
        let counted = if aggregates.due() || !flushes.is_empty() { aggregates.drain() } else { Vec::new() };
        write_with_retry(&pool, &auditor, batch, counted).await;
        for done in flushes {
            let _ = done.send(());
        }
    }
    write_with_retry(&pool, &auditor, Vec::new(), aggregates.drain()).await;
}

/// The calls of a shared record as whole objects (field name → value), `common` fields
/// included: how a reader of an export sees each call.
pub fn expand_calls(details: &serde_json::Value) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let fields: Vec<&str> =
        details["call_fields"].as_array().map(|f| f.iter().filter_map(|n| n.as_str()).collect()).unwrap_or_default();
    let common = details["common"].as_object().cloned().unwrap_or_default();
    let Some(calls) = details["calls"].as_array() else {
        return Vec::new();
    };
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

impl Call {
    /// This call without the values its request brought in: model name, version, user agent
    /// and request id. What the server knows itself (tenant, actor, outcome, time, client
    /// address, code, rows) stays.
    fn without_request_values(&self) -> Call {
        let event = CallEvent {
            model: Arc::from(NOT_RECORDABLE),
            version: None,
            info: RequestInfo { client_addr: self.event.info.client_addr, user_agent: None, request_id: None },
            not_recordable: true,
            ..self.event.clone()
        };
        Call { event, at: self.at, mode: self.mode }
    }
}

/// One submitted call.
struct Call {
    event: CallEvent,
    at: OffsetDateTime,
    /// Calls of different modes never share a record.
    mode: CallMode,
}

/// What a record stands in for when the database refused the values a request brought in.
pub const NOT_RECORDABLE: &str = "[not recordable]";

/// One transaction per tenant, retried with backoff until it lands. A batch the database
/// refuses for what it holds would be refused for ever, and hold up every call queued behind
/// it, of every tenant: its calls are then written in halves, and halves of those, down to the
/// calls refused on their own (a few transactions for each, not one per call of the batch),
/// and those are written without the values their requests brought in (model name, version,
/// user agent, request id), marked `not_recordable`, so that every call is still on record.
async fn write_with_retry(pool: &PgPool, auditor: &Auditor, calls: Vec<Call>, counted: Vec<AuditEvent>) {
    let mut by_tenant: HashMap<Uuid, (Vec<Call>, Vec<AuditEvent>)> = HashMap::new();
    for call in calls {
        by_tenant.entry(call.event.tenant.0).or_default().0.push(call);
    }
    for event in counted {
        by_tenant.entry(event.tenant.map(|t| t.0).unwrap_or(super::PLATFORM)).or_default().1.push(event);
    }
    for (tenant, (calls, counted)) in by_tenant {
        if land(pool, auditor, tenant, &calls, &counted).await.is_ok() {
            continue;
        }
        tracing::error!(%tenant, calls = calls.len(), events = counted.len(), "the database refused an audit batch; writing it in parts");
        // Without counted events, the calls alone were just refused: straight to their halves.
        land_in_parts(pool, auditor, tenant, &calls, counted.is_empty()).await;
        for event in counted {
            if land(pool, auditor, tenant, &[], std::slice::from_ref(&event)).await.is_err()
                && land(pool, auditor, tenant, &[], &[without_request_values(event)]).await.is_err()
            {
                tracing::error!(%tenant, "an audit event could not be written: the database refused even its stripped record");
            }
        }
    }
}

/// Writes `calls` (unless they are known to be `refused`); if the database refuses them for
/// their values, each half apart, and so on down to single calls, a refused one without its
/// request's values.
async fn land_in_parts(pool: &PgPool, auditor: &Auditor, tenant: Uuid, calls: &[Call], refused: bool) {
    if calls.is_empty() || (!refused && land(pool, auditor, tenant, calls, &[]).await.is_ok()) {
        return;
    }
    match calls {
        [] => {}
        [call] => {
            if land(pool, auditor, tenant, &[call.without_request_values()], &[]).await.is_err() {
                tracing::error!(%tenant, "an inference call could not be audited: the database refused even its stripped record");
            }
        }
        _ => {
            let (first, second) = calls.split_at(calls.len() / 2);
            Box::pin(land_in_parts(pool, auditor, tenant, first, false)).await;
            Box::pin(land_in_parts(pool, auditor, tenant, second, false)).await;
        }
    }
}

/// The database refused the batch for what it holds.
struct Refused;

/// Writes, retrying with backoff while the database fails (it is down, a connection broke);
/// gives up only when it refuses the values themselves, which no retry changes.
async fn land(pool: &PgPool, auditor: &Auditor, tenant: Uuid, calls: &[Call], counted: &[AuditEvent]) -> Result<(), Refused> {
    let mut delay = Duration::from_millis(50);
    loop {
        match write(pool, auditor, tenant, calls, counted).await {
            Ok(()) => return Ok(()),
            Err(error) if refused_values(&error) => {
                tracing::error!(error = ?error, calls = calls.len(), "audit records refused by the database");
                return Err(Refused);
            }
            Err(error) => {
                tracing::error!(error = ?error, calls = calls.len(), "audit batch not written; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A data exception (class 22), a violated constraint (23) or a value past a limit (54): the
/// same values would be refused again.
fn refused_values(error: &super::AuditError) -> bool {
    let super::AuditError::Fault(crate::error::Fault::Database(sqlx::Error::Database(e))) = error else {
        return false;
    };
    e.code().is_some_and(|code| ["22", "23", "54"].iter().any(|class| code.starts_with(class)))
}

/// A counted event without what requests brought in: its resource and the version it names.
fn without_request_values(event: AuditEvent) -> AuditEvent {
    let mut details = event.details;
    if let Some(fields) = details.as_object_mut() {
        fields.remove("version");
        fields.insert("not_recordable".to_owned(), true.into());
    }
    AuditEvent { resource_id: Some(NOT_RECORDABLE.to_owned()), details, ..event }
}

async fn write(
    pool: &PgPool,
    auditor: &Auditor,
    tenant: Uuid,
    calls: &[Call],
    counted: &[AuditEvent],
) -> Result<(), super::AuditError> {
    let mut tx = pool.begin().await?;
    let policy = auditor.mask_policy(&mut tx, tenant).await?;
    let mut records: Vec<Record> =
        counted.iter().map(|event| Record::new(event.clone(), &RequestInfo::default(), policy)).collect();
    // Group calls by actor, outcome and mode, keeping arrival order within each group. The
    // mode is part of the key: a record states one mode for all its calls.
    let mut groups: Vec<((AuditActor, Outcome, &'static str), Vec<&Call>)> = Vec::new();
    for call in calls {
        let key = (call.event.actor, call.event.outcome, call.mode.label());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(call),
            None => groups.push((key, vec![call])),
        }
    }
    records.extend(groups.iter().map(|(_, group)| shared_record(group, policy)));
    super::append_records(&mut tx, tenant, records).await?;
    tx.commit().await?;
    Ok(())
}

/// One value of a call's field, as written.
enum Field<'a> {
    Text(Option<&'a str>),
    /// Already masked if the tenant asks for it.
    Addr(Option<IpAddr>),
    Details(&'a CallEvent),
}

impl PartialEq for Field<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Field::Text(a), Field::Text(b)) => a == b,
            (Field::Addr(a), Field::Addr(b)) => a == b,
            (Field::Details(a), Field::Details(b)) => a.same_details(b),
            _ => false,
        }
    }
}

/// One chained record for a group of calls of one actor, outcome and mode. Its details are
/// written here directly as canonical JSON, redacted by the same rules as any event: keys in
/// byte order (`audit_mode`, `call_fields`, `calls`, `common`, `count`, `sample_rate`), fields
/// every call shares stated once in `common`, the others one array per call in `CALL_FIELDS`
/// order. This runs for every audited call, so it builds no JSON tree and no string per value.
fn shared_record(group: &[&Call], policy: MaskPolicy) -> Record {
    let first = &group[0].event;
    let field = |i: usize, f: usize| -> Field<'_> {
        let c = &group[i].event;
        match CallField::ALL[f] {
            CallField::ResourceType => Field::Text(Some("model")),
            CallField::ResourceId => Field::Text(Some(&*c.model)),
            CallField::Outcome => Field::Text(Some(c.outcome.as_str())),
            CallField::ClientAddr => {
                Field::Addr(c.info.client_addr.map(|a| if policy.client_addr { mask_ip(a) } else { a }))
            }
            CallField::UserAgent => Field::Text(c.info.user_agent()),
            CallField::RequestId => Field::Text(c.info.request_id()),
            CallField::Details => Field::Details(c),
            CallField::At => unreachable!("`at` is written separately"),
        }
    };
    // `at` differs from call to call; every other field is shared when all calls agree.
    let shared: [bool; CALL_FIELDS.len()] = std::array::from_fn(|f| {
        CallField::ALL[f] != CallField::At && (1..group.len()).all(|i| field(i, f) == field(0, f))
    });
    let write = |out: &mut Vec<u8>, value: Field<'_>| match value {
        Field::Text(Some(text)) => chain::write_string(text, policy, out),
        Field::Text(None) | Field::Addr(None) => out.extend_from_slice(b"null"),
        Field::Addr(Some(addr)) => {
            out.push(b'"');
            write_addr(out, addr, policy.client_addr);
            out.push(b'"');
        }
        Field::Details(call) => call.write_details(policy, out),
    };

    let mut out = Vec::with_capacity(256 + group.len() * 96);
    out.extend_from_slice(b"{\"audit_mode\":");
    chain::write_string(group[0].mode.label(), policy, &mut out);
    out.extend_from_slice(b",\"call_fields\":[");
    let varying: Vec<usize> = (0..CALL_FIELDS.len()).filter(|f| !shared[*f]).collect();
    for (n, f) in varying.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        chain::write_string(CallField::ALL[*f].name(), policy, &mut out);
    }
    out.extend_from_slice(b"],\"calls\":[");
    for (i, call) in group.iter().enumerate() {
        out.extend_from_slice(if i > 0 { b",[" } else { b"[" });
        for (n, f) in varying.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            if CallField::ALL[*f] == CallField::At {
                out.push(b'"');
                call.at
                    .format_into(&mut out, super::chain::TIME_FORMAT)
                    .expect("formatting a UTC timestamp cannot fail");
                out.push(b'"');
            } else {
                write(&mut out, field(i, *f));
            }
        }
        out.push(b']');
    }
    out.extend_from_slice(b"],\"common\":{");
    let mut names: Vec<usize> = (0..CALL_FIELDS.len()).filter(|f| shared[*f]).collect();
    names.sort_by_key(|f| CALL_FIELDS[*f]);
    for (n, f) in names.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        chain::write_string(CallField::ALL[*f].name(), policy, &mut out);
        out.push(b':');
        write(&mut out, field(0, *f));
    }
    write!(out, "}},\"count\":{}", group.len()).expect("writing to a Vec cannot fail");
    if let CallMode::Sampled(rate) = group[0].mode {
        out.extend_from_slice(b",\"sample_rate\":");
        chain::write_canonical(&serde_json::Value::from(rate), &mut out, Some(policy));
    }
    out.push(b'}');

    let same_resource = group.iter().all(|c| c.event.model == first.model);
    Record {
        actor: first.actor,
        action: CallEvent::ACTION,
        resource_type: same_resource.then_some("model"),
        resource_id: same_resource.then(|| first.model.to_string()),
        outcome: first.outcome,
        client_addr: None,
        user_agent: None,
        request_id: None,
        details: String::from_utf8(out).expect("JSON text is UTF-8"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestId;
    use actix_web::http::header::HeaderValue;
    use serde_json::json;

    fn call(n: u64, addr: &str, agent: &str, rows: u64) -> Call {
        let event = CallEvent {
            tenant: TenantId(Uuid::nil()),
            actor: AuditActor::anonymous(),
            model: "m".into(),
            version: None,
            outcome: Outcome::Success,
            cache: "miss",
            rows,
            code: None,
            not_recordable: false,
            info: RequestInfo {
                client_addr: Some(addr.parse().unwrap()),
                user_agent: Some(HeaderValue::from_str(agent).unwrap()),
                request_id: RequestId::parse(&HeaderValue::from_str(&format!("r{n}")).unwrap()),
            },
        };
        let at = OffsetDateTime::from_unix_timestamp(1_767_323_045 + n as i64).unwrap();
        Call { event, at, mode: CallMode::EveryCall }
    }

    #[test]
    fn call_details_are_canonical_and_redacted_as_any_event() {
        let mut event = call(1, "10.0.0.1", "curl", 3).event;
        assert_eq!(event.details(), json!({ "cache": "miss", "rows": 3, "version": null }));
        event.code = Some("invalid_input");
        assert_eq!(event.details(), json!({ "cache": "miss", "code": "invalid_input", "rows": 3, "version": null }));
        for (version, code) in
            [(None, None), (Some("production"), Some("invalid_input")), (Some("ann@example.com"), None)]
        {
            event.version = version.map(str::to_owned);
            event.code = code;
            for policy in [MaskPolicy::default(), MaskPolicy { emails: true, client_addr: true }] {
                let mut written = Vec::new();
                event.write_details(policy, &mut written);
                let written = String::from_utf8(written).unwrap();
                assert_eq!(written, chain::canonical_json_redacted(&event.details(), policy));
                assert_eq!(written.contains("ann@"), version == Some("ann@example.com") && !policy.emails, "{written}");
            }
        }
    }

    #[test]
    fn shared_records_are_canonical_state_common_fields_once_and_expand_back() {
        let calls = [call(1, "10.0.0.1", "curl", 1), call(2, "10.0.0.1", "curl", 2)];
        let group: Vec<&Call> = calls.iter().collect();
        let record = shared_record(&group, MaskPolicy::default());
        let details: serde_json::Value = serde_json::from_str(&record.details).unwrap();
        assert_eq!(chain::canonical_json(&details), record.details, "written in canonical form");
        assert_eq!(details["call_fields"], json!(["at", "request_id", "details"]));
        assert_eq!(details["common"]["client_addr"], "10.0.0.1");
        assert_eq!((details["audit_mode"].as_str(), details["count"].as_u64()), (Some("every_call"), Some(2)));
        let expanded = expand_calls(&details);
        assert_eq!(expanded.len(), 2);
        assert_eq!(expanded[1]["details"], json!({ "rows": 2, "cache": "miss", "version": null }));
        assert_eq!(expanded[1]["at"], "2026-01-02T03:04:07.000000Z");
        assert_eq!(expanded[1]["request_id"], "r2");
        assert_eq!(expanded[0]["resource_id"], "m");
        assert_eq!((expanded[0]["resource_type"].as_str(), expanded[0]["outcome"].as_str()), (Some("model"), Some("success")));
        assert_eq!(expanded[0]["user_agent"], "curl");
        assert_eq!(expanded[0].len(), CALL_FIELDS.len());
        assert_eq!(record.resource_id.as_deref(), Some("m"));
    }

    #[test]
    fn shared_records_are_redacted_as_any_event() {
        let sampled = |n, addr| Call { mode: CallMode::Sampled(0.5), ..call(n, addr, "bob@example.com", n) };
        let calls = [sampled(1, "10.0.0.1"), sampled(2, "10.0.7.2")];
        let group: Vec<&Call> = calls.iter().collect();
        let record = shared_record(&group, MaskPolicy { emails: true, client_addr: true });
        let details: serde_json::Value = serde_json::from_str(&record.details).unwrap();
        assert_eq!(chain::canonical_json(&details), record.details);
        assert!(!record.details.contains("bob@"), "{}", record.details);
        assert_eq!((details["audit_mode"].as_str(), details["sample_rate"].as_f64()), (Some("sampled"), Some(0.5)));
        let expanded = expand_calls(&details);
        assert_eq!(expanded[0]["user_agent"], "b***@example.com");
        assert_eq!(expanded[1]["client_addr"], "10.0.7.0");
        assert_eq!(
            expanded[1]["details"],
            json!({ "cache": "miss", "rows": 2, "version": null }),
            "the mode is stated once, for the record"
        );
    }
}
