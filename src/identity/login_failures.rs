//! Failed logins reach the audit trail collapsed: one platform event per (account, client,
//! minute, reason) with a count, never an event in a tenant's chain. Whoever fails to log in
//! has not shown they are someone of that tenant, so they must not be able to write into its
//! permanent record, nor flood any chain with one row per attempt.
//!
//! Attempts are counted in `login_failures` (an upsert per attempt); `flush` moves closed
//! minutes into the platform chain, deleting and appending in one transaction so that each
//! row is chained exactly once, whichever process flushes.

use std::net::IpAddr;
use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::error::IdentityError;
use crate::audit::{AuditActor, AuditEvent, Auditor, Outcome};
use crate::request::RequestInfo;

const MAX_ACCOUNT: usize = 320;
const MAX_TENANT: usize = 100;
const MAX_REASON: usize = 200;
/// Rows chained per transaction, so a backlog drains in bounded steps.
const FLUSH_BATCH: i64 = 500;
const FLUSH_EVERY: Duration = Duration::from_secs(15);

/// One refused login, as counted.
pub struct FailedLogin<'a> {
    /// The email as given (lower-cased when it parsed), cut to 320 bytes.
    pub account: &'a str,
    pub reason: &'a str,
    pub outcome: Outcome,
    /// The user the email names, when it names one.
    pub user: Option<Uuid>,
    /// The tenant slug the caller asked for, if any.
    pub tenant: Option<&'a str>,
}

fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub async fn record(pool: &PgPool, failure: FailedLogin<'_>, info: &RequestInfo) -> Result<(), IdentityError> {
    // Counted per client as the throttle counts it (an IPv6 client by its /64), so rotating
    // addresses inside one block does not turn each attempt into an event of its own.
    let client = super::throttle::client_key(info.client_addr);
    sqlx::query(
        "INSERT INTO login_failures (minute, account, client, reason, user_id, tenant, user_agent, outcome) \
         VALUES (date_trunc('minute', now()), $1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (minute, account, client, reason) DO UPDATE \
         SET attempts = login_failures.attempts + 1, last_at = now(), \
             user_id = COALESCE(login_failures.user_id, EXCLUDED.user_id)",
    )
    .bind(cut(failure.account, MAX_ACCOUNT))
    .bind(client)
    .bind(cut(failure.reason, MAX_REASON))
    .bind(failure.user)
    .bind(failure.tenant.map(|t| cut(t, MAX_TENANT)))
    .bind(info.user_agent())
    .bind(failure.outcome.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    minute: OffsetDateTime,
    account: String,
    client: String,
    reason: String,
    outcome: String,
    user_id: Option<Uuid>,
    tenant: Option<String>,
    user_agent: Option<String>,
    attempts: i32,
    first_at: OffsetDateTime,
    last_at: OffsetDateTime,
}

/// Chains every counted minute that began before `before`'s minute; returns how many events
/// were written.
pub async fn flush(pool: &PgPool, auditor: &Auditor, before: OffsetDateTime) -> Result<usize, IdentityError> {
    let mut total = 0;
    loop {
        let chained = flush_batch(pool, auditor, before).await?;
        total += chained;
        if chained < FLUSH_BATCH as usize {
            return Ok(total);
        }
    }
}

async fn flush_batch(pool: &PgPool, auditor: &Auditor, before: OffsetDateTime) -> Result<usize, IdentityError> {
    let mut tx = pool.begin().await?;
    let mut rows: Vec<Row> = sqlx::query_as(
        "DELETE FROM login_failures WHERE ctid IN (SELECT ctid FROM login_failures \
         WHERE minute < date_trunc('minute', $1::timestamptz) LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING minute, account, client, reason, outcome, user_id, tenant, user_agent, attempts, first_at, last_at",
    )
    .bind(before)
    .bind(FLUSH_BATCH)
    .fetch_all(&mut *tx)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    rows.sort_by(|a, b| (a.first_at, &a.account, &a.client).cmp(&(b.first_at, &b.account, &b.client)));
    let count = rows.len();
    let events = rows
        .into_iter()
        .map(|row| {
            let actor = row.user_id.map(AuditActor::user).unwrap_or_else(AuditActor::anonymous);
            let outcome = if row.outcome == "denied" { Outcome::Denied } else { Outcome::Failure };
            let event = AuditEvent::new(None, actor, "auth.login")
                .outcome(outcome)
                .details(serde_json::json!({
                    "email": row.account,
                    "client": row.client,
                    "reason": row.reason,
                    "attempts": row.attempts,
                    "minute": crate::audit::chain::format_time(row.minute),
                    "first_at": crate::audit::chain::format_time(row.first_at),
                    "last_at": crate::audit::chain::format_time(row.last_at),
                    "tenant": row.tenant,
                }));
            let info = RequestInfo {
                client_addr: row.client.parse::<IpAddr>().ok(),
                user_agent: row.user_agent.and_then(|a| actix_web::http::header::HeaderValue::from_str(&a).ok()),
                request_id: None,
            };
            (event, info)
        })
        .collect();
    auditor.record_each(&mut tx, events).await?;
    tx.commit().await?;
    Ok(count)
}

/// Flushes closed minutes every few seconds until `stopping` turns true, then once more for
/// everything counted so far.
pub fn spawn_flusher(pool: PgPool, auditor: Auditor, mut stopping: tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Err(error) = flush(&pool, &auditor, OffsetDateTime::now_utc()).await {
                        tracing::warn!(?error, "could not chain counted login failures; will retry");
                    }
                }
                _ = stopping.changed() => {
                    let _ = flush(&pool, &auditor, OffsetDateTime::now_utc() + time::Duration::minutes(1)).await;
                    return;
                }
            }
        }
    })
}
