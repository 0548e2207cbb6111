//! Datasets and jobs as clients see them: upload, submit (idempotent), list, get, cancel and
//! the event log. What workers do with a job lives in `runner.rs`.

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::error::JobError;
use super::model::{DatasetName, DatasetView, JobKind, JobRequest, JobSpec, JobStatus, JobView, column_indices};
use super::queue::JobQueue;
use crate::page::{Page, PageRequest};
use crate::audit::{AuditActor, AuditEvent, Auditor, Outcome};
use crate::config::JobsSettings;
use crate::data::csv::CsvTable;
use crate::error::ErrorCode;
use crate::identity::Principal;
use crate::inference::models::ModelManager;
use crate::registry::RegistryService;
use crate::registry::model::Framework;
use crate::registry::sealed::SealedRef;
use crate::request::RequestInfo;
use crate::tenancy::TenantId;
use crate::tenancy::db::TenantTx;

#[derive(Clone)]
pub struct JobService {
    pub(super) pool: PgPool,
    pub(super) registry: RegistryService,
    pub(super) models: Arc<ModelManager>,
    pub(super) auditor: Auditor,
    pub(super) queue: JobQueue,
    pub(super) settings: JobsSettings,
}

#[derive(sqlx::FromRow)]
pub(super) struct JobRow {
    pub id: Uuid,
    pub kind: JobKind,
    pub status: JobStatus,
    pub spec: Value,
    pub attempts: i32,
    pub max_attempts: i32,
    pub cancel_requested: bool,
    pub progress: Value,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub submitted_by_kind: String,
    pub submitted_by_id: Option<String>,
    pub created_at: OffsetDateTime,
    pub started_at: Option<OffsetDateTime>,
    pub finished_at: Option<OffsetDateTime>,
}

pub(super) const JOB_COLUMNS: &str = "id, kind, status, spec, attempts, max_attempts, cancel_requested, progress, result, error, \
     submitted_by_kind, submitted_by_id, created_at, started_at, finished_at";

impl JobRow {
    /// Who submitted the job: the actor its effects are recorded under.
    pub fn submitter(&self) -> AuditActor {
        let kind = match self.submitted_by_kind.as_str() {
            "user" => "user",
            "api_key" => "api_key",
            _ => "system",
        };
        AuditActor { kind, id: self.submitted_by_id.as_deref().and_then(|id| Uuid::parse_str(id).ok()) }
    }

    pub fn view(self) -> JobView {
        JobView {
            id: self.id,
            kind: self.kind,
            status: self.status,
            spec: self.spec,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            cancel_requested: self.cancel_requested,
            progress: self.progress,
            result: self.result,
            error: self.error,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct DataObjectRow {
    pub id: Uuid,
    pub name: String,
    pub columns: Vec<String>,
    pub rows: i64,
    pub size_bytes: i64,
    pub stored_bytes: i64,
    pub sha256: Vec<u8>,
    pub object_key: String,
    pub tenant_key_id: Uuid,
    pub wrapped_data_key: Vec<u8>,
    pub created_at: OffsetDateTime,
}

const DATA_OBJECT_COLUMNS: &str =
    "id, name, columns, rows, size_bytes, stored_bytes, sha256, object_key, tenant_key_id, wrapped_data_key, created_at";

impl DataObjectRow {
    pub fn view(&self) -> DatasetView {
        DatasetView {
            id: self.id,
            name: self.name.clone(),
            columns: self.columns.clone(),
            rows: self.rows,
            size_bytes: self.size_bytes,
            sha256: hex::encode(&self.sha256),
            created_at: self.created_at,
        }
    }
}

/// One entry of a job's event log.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobEvent {
    pub id: i64,
    pub kind: String,
    pub data: Value,
}

/// Filters of `GET /v1/tenants/{tenant}/jobs`.
#[derive(Debug, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<JobKind>,
}

pub(super) async fn record_event(tx: &mut TenantTx, job: Uuid, kind: &str, data: Value) -> Result<(), JobError> {
    sqlx::query("INSERT INTO job_events (job_id, tenant_id, kind, data) VALUES ($1, $2, $3, $4)")
        .bind(job)
        .bind(tx.tenant().0)
        .bind(kind)
        .bind(data)
        .execute(tx.conn())
        .await?;
    Ok(())
}

impl JobService {
    pub fn new(
        pool: PgPool,
        registry: RegistryService,
        models: Arc<ModelManager>,
        auditor: Auditor,
        queue: JobQueue,
        settings: JobsSettings,
    ) -> Self {
        Self { pool, registry, models, auditor, queue, settings }
    }

    pub fn settings(&self) -> &JobsSettings {
        &self.settings
    }

    // ---- datasets ----

    /// Streams a CSV body into an encrypted dataset; a malformed file is refused with the
    /// line of its first problem and leaves nothing behind.
    pub async fn upload_dataset<S, E>(
        &self,
        actor: &Principal,
        tenant: TenantId,
        name: &DatasetName,
        body: S,
        declared_len: Option<u64>,
        info: &RequestInfo,
    ) -> Result<DatasetView, JobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let sealed = self.registry.seal_csv(tenant, body, self.settings.max_dataset_bytes, declared_len).await;
        let (sealed, table) = match sealed {
            Ok(done) => done,
            Err(e) => {
                if e.code().status().is_client_error() {
                    let event = AuditEvent::new(Some(tenant), AuditActor::from(actor), "dataset.upload_rejected")
                        .outcome(Outcome::Failure)
                        .details(json!({ "name": name.as_str(), "code": e.code().as_str(), "reason": e.to_string() }));
                    if let Err(audit) = self.auditor.record_alone(&self.pool, info, vec![event]).await {
                        tracing::warn!(error = ?audit, "recording a rejected dataset failed");
                    }
                }
                return Err(e.into());
            }
        };
        let result = async {
            let mut tx = TenantTx::begin(&self.pool, tenant).await?;
            let view = self.insert_data_object(&mut tx, "dataset", name.as_str(), &sealed, &table, actor.user_id()).await?;
            let event = AuditEvent::new(Some(tenant), AuditActor::from(actor), "dataset.uploaded").resource("dataset", view.id).details(
                json!({ "name": name.as_str(), "rows": view.rows, "columns": view.columns.len(), "size_bytes": view.size_bytes, "sha256": view.sha256 }),
            );
            self.auditor.record(tx.conn(), info, vec![event]).await?;
            tx.commit().await?;
            Ok::<_, JobError>(view)
        }
        .await;
        if result.is_err() {
            self.registry.discard(&sealed.object_key).await;
            self.registry.release_room(tenant, sealed.id).await;
        }
        result
    }

    pub(super) async fn insert_data_object(
        &self,
        tx: &mut TenantTx,
        kind: &str,
        name: &str,
        sealed: &crate::registry::sealed::SealedObject,
        table: &CsvTable,
        created_by: Option<Uuid>,
    ) -> Result<DatasetView, JobError> {
        self.registry.reserve(tx, sealed).await?;
        let (tenant_key_id, wrapped) = self.registry.wrap(tx, sealed).await?;
        let sql = format!(
            "INSERT INTO data_objects (id, tenant_id, kind, name, columns, rows, size_bytes, stored_bytes, sha256, object_key, \
             tenant_key_id, wrapped_data_key, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             RETURNING {DATA_OBJECT_COLUMNS}"
        );
        let row: DataObjectRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(sealed.id)
            .bind(tx.tenant().0)
            .bind(kind)
            .bind(name)
            .bind(&table.columns)
            .bind(table.rows as i64)
            .bind(sealed.size as i64)
            .bind(sealed.stored_bytes as i64)
            .bind(&sealed.sha256[..])
            .bind(&sealed.object_key)
            .bind(tenant_key_id)
            .bind(&wrapped)
            .bind(created_by)
            .fetch_one(tx.conn())
            .await?;
        Ok(row.view())
    }

    /// Datasets, newest first (ids are time-ordered).
    pub async fn list_datasets(&self, tenant: TenantId, page: &PageRequest<Uuid>) -> Result<Page<DatasetView>, JobError> {
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let sql = format!(
            "SELECT {DATA_OBJECT_COLUMNS} FROM data_objects WHERE tenant_id = $1 AND kind = 'dataset' \
             AND ($2::uuid IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows: Vec<DataObjectRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(tenant.0).bind(page.after).bind(page.fetch()).fetch_all(tx.conn()).await?;
        tx.commit().await?;
        Ok(page.finish(rows.iter().map(DataObjectRow::view).collect(), |d: &DatasetView| d.id))
    }

    pub(super) async fn data_object(&self, tenant: TenantId, id: Uuid, kind: &str) -> Result<DataObjectRow, JobError> {
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let sql = format!("SELECT {DATA_OBJECT_COLUMNS} FROM data_objects WHERE tenant_id = $1 AND id = $2 AND kind = $3");
        let row: Option<DataObjectRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(tenant.0).bind(id).bind(kind).fetch_optional(tx.conn()).await?;
        tx.commit().await?;
        row.ok_or(JobError::DatasetNotFound(id))
    }

    pub async fn get_dataset(&self, tenant: TenantId, id: Uuid) -> Result<DatasetView, JobError> {
        Ok(self.data_object(tenant, id, "dataset").await?.view())
    }

    /// The plaintext of a dataset or output, verified.
    pub(super) async fn open_data_object(&self, tenant: TenantId, row: &DataObjectRow) -> Result<Vec<u8>, JobError> {
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&row.sha256);
        let sealed = SealedRef {
            id: row.id,
            object_key: &row.object_key,
            stored_bytes: row.stored_bytes as u64,
            size: row.size_bytes as u64,
            sha256,
        };
        Ok(self.registry.open_sealed(tenant, &sealed, row.tenant_key_id, &row.wrapped_data_key).await?)
    }

    // ---- jobs ----

    /// Submits a job. With an idempotency key, a repeat of the same request returns the job
    /// the first one created (`false` = not newly created); a different request reusing the
    /// key is refused.
    pub async fn submit(
        &self,
        actor: &Principal,
        tenant: TenantId,
        request: JobRequest,
        idempotency_key: Option<String>,
        info: &RequestInfo,
    ) -> Result<(JobView, bool), JobError> {
        let spec = request.parse()?;
        let canonical = serde_json::to_vec(&request).map_err(anyhow::Error::new)?;
        let digest: [u8; 32] = Sha256::digest(&canonical).into();
        if let Some(key) = &idempotency_key
            && let Some(existing) = self.by_idempotency_key(tenant, key, &digest).await?
        {
            return Ok((existing, false));
        }
        self.check_references(tenant, &spec).await?;

        let id = Uuid::now_v7();
        let actor_audit = AuditActor::from(actor);
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let sql = format!(
            "INSERT INTO jobs (id, tenant_id, kind, spec, status, idempotency_key, request_digest, max_attempts, dispatched_at, \
             submitted_by_kind, submitted_by_id) VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, now(), $8, $9) \
             ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING {JOB_COLUMNS}"
        );
        let inserted: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(tenant.0)
            .bind(request.kind())
            .bind(serde_json::to_value(&request).map_err(anyhow::Error::new)?)
            .bind(&idempotency_key)
            .bind(&digest[..])
            .bind(self.settings.max_attempts as i32)
            .bind(actor_audit.kind)
            .bind(actor_audit.id.map(|id| id.to_string()))
            .fetch_optional(tx.conn())
            .await?;
        let Some(row) = inserted else {
            // A concurrent submission with the same key won the race.
            drop(tx);
            let key = idempotency_key.as_deref().unwrap_or_default();
            let existing = self.by_idempotency_key(tenant, key, &digest).await?.ok_or(JobError::JobNotFound(id))?;
            return Ok((existing, false));
        };
        record_event(&mut tx, id, "status", json!({ "status": "queued" })).await?;
        let event = AuditEvent::new(Some(tenant), actor_audit, "job.submitted")
            .resource("job", id)
            .details(json!({ "kind": request.kind().as_str(), "dataset": request.dataset(), "idempotency_key": idempotency_key.is_some() }));
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        if let Err(e) = self.queue.enqueue(id, tenant.0).await {
            // The dispatcher adds it later; the job is safe in Postgres either way.
            tracing::warn!(error = %e, job = %id, "adding a job to the stream failed; the dispatcher will retry");
            // The job exists whatever happens here: failing now would invite a duplicate.
            let cleared = async {
                let mut tx = TenantTx::begin(&self.pool, tenant).await?;
                sqlx::query("UPDATE jobs SET dispatched_at = NULL WHERE id = $1").bind(id).execute(tx.conn()).await?;
                tx.commit().await
            }
            .await;
            if let Err(e) = cleared {
                tracing::warn!(error = %e, job = %id, "marking a job for the dispatcher failed; it is re-added within minutes");
            }
        }
        Ok((row.view(), true))
    }

    async fn by_idempotency_key(&self, tenant: TenantId, key: &str, digest: &[u8; 32]) -> Result<Option<JobView>, JobError> {
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT request_digest FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2")
            .bind(tenant.0)
            .bind(key)
            .fetch_optional(tx.conn())
            .await?;
        let Some((stored,)) = row else { return Ok(None) };
        if stored != digest {
            return Err(JobError::IdempotencyKeyReused);
        }
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2");
        let job: JobRow = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(tenant.0).bind(key).fetch_one(tx.conn()).await?;
        tx.commit().await?;
        Ok(Some(job.view()))
    }

    /// The dataset and its columns exist, and so does the model to run (or, for training,
    /// the model to register into is a Burn model if it exists at all).
    async fn check_references(&self, tenant: TenantId, spec: &JobSpec) -> Result<(), JobError> {
        match spec {
            JobSpec::Train(t) => {
                let dataset = self.data_object(tenant, t.dataset, "dataset").await?;
                column_indices(&dataset.columns, Some(std::slice::from_ref(&t.target)), None)?;
                let features = column_indices(&dataset.columns, t.features.as_deref(), Some(&t.target))?;
                if features.len() != t.architecture.input_features() {
                    return Err(JobError::FeaturesMismatch {
                        expected: t.architecture.input_features(),
                        provided: features.len(),
                        columns: features.iter().map(|i| dataset.columns[*i].as_str()).collect::<Vec<_>>().join(", "),
                    });
                }
                match self.registry.framework_of(tenant, &t.model).await? {
                    Some(Framework::Onnx) => Err(JobError::TrainOnnx(t.model.to_string())),
                    Some(Framework::Burn) | None => Ok(()),
                }
            }
            JobSpec::BatchInfer(b) => {
                let dataset = self.data_object(tenant, b.dataset, "dataset").await?;
                column_indices(&dataset.columns, b.features.as_deref(), None)?;
                self.models.resolve(tenant, b.model.as_str(), b.version.as_ref().map(|v| v.to_string()).as_deref()).await?;
                Ok(())
            }
        }
    }

    /// Jobs, newest first (ids are time-ordered).
    pub async fn list(&self, tenant: TenantId, filter: &JobFilter, page: &PageRequest<Uuid>) -> Result<Page<JobView>, JobError> {
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2) \
             AND ($3::text IS NULL OR kind = $3) AND ($4::uuid IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
        );
        let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant.0)
            .bind(filter.status.map(JobStatus::as_str))
            .bind(filter.kind.map(JobKind::as_str))
            .bind(page.after)
            .bind(page.fetch())
            .fetch_all(tx.conn())
            .await?;
        tx.commit().await?;
        Ok(page.finish(rows.into_iter().map(JobRow::view).collect(), |j: &JobView| j.id))
    }

    pub(super) async fn row(&self, tenant: TenantId, id: Uuid) -> Result<JobRow, JobError> {
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND id = $2");
        let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(tenant.0).bind(id).fetch_optional(tx.conn()).await?;
        tx.commit().await?;
        row.ok_or(JobError::JobNotFound(id))
    }

    pub async fn get(&self, tenant: TenantId, id: Uuid) -> Result<JobView, JobError> {
        Ok(self.row(tenant, id).await?.view())
    }

    /// A queued job is cancelled at once; a running one is asked to stop, which its worker
    /// sees at the next epoch (or batch of rows) and honours.
    pub async fn cancel(&self, actor: &Principal, tenant: TenantId, id: Uuid, info: &RequestInfo) -> Result<JobView, JobError> {
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let status: Option<JobStatus> = sqlx::query_scalar("SELECT status FROM jobs WHERE tenant_id = $1 AND id = $2 FOR UPDATE")
            .bind(tenant.0)
            .bind(id)
            .fetch_optional(tx.conn())
            .await?;
        let status = status.ok_or(JobError::JobNotFound(id))?;
        let action = match status {
            JobStatus::Queued => {
                sqlx::query(
                    "UPDATE jobs SET status = 'cancelled', cancel_requested = true, finished_at = now(), lease_until = NULL WHERE id = $1",
                )
                .bind(id)
                .execute(tx.conn())
                .await?;
                record_event(&mut tx, id, "status", json!({ "status": "cancelled" })).await?;
                "job.cancelled"
            }
            JobStatus::Running => {
                sqlx::query("UPDATE jobs SET cancel_requested = true WHERE id = $1").bind(id).execute(tx.conn()).await?;
                record_event(&mut tx, id, "log", json!({ "message": "cancellation requested" })).await?;
                "job.cancel_requested"
            }
            done => return Err(JobError::Finished { id, status: done.as_str() }),
        };
        let event = AuditEvent::new(Some(tenant), AuditActor::from(actor), action).resource("job", id);
        self.auditor.record(tx.conn(), info, vec![event]).await?;
        tx.commit().await?;
        self.get(tenant, id).await
    }

    /// Events after `after`, oldest first, and the job's status now.
    pub async fn events_since(&self, tenant: TenantId, id: Uuid, after: i64) -> Result<(Vec<JobEvent>, JobStatus), JobError> {
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let status: Option<JobStatus> = sqlx::query_scalar("SELECT status FROM jobs WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.0)
            .bind(id)
            .fetch_optional(tx.conn())
            .await?;
        let status = status.ok_or(JobError::JobNotFound(id))?;
        let events: Vec<JobEvent> = sqlx::query_as(
            "SELECT id, kind, data FROM job_events WHERE tenant_id = $1 AND job_id = $2 AND id > $3 ORDER BY id LIMIT 500",
        )
        .bind(tenant.0)
        .bind(id)
        .bind(after)
        .fetch_all(tx.conn())
        .await?;
        tx.commit().await?;
        Ok((events, status))
    }

    /// A finished batch inference job's output, decrypted (audited).
    pub async fn output(&self, actor: &Principal, tenant: TenantId, id: Uuid, info: &RequestInfo) -> Result<Vec<u8>, JobError> {
        let job = self.row(tenant, id).await?;
        let output = job
            .result
            .as_ref()
            .and_then(|r| r.get("output"))
            .and_then(|o| o.as_str())
            .and_then(|o| Uuid::parse_str(o).ok())
            .ok_or(JobError::NoOutput(id))?;
        let row = self.data_object(tenant, output, "job_output").await?;
        let bytes = self.open_data_object(tenant, &row).await?;
        let event = AuditEvent::new(Some(tenant), AuditActor::from(actor), "job.output_downloaded")
            .resource("job", id)
            .details(json!({ "output": output, "rows": row.rows, "size_bytes": row.size_bytes }));
        let mut tx = self.pool.begin().await?;
        self.auditor.record(&mut tx, info, vec![event]).await?;
        tx.commit().await?;
        Ok(bytes)
    }
}
