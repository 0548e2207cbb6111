//! The tamper-evident audit log: events, their hash chains, signed checkpoints, reading,
//! streaming exports and verification.
//!
//! Events that record a change are written in the same transaction as the change (see
//! `Auditor::record`): no change without its event, no event without its change.

pub mod chain;
pub mod error;
pub mod export;
pub mod notary;
pub mod redact;
pub mod retention;
pub mod routes;
pub mod service;
pub mod signing;
pub mod sink;
pub mod verify;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use self::chain::{format_time, now_micros};
use self::redact::{MaskPolicy, mask_addr};
pub use self::error::AuditError;
use crate::request::{Actor, RequestInfo};
use crate::tenancy::TenantId;

/// The chain of platform-level events (no tenant): logins without a tenant, bootstrap, …
pub const PLATFORM: Uuid = Uuid::nil();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
}

/// Who did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditActor {
    pub kind: &'static str,
    pub id: Option<Uuid>,
}

impl AuditActor {
    pub fn user(id: Uuid) -> Self {
        Self { kind: "user", id: Some(id) }
    }

    pub fn anonymous() -> Self {
        Self { kind: "anonymous", id: None }
    }
}

impl From<Actor> for AuditActor {
    fn from(actor: Actor) -> Self {
        match actor {
            Actor::User { id } => Self { kind: "user", id: Some(id) },
            Actor::ApiKey { id } => Self { kind: "api_key", id: Some(id) },
            Actor::System => Self { kind: "system", id: None },
        }
    }
}

/// One security-relevant action, before it is chained.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub tenant: Option<TenantId>,
    pub actor: AuditActor,
    pub action: &'static str,
    pub resource_type: Option<&'static str>,
    pub resource_id: Option<String>,
    pub outcome: Outcome,
    pub details: Value,
}

impl AuditEvent {
    pub fn new(tenant: Option<TenantId>, actor: AuditActor, action: &'static str) -> Self {
        Self {
            tenant,
            actor,
            action,
            resource_type: None,
            resource_id: None,
            outcome: Outcome::Success,
            details: Value::Object(Default::default()),
        }
    }

    pub fn resource(mut self, kind: &'static str, id: impl ToString) -> Self {
        self.resource_type = Some(kind);
        self.resource_id = Some(id.to_string());
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

const MASK_TTL: Duration = Duration::from_secs(5);

/// Writes events into their tenants' chains.
#[derive(Clone, Default)]
pub struct Auditor {
    masks: Arc<RwLock<HashMap<Uuid, (MaskPolicy, Instant)>>>,
}

impl Auditor {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn settings_changed(&self, tenant: TenantId) {
        self.masks.write().remove(&tenant.0);
    }

    pub(crate) async fn mask_policy(&self, conn: &mut PgConnection, tenant: Uuid) -> Result<MaskPolicy, sqlx::Error> {
        if tenant == PLATFORM {
            return Ok(MaskPolicy::default());
        }
        if let Some((policy, at)) = self.masks.read().get(&tenant) {
            if at.elapsed() < MASK_TTL {
                return Ok(*policy);
            }
        }
        let row: Option<(bool, bool)> =
            sqlx::query_as("SELECT mask_emails, mask_client_addr FROM audit_settings WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_optional(&mut *conn)
                .await?;
        let policy = row.map(|(emails, client_addr)| MaskPolicy { emails, client_addr }).unwrap_or_default();
        self.masks.write().insert(tenant, (policy, Instant::now()));
        Ok(policy)
    }

    /// Appends `events` inside the caller's transaction: if the transaction rolls back, so do
    /// they; if they cannot be written, the caller's transaction fails.
    pub async fn record(
        &self,
        conn: &mut PgConnection,
        info: &RequestInfo,
        events: Vec<AuditEvent>,
    ) -> Result<(), AuditError> {
        self.record_each(conn, events.into_iter().map(|e| (e, info.clone())).collect()).await
    }

    /// Like `record`, for events of different requests (batched writers).
    pub async fn record_each(
        &self,
        conn: &mut PgConnection,
        events: Vec<(AuditEvent, RequestInfo)>,
    ) -> Result<(), AuditError> {
        let mut by_tenant: Vec<(Uuid, Vec<(AuditEvent, RequestInfo)>)> = Vec::new();
        for (event, info) in events {
            let tenant = event.tenant.map(|t| t.0).unwrap_or(PLATFORM);
            match by_tenant.iter_mut().find(|(t, _)| *t == tenant) {
                Some((_, list)) => list.push((event, info)),
                None => by_tenant.push((tenant, vec![(event, info)])),
            }
        }
        for (tenant, events) in by_tenant {
            self.append(conn, tenant, events).await?;
        }
        Ok(())
    }

    /// Records events that accompany no change (a failed login, an export) in a transaction
    /// of their own.
    pub async fn record_alone(
        &self,
        pool: &PgPool,
        info: &RequestInfo,
        events: Vec<AuditEvent>,
    ) -> Result<(), AuditError> {
        let mut tx = pool.begin().await?;
        self.record(&mut tx, info, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append(
        &self,
        conn: &mut PgConnection,
        tenant: Uuid,
        events: Vec<(AuditEvent, RequestInfo)>,
    ) -> Result<(), AuditError> {
        let policy = self.mask_policy(conn, tenant).await?;
        let records = events.into_iter().map(|(event, info)| Record::new(event, &info, policy)).collect();
        append_records(conn, tenant, records).await
    }
}

/// An event ready to be chained: masked as the tenant's policy says, `details` already its
/// canonical JSON (the exact text that is hashed and stored).
pub(crate) struct Record {
    pub actor: AuditActor,
    pub action: &'static str,
    pub resource_type: Option<&'static str>,
    pub resource_id: Option<String>,
    pub outcome: Outcome,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub details: String,
}

impl Record {
    /// Text columns cannot hold NUL, and a record Postgres refuses would hold up its whole
    /// batch; so whatever a request managed to bring in, a NUL is stored, and hashed, as U+FFFD
    /// (the replacement character), as `chain::write_string` writes it in `details`.
    fn storable(&mut self) {
        for text in [&mut self.resource_id, &mut self.client_addr, &mut self.user_agent, &mut self.request_id].into_iter().flatten() {
            if text.contains('\0') {
                *text = text.replace('\0', "\u{FFFD}");
            }
        }
    }

    pub fn new(event: AuditEvent, info: &RequestInfo, policy: MaskPolicy) -> Self {
        Self {
            details: chain::canonical_json_redacted(&event.details, policy),
            client_addr: info.client_addr.map(|a| if policy.client_addr { mask_addr(a) } else { a.to_string() }),
            user_agent: info.user_agent().map(str::to_owned),
            request_id: info.request_id().map(str::to_owned),
            actor: event.actor,
            action: event.action,
            resource_type: event.resource_type,
            resource_id: event.resource_id,
            outcome: event.outcome,
        }
    }
}

/// Chains `records` after the tenant's head, under the head's row lock (one writer per tenant
/// at a time; other tenants are not held up), and inserts them in one statement.
pub(crate) async fn append_records(
    conn: &mut PgConnection,
    tenant: Uuid,
    mut records: Vec<Record>,
) -> Result<(), AuditError> {
    for record in &mut records {
        record.storable();
    }
    let (last_seq, last_hash): (i64, Vec<u8>) = sqlx::query_as("SELECT last_seq, last_hash FROM audit_lock_head($1)")
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await?;
    let mut prev: [u8; 32] = last_hash.try_into().map_err(|_| anyhow::anyhow!("corrupt audit head for {tenant}"))?;
    let occurred_at = format_time(now_micros());
    let mut rows = Vec::with_capacity(64 + records.len() * 512);
    rows.push(b'[');
    for (offset, record) in records.iter().enumerate() {
        let seq = last_seq + 1 + offset as i64;
        let id = Uuid::now_v7();
        let mut actor_buf = Uuid::encode_buffer();
        let actor_id = record.actor.id.map(|a| &*a.hyphenated().encode_lower(&mut actor_buf));
        let hash = chain::HashInput {
            tenant_id: tenant,
            seq,
            id,
            occurred_at: &occurred_at,
            actor_type: record.actor.kind,
            actor_id,
            action: record.action,
            resource_type: record.resource_type,
            resource_id: record.resource_id.as_deref(),
            outcome: record.outcome.as_str(),
            client_addr: record.client_addr.as_deref(),
            user_agent: record.user_agent.as_deref(),
            request_id: record.request_id.as_deref(),
            details: &record.details,
        }
        .hash(&prev);
        if offset > 0 {
            rows.push(b',');
        }
        write_row(&mut rows, record, actor_id, seq, id, &occurred_at, &prev, &hash);
        prev = hash;
    }
    rows.push(b']');
    let rows = String::from_utf8(rows).expect("JSON text is UTF-8");
    let details: Vec<&str> = records.iter().map(|r| r.details.as_str()).collect();
    sqlx::query("SELECT audit_append($1, $2::json, $3)").bind(tenant).bind(rows).bind(details).execute(&mut *conn).await?;
    Ok(())
}

/// One element of the JSON array `audit_append` takes: every field but `details`, which goes
/// beside it as its canonical text, so the stored text is exactly what was hashed and Postgres
/// lexes it once.
#[allow(clippy::too_many_arguments)]
fn write_row(
    out: &mut Vec<u8>,
    r: &Record,
    actor_id: Option<&str>,
    seq: i64,
    id: Uuid,
    occurred_at: &str,
    prev: &[u8; 32],
    hash: &[u8; 32],
) {
    fn field(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        serde_json::to_writer(&mut *out, &value).expect("strings serialize");
    }
    let mut uuid = Uuid::encode_buffer();
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(id.hyphenated().encode_lower(&mut uuid).as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    field(out, "occurred_at", Some(occurred_at));
    field(out, "actor_type", Some(r.actor.kind));
    field(out, "actor_id", actor_id);
    field(out, "action", Some(r.action));
    field(out, "resource_type", r.resource_type);
    field(out, "resource_id", r.resource_id.as_deref());
    field(out, "outcome", Some(r.outcome.as_str()));
    field(out, "client_addr", r.client_addr.as_deref());
    field(out, "user_agent", r.user_agent.as_deref());
    field(out, "request_id", r.request_id.as_deref());
    field(out, "prev_hash", Some(&hex::encode(prev)));
    field(out, "hash", Some(&hex::encode(hash)));
    out.push(b'}');
}

/// Signs every chain head that has moved since its last checkpoint (row and digest). Returns
/// how many.
pub async fn sign_checkpoints(pool: &PgPool, notary: &notary::Notary) -> anyhow::Result<usize> {
    let heads: Vec<(Uuid, i64, Vec<u8>)> =
        sqlx::query_as("SELECT tenant_id, last_seq, last_hash FROM audit_unsigned_heads()").fetch_all(pool).await?;
    for (tenant, seq, hash) in &heads {
        let mut tx = pool.begin().await?;
        notary.checkpoint(&mut tx, *tenant, *seq, hash, "periodic").await?;
        tx.commit().await?;
    }
    Ok(heads.len())
}

/// Runs `sign_checkpoints` every `interval` until the process ends.
pub fn spawn_checkpointer(
    pool: PgPool,
    notary: notary::Notary,
    interval: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if interval.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stopping.changed() => return,
            }
            match sign_checkpoints(&pool, &notary).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(chains = n, "signed audit checkpoints"),
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), "could not sign audit checkpoints; will retry")
                }
            }
        }
    }))
}
