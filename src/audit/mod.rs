//! The tamper-evident audit log: events, their hash chains, signed checkpoints, reading,
//! streaming exports and verification.
//!
//! Events that record a change are written in the same transaction as the change (see
//! `Auditor::record`): no change without its event, no event without its change.

pub mod chain;
pub mod export;
pub mod redact;
pub mod retention;
pub mod routes;
pub mod signing;
pub mod sink;
pub mod verify;

use std::collections::HashMap;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{FromRequest, HttpMessage, HttpRequest};
use parking_lot::RwLock;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use self::chain::{ChainedEvent, canonical_json, format_time, now_micros};
use self::redact::{MaskPolicy, mask_addr, redact};
use crate::error::ApiError;
use crate::http::edge::RequestId;
use crate::identity::{Actor, Principal};
use crate::tenancy::TenantId;

/// The chain of platform-level events (no tenant): logins without a tenant, bootstrap, …
pub const PLATFORM: Uuid = Uuid::nil();

/// Where a request came from, as recorded in its events.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl RequestInfo {
    pub fn from_request(req: &HttpRequest) -> Self {
        Self {
            client_addr: req.peer_addr().map(|a| a.ip().to_string()),
            user_agent: req
                .headers()
                .get(actix_web::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(512).collect()),
            request_id: req.extensions().get::<RequestId>().map(|r| r.as_str().to_owned()),
        }
    }

    /// For operator commands.
    pub fn command_line() -> Self {
        Self { client_addr: None, user_agent: Some(format!("tessera-cli/{}", crate::VERSION)), request_id: None }
    }
}

impl FromRequest for RequestInfo {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(Ok(Self::from_request(req)))
    }
}

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
#[derive(Debug, Clone)]
pub struct AuditActor {
    pub kind: &'static str,
    pub id: Option<String>,
}

impl AuditActor {
    pub fn of(principal: &Principal) -> Self {
        match principal.actor {
            Actor::User { id } => Self { kind: "user", id: Some(id.to_string()) },
            Actor::ApiKey { id } => Self { kind: "api_key", id: Some(id.to_string()) },
            Actor::System => Self { kind: "system", id: None },
        }
    }

    pub fn user(id: Uuid) -> Self {
        Self { kind: "user", id: Some(id.to_string()) }
    }

    pub fn anonymous() -> Self {
        Self { kind: "anonymous", id: None }
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
    pub async fn record(&self, conn: &mut PgConnection, info: &RequestInfo, events: Vec<AuditEvent>) -> Result<(), ApiError> {
        self.record_each(conn, events.into_iter().map(|e| (e, info.clone())).collect()).await
    }

    /// Like `record`, for events of different requests (batched writers).
    pub async fn record_each(&self, conn: &mut PgConnection, events: Vec<(AuditEvent, RequestInfo)>) -> Result<(), ApiError> {
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
    pub async fn record_alone(&self, pool: &PgPool, info: &RequestInfo, events: Vec<AuditEvent>) -> Result<(), ApiError> {
        let mut tx = pool.begin().await?;
        self.record(&mut tx, info, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn append(&self, conn: &mut PgConnection, tenant: Uuid, events: Vec<(AuditEvent, RequestInfo)>) -> Result<(), ApiError> {
        let policy = self.mask_policy(conn, tenant).await?;
        let (last_seq, last_hash): (i64, Vec<u8>) =
            sqlx::query_as("SELECT last_seq, last_hash FROM audit_lock_head($1)").bind(tenant).fetch_one(&mut *conn).await?;
        let mut prev: [u8; 32] = last_hash
            .try_into()
            .map_err(|_| ApiError::internal(anyhow::anyhow!("corrupt audit head for {tenant}")))?;
        let mut rows = Vec::with_capacity(events.len());
        let mut canonical = Vec::with_capacity(events.len());
        for (offset, (event, info)) in events.into_iter().enumerate() {
            let mut details = event.details;
            redact(&mut details, policy);
            let client_addr = info.client_addr.as_deref().map(|a| if policy.client_addr { mask_addr(a) } else { a.to_owned() });
            let mut chained = ChainedEvent {
                tenant_id: tenant,
                seq: last_seq + 1 + offset as i64,
                id: Uuid::now_v7(),
                occurred_at: format_time(now_micros()),
                actor_type: event.actor.kind.to_owned(),
                actor_id: event.actor.id,
                action: event.action.to_owned(),
                resource_type: event.resource_type.map(str::to_owned),
                resource_id: event.resource_id,
                outcome: event.outcome.as_str().to_owned(),
                client_addr,
                user_agent: info.user_agent,
                request_id: info.request_id,
                details,
                prev_hash: hex::encode(prev),
                hash: String::new(),
            };
            // Canonicalised once: the same text is hashed and stored.
            let details_text = canonical_json(&chained.details);
            let hash = chained.compute_hash_with(&prev, &details_text);
            chained.hash = hex::encode(hash);
            prev = hash;
            rows.push(chained);
            canonical.push(details_text);
        }
        let json = rows_json(&rows, canonical);
        sqlx::query("SELECT audit_append($1, $2::json)").bind(tenant).bind(json).execute(&mut *conn).await?;
        Ok(())
    }
}

/// Signs every chain head that has moved since its last checkpoint. Returns how many.
pub async fn sign_checkpoints(pool: &PgPool, signer: &signing::AuditSigner) -> Result<usize, sqlx::Error> {
    let heads: Vec<(Uuid, i64, Vec<u8>)> =
        sqlx::query_as("SELECT tenant_id, last_seq, last_hash FROM audit_unsigned_heads()").fetch_all(pool).await?;
    for (tenant, seq, hash) in &heads {
        let signed_at = format_time(now_micros());
        let signature = signer.sign(&signing::checkpoint_message(tenant, *seq, &hex::encode(hash), &signed_at));
        sqlx::query("SELECT audit_add_checkpoint($1, $2, $3, $4, $5::timestamptz, $6, $7, 'periodic')")
            .bind(Uuid::now_v7())
            .bind(tenant)
            .bind(seq)
            .bind(hash)
            .bind(&signed_at)
            .bind(signer.key_id())
            .bind(signature)
            .execute(pool)
            .await?;
    }
    Ok(heads.len())
}

/// Runs `sign_checkpoints` every `interval` until the process ends.
pub fn spawn_checkpointer(pool: PgPool, signer: Arc<signing::AuditSigner>, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            match sign_checkpoints(&pool, &signer).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(chains = n, "signed audit checkpoints"),
                Err(error) => tracing::warn!(%error, "could not sign audit checkpoints; will retry"),
            }
        }
    });
}

/// The JSON array `audit_append` takes, each `details` embedded as its canonical text so that
/// the stored text is exactly what was hashed.
fn rows_json(rows: &[ChainedEvent], canonical: Vec<String>) -> String {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        id: Uuid,
        seq: i64,
        occurred_at: &'a str,
        actor_type: &'a str,
        actor_id: Option<&'a str>,
        action: &'a str,
        resource_type: Option<&'a str>,
        resource_id: Option<&'a str>,
        outcome: &'a str,
        client_addr: Option<&'a str>,
        user_agent: Option<&'a str>,
        request_id: Option<&'a str>,
        details: Box<serde_json::value::RawValue>,
        prev_hash: &'a str,
        hash: &'a str,
    }
    let out: Vec<Row<'_>> = rows
        .iter()
        .zip(canonical)
        .map(|(r, details)| Row {
            id: r.id,
            seq: r.seq,
            occurred_at: &r.occurred_at,
            actor_type: &r.actor_type,
            actor_id: r.actor_id.as_deref(),
            action: &r.action,
            resource_type: r.resource_type.as_deref(),
            resource_id: r.resource_id.as_deref(),
            outcome: &r.outcome,
            client_addr: r.client_addr.as_deref(),
            user_agent: r.user_agent.as_deref(),
            request_id: r.request_id.as_deref(),
            details: serde_json::value::RawValue::from_string(details).expect("canonical JSON is JSON"),
            prev_hash: &r.prev_hash,
            hash: &r.hash,
        })
        .collect();
    serde_json::to_string(&out).expect("rows serialize")
}
