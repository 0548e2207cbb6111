//! Reading the audit log: filtered pages for the API, and streaming exports (CSV or JSON Lines)
//! that end with a signed manifest. Exports stream row by row through a bounded channel, so
//! memory stays flat whatever the size.

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::chain::{ChainedEvent, canonical_json, format_time};
use super::error::AuditError;

#[derive(Debug, Clone, Default, Deserialize, Serialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct AuditFilters {
    /// Events at or after this instant (RFC 3339).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Events before this instant (RFC 3339).
    #[param(format = DateTime)]
    pub to: Option<String>,
    pub actor_type: Option<String>,
    pub actor_id: Option<String>,
    /// Exact action, e.g. `api_key.created`, or a prefix ending in `.`, e.g. `auth.`.
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// `success`, `failure` or `denied`.
    #[param(pattern = "^(success|failure|denied)$")]
    pub outcome: Option<String>,
}

pub struct ParsedFilters {
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
    pub raw: AuditFilters,
}

impl AuditFilters {
    pub fn parse(self) -> Result<ParsedFilters, AuditError> {
        let time = |name: &'static str, value: &Option<String>| -> Result<Option<OffsetDateTime>, AuditError> {
            value
                .as_deref()
                .map(|v| {
                    OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                        .map_err(|_| AuditError::InvalidTime(name))
                })
                .transpose()
        };
        if let Some(outcome) = &self.outcome {
            if !["success", "failure", "denied"].contains(&outcome.as_str()) {
                return Err(AuditError::InvalidOutcome);
            }
        }
        Ok(ParsedFilters { from: time("from", &self.from)?, to: time("to", &self.to)?, raw: self })
    }

    /// True when the filters select a contiguous stretch of the chain (time bounds only).
    pub fn contiguous(&self) -> bool {
        self.actor_type.is_none()
            && self.actor_id.is_none()
            && self.action.is_none()
            && self.resource_type.is_none()
            && self.resource_id.is_none()
            && self.outcome.is_none()
    }
}

const COLUMNS: &str = "tenant_id, seq, id, occurred_at, actor_type, actor_id, action, resource_type, resource_id, \
                       outcome, client_addr, user_agent, request_id, details::text AS details, prev_hash, hash";

#[derive(sqlx::FromRow)]
pub struct EventRow {
    tenant_id: Uuid,
    seq: i64,
    id: Uuid,
    occurred_at: OffsetDateTime,
    actor_type: String,
    actor_id: Option<String>,
    action: String,
    resource_type: Option<String>,
    resource_id: Option<String>,
    outcome: String,
    client_addr: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    details: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl EventRow {
    pub fn into_event(self) -> ChainedEvent {
        ChainedEvent {
            tenant_id: self.tenant_id,
            seq: self.seq,
            id: self.id,
            occurred_at: format_time(self.occurred_at),
            actor_type: self.actor_type,
            actor_id: self.actor_id,
            action: self.action,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            outcome: self.outcome,
            client_addr: self.client_addr,
            user_agent: self.user_agent,
            request_id: self.request_id,
            details: serde_json::from_str(&self.details).unwrap_or(serde_json::Value::String(self.details)),
            prev_hash: hex::encode(self.prev_hash),
            hash: hex::encode(self.hash),
        }
    }
}

/// `SELECT … WHERE tenant = … AND <filters> [AND seq > after] ORDER BY seq`.
pub fn select(tenant: Uuid, filters: &ParsedFilters, after: Option<i64>, limit: Option<i64>) -> QueryBuilder<Postgres> {
    let mut q = QueryBuilder::new(format!("SELECT {COLUMNS} FROM audit_events WHERE tenant_id = "));
    q.push_bind(tenant);
    if let Some(from) = filters.from {
        q.push(" AND occurred_at >= ").push_bind(from);
    }
    if let Some(to) = filters.to {
        q.push(" AND occurred_at < ").push_bind(to);
    }
    let f = &filters.raw;
    for (column, value) in [
        ("actor_type", &f.actor_type),
        ("actor_id", &f.actor_id),
        ("resource_type", &f.resource_type),
        ("resource_id", &f.resource_id),
        ("outcome", &f.outcome),
    ] {
        if let Some(value) = value {
            q.push(format!(" AND {column} = ")).push_bind(value.as_str());
        }
    }
    if let Some(action) = &f.action {
        if let Some(prefix) = action.strip_suffix('.') {
            q.push(" AND starts_with(action, ").push_bind(format!("{prefix}.")).push(")");
        } else {
            q.push(" AND action = ").push_bind(action.as_str());
        }
    }
    if let Some(after) = after {
        q.push(" AND seq > ").push_bind(after);
    }
    q.push(" ORDER BY seq");
    if let Some(limit) = limit {
        q.push(" LIMIT ").push_bind(limit);
    }
    q
}

pub async fn page(
    conn: &mut PgConnection,
    tenant: Uuid,
    filters: &ParsedFilters,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<ChainedEvent>, sqlx::Error> {
    let rows: Vec<EventRow> = select(tenant, filters, after, Some(limit)).build_query_as().fetch_all(conn).await?;
    Ok(rows.into_iter().map(EventRow::into_event).collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Jsonl,
    Csv,
}

/// The last record of every export: what it covers, and signatures that make it verifiable.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Manifest {
    #[schema(example = "tessera-audit-export-v1")]
    pub format: String,
    pub tenant_id: Uuid,
    /// Tenant slug, or `platform`.
    pub scope: String,
    #[schema(value_type = Object)]
    pub filters: serde_json::Value,
    /// True when the export is an unbroken stretch of the chain (only time bounds applied).
    pub contiguous: bool,
    pub count: u64,
    pub first_seq: Option<i64>,
    pub first_hash: Option<String>,
    pub last_seq: Option<i64>,
    pub last_hash: Option<String>,
    /// SHA-256 over the concatenated hashes of the exported events, hex.
    pub events_digest: String,
    pub signed_at: String,
    pub key_id: String,
    /// Ed25519 over the checkpoint statement (tenant, last_seq, last_hash, signed_at), base64.
    pub checkpoint_signature: Option<String>,
    /// Ed25519 over the canonical JSON of this manifest without `signature`, base64.
    pub signature: String,
}

impl Manifest {
    pub fn signed_bytes(&self) -> Vec<u8> {
        super::signing::signed_bytes(self)
    }
}

pub const CSV_HEADER: [&str; 17] = [
    "record", "tenant_id", "seq", "id", "occurred_at", "actor_type", "actor_id", "action", "resource_type", "resource_id",
    "outcome", "client_addr", "user_agent", "request_id", "details", "prev_hash", "hash",
];

/// CSV cannot tell an absent value from an empty one, and the chain can: absent is `\N`, and
/// a value that itself starts with a backslash gets one more. The same backslash neutralises
/// a value a spreadsheet would run as a formula (OWASP CSV injection: a first character of
/// `=`, `+`, `-`, `@`, tab or carriage return): the cell starts with `\` and stays text, and
/// the verifier strips it back to the chained value.
pub fn csv_optional(value: &Option<String>) -> String {
    match value {
        None => "\\N".to_owned(),
        Some(v) if v.starts_with(['\\', '=', '+', '-', '@', '\t', '\r']) => format!("\\{v}"),
        Some(v) => v.clone(),
    }
}

pub fn csv_parse_optional(field: &str) -> Option<String> {
    match field {
        "\\N" => None,
        v if v.starts_with('\\') => Some(v[1..].to_owned()),
        v => Some(v.to_owned()),
    }
}

fn csv_line(fields: &[&str]) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::with_capacity(512));
    writer.write_record(fields).expect("writing to memory cannot fail");
    writer.into_inner().expect("flushing to memory cannot fail")
}

fn event_record(event: &ChainedEvent, format: ExportFormat) -> Vec<u8> {
    match format {
        ExportFormat::Jsonl => {
            let mut value = serde_json::to_value(event).expect("events serialize");
            value["record"] = "event".into();
            let mut line = value.to_string().into_bytes();
            line.push(b'\n');
            line
        }
        ExportFormat::Csv => {
            let tenant = event.tenant_id.to_string();
            let seq = event.seq.to_string();
            let id = event.id.to_string();
            let details = canonical_json(&event.details);
            let optional: Vec<String> = [
                &event.actor_id,
                &event.resource_type,
                &event.resource_id,
                &event.client_addr,
                &event.user_agent,
                &event.request_id,
            ]
            .into_iter()
            .map(csv_optional)
            .collect();
            csv_line(&[
                "event", &tenant, &seq, &id, &event.occurred_at, &event.actor_type, &optional[0], &event.action, &optional[1],
                &optional[2], &event.outcome, &optional[3], &optional[4], &optional[5], &details, &event.prev_hash, &event.hash,
            ])
        }
    }
}

fn manifest_record(manifest: &Manifest, format: ExportFormat) -> Vec<u8> {
    let json = serde_json::to_string(manifest).expect("manifests serialize");
    match format {
        ExportFormat::Jsonl => {
            let mut value: serde_json::Value = serde_json::from_str(&json).expect("round trip");
            value["record"] = "manifest".into();
            let mut line = value.to_string().into_bytes();
            line.push(b'\n');
            line
        }
        ExportFormat::Csv => {
            let mut fields = vec![""; CSV_HEADER.len()];
            fields[0] = "manifest";
            fields[14] = &json;
            csv_line(&fields)
        }
    }
}

pub struct ExportJob {
    pub pool: sqlx::PgPool,
    pub tenant: Uuid,
    pub scope: String,
    pub filters: ParsedFilters,
    pub format: ExportFormat,
    pub notary: super::notary::Notary,
}

const FLUSH_AT: usize = 64 * 1024;

impl ExportJob {
    /// Streams the export. Rows are read from one snapshot and sent in ~64 KiB chunks through
    /// a channel of bounded depth, so a slow client slows the reader instead of filling memory.
    pub fn stream(self) -> impl futures::Stream<Item = Result<Bytes, actix_web::Error>> + 'static {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(8);
        tokio::spawn(async move {
            if let Err(error) = self.run(&sender).await {
                // The response has started; the missing manifest tells the reader it is incomplete.
                tracing::error!(error = ?error, "audit export failed mid-stream");
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(receiver).map(Ok)
    }

    async fn run(self, sender: &tokio::sync::mpsc::Sender<Bytes>) -> Result<(), AuditError> {
        let mut buffer: Vec<u8> = Vec::with_capacity(FLUSH_AT + 4096);
        if self.format == ExportFormat::Csv {
            buffer.extend(csv_line(&CSV_HEADER));
        }
        let mut digest = Sha256::new();
        let (mut count, mut first, mut last) = (0u64, None::<(i64, String)>, None::<(i64, String)>);
        {
            let mut tx = crate::tenancy::db::TenantTx::begin_snapshot(&self.pool, crate::tenancy::TenantId(self.tenant)).await?;
            let mut query = select(self.tenant, &self.filters, None, None);
            let mut rows = query.build_query_as::<EventRow>().fetch(tx.conn());
            while let Some(row) = rows.next().await {
                let event = row?.into_event();
                digest.update(event.hash_bytes().unwrap_or_default());
                count += 1;
                if first.is_none() {
                    first = Some((event.seq, event.hash.clone()));
                }
                last = Some((event.seq, event.hash.clone()));
                buffer.extend(event_record(&event, self.format));
                if buffer.len() >= FLUSH_AT {
                    let chunk = Bytes::from(std::mem::replace(&mut buffer, Vec::with_capacity(FLUSH_AT + 4096)));
                    if sender.send(chunk).await.is_err() {
                        return Ok(()); // the client went away
                    }
                }
            }
        }

        // The last exported event is signed as a checkpoint (row and digest); the manifest
        // carries that signature, so its time is the checkpoint's.
        let (signed_at, checkpoint_signature) = match &last {
            Some((seq, hash)) => {
                let mut tx = self.pool.begin().await?;
                let hash = hex::decode(hash).unwrap_or_default();
                let (signed_at, signature) = self.notary.checkpoint(&mut tx, self.tenant, *seq, &hash, "export").await?;
                tx.commit().await?;
                (signed_at, Some(signature))
            }
            None => (format_time(super::chain::now_micros()), None),
        };
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut manifest = Manifest {
            format: "tessera-audit-export-v1".to_owned(),
            tenant_id: self.tenant,
            scope: self.scope.clone(),
            filters: serde_json::to_value(&self.filters.raw).unwrap_or_default(),
            contiguous: self.filters.raw.contiguous(),
            count,
            first_seq: first.as_ref().map(|f| f.0),
            first_hash: first.map(|f| f.1),
            last_seq: last.as_ref().map(|l| l.0),
            last_hash: last.map(|l| l.1),
            events_digest: hex::encode(digest.finalize()),
            signed_at,
            key_id: self.notary.signer().key_id().to_owned(),
            checkpoint_signature: checkpoint_signature.map(|s| b64.encode(s)),
            signature: String::new(),
        };
        manifest.signature = b64.encode(self.notary.signer().sign(&manifest.signed_bytes()));
        buffer.extend(manifest_record(&manifest, self.format));
        let _ = sender.send(Bytes::from(buffer)).await;
        Ok(())
    }
}
