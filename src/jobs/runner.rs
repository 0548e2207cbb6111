//! Job workers: read the stream, claim the job in Postgres, run it, record the outcome.
//!
//! The claim is a lease in the job's row, renewed with the stream entry's idle time by a
//! heartbeat. Every write a worker makes about a job is conditional on still holding that
//! lease (`worker = me AND status = 'running'`), so a worker presumed dead that wakes up
//! again cannot overwrite what its successor did. A training job's version insert is also
//! unique by job id: whatever happens, a job registers at most one version.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use super::batch;
use super::control::{Control, Stop};
use super::error::JobError;
use super::model::{JobKind, JobStatus};
use super::queue::Delivery;
use super::service::{JOB_COLUMNS, JobRow, JobService, record_event};
use super::train;
use crate::audit::{AuditEvent, Outcome};
use crate::request::RequestInfo;
use crate::tenancy::{TenantId, TenantStatus};
use crate::tenancy::db::TenantTx;

enum Claim {
    Run(Box<JobRow>),
    /// Nothing to do with this entry: acknowledge it.
    Acknowledge,
    /// The job runs elsewhere under a live lease: leave the entry pending, so it is looked at
    /// again if that worker dies.
    Leave,
}

/// `host-pid-n-random`: the random part keeps names unique where hosts or pids repeat
/// (containers run as pid 1, replicas may share a hostname); leases are fenced by this name.
fn consumer_name(n: usize) -> String {
    let host = std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty());
    let nonce = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{}-{}-{n}-{nonce}", host.unwrap_or_else(|| "tessera".into()), std::process::id())
}

impl JobService {
    fn visibility(&self) -> Duration {
        Duration::from_millis(self.settings.visibility_timeout_ms)
    }

    /// Starts `count` workers and a dispatcher on the current runtime. They stop when
    /// `shutdown` turns true; a running job is handed back at its next progress report.
    pub fn start_workers(&self, count: usize, shutdown: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut handles = Vec::new();
        if count == 0 {
            return handles;
        }
        handles.push(tokio::spawn(self.clone().dispatch_loop(shutdown.clone())));
        for n in 0..count {
            handles.push(tokio::spawn(self.clone().work_loop(consumer_name(n), shutdown.clone())));
        }
        handles
    }

    /// Keeps `gauge` at the stream's backlog, read every `jobs.dispatch_interval_ms`, for
    /// autoscalers; a failed read leaves the last value.
    pub fn spawn_backlog_gauge(
        &self,
        gauge: prometheus_client::metrics::gauge::Gauge,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let queue = self.queue.clone();
        let every = Duration::from_millis(self.settings.dispatch_interval_ms);
        tokio::spawn(async move {
            loop {
                match queue.backlog().await {
                    Ok(entries) => {
                        gauge.set(entries);
                    }
                    Err(e) => tracing::debug!(error = %e, "reading the job backlog failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => return,
                }
            }
        })
    }

    /// Adds due jobs that are not in the stream (new while Redis was away, retries after
    /// back-off, jobs whose entry was lost) to it.
    async fn dispatch_loop(self, mut shutdown: watch::Receiver<bool>) {
        let every = Duration::from_millis(self.settings.dispatch_interval_ms);
        loop {
            if let Err(e) = self.dispatch_due().await {
                tracing::warn!(error = ?e, "dispatching due jobs failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    pub async fn dispatch_due(&self) -> Result<usize, JobError> {
        // A queued job's entry waits until a worker is free, however long that is: only one
        // left alone for this long is presumed lost (Redis restarted without its data).
        let queued_after = Duration::from_secs(300);
        // A dead worker's entry is normally taken over (XAUTOCLAIM) as its lease runs out.
        let expired_after = (self.visibility() * 4).max(Duration::from_secs(30));
        let due: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT id, tenant_id FROM jobs_to_dispatch(100, make_interval(secs => $1), make_interval(secs => $2))",
        )
        .bind(queued_after.as_secs_f64())
        .bind(expired_after.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        for (job, tenant) in &due {
            self.queue.enqueue(*job, *tenant).await.map_err(JobError::Queue)?;
        }
        Ok(due.len())
    }

    async fn work_loop(self, name: String, shutdown: watch::Receiver<bool>) {
        let worker: Arc<str> = name.into();
        let mut connection = None;
        while !*shutdown.borrow() {
            if connection.is_none() {
                match async {
                    self.queue.ensure_group().await?;
                    self.queue.dedicated_connection().await
                }
                .await
                {
                    Ok(c) => connection = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "job worker cannot reach Redis; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let conn = connection.as_mut().expect("connected above");
            let next = match self.queue.reclaim(&worker, self.settings.visibility_timeout_ms).await {
                Ok(Some(d)) => Ok(Some(d)),
                Ok(None) => self.queue.next(conn, &worker, 1000).await,
                Err(e) => Err(e),
            };
            match next {
                Ok(Some(delivery)) => self.handle(&worker, delivery, &shutdown).await,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "reading the job stream failed");
                    connection = None;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn handle(&self, worker: &Arc<str>, delivery: Delivery, shutdown: &watch::Receiver<bool>) {
        if delivery.job.is_nil() {
            self.ack(&delivery).await;
            return;
        }
        let tenant = TenantId(delivery.tenant);
        let claim = match self.claim(tenant, delivery.job, worker, &delivery.entry).await {
            Ok(claim) => claim,
            Err(e) => {
                // Left pending: it comes back after the visibility timeout.
                tracing::warn!(job = %delivery.job, error = ?e, "claiming a job failed");
                return;
            }
        };
        let row = match claim {
            Claim::Acknowledge => return self.ack(&delivery).await,
            Claim::Leave => return,
            Claim::Run(row) => row,
        };
        let control = Arc::new(Control::new(self.clone(), tenant, row.id, worker.clone(), shutdown.clone()));
        let heartbeat = tokio::spawn(self.clone().heartbeat(control.clone(), delivery.entry.clone()));
        tracing::info!(job = %row.id, kind = row.kind.as_str(), attempt = row.attempts, worker = &**worker, "job started");
        let outcome = match row.kind {
            JobKind::Train => train::run(&control, &row).await,
            JobKind::BatchInfer => batch::run(&control, &row).await,
        };
        heartbeat.abort();
        let outcome = outcome.map_err(|stop| match (stop, control.stop_reason()) {
            // A failure caused by stopping (e.g. a cancelled training loop) is the stop.
            (Stop::Failed(_) | Stop::Rejected(_), Some(reason)) => reason,
            (stop, _) => stop,
        });
        let acknowledge = match outcome {
            Ok(()) => true,
            Err(Stop::Lost) => false,
            Err(stop) => match self.finish_unsuccessfully(&control, &row, stop).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(job = %row.id, error = ?e, "recording a job's end failed; it will be retried");
                    false
                }
            },
        };
        if acknowledge {
            self.ack(&delivery).await;
        }
    }

    async fn ack(&self, delivery: &Delivery) {
        if let Err(e) = self.queue.ack(&delivery.entry).await {
            tracing::warn!(error = %e, entry = delivery.entry.as_str(), "acknowledging a stream entry failed");
        }
    }

    /// Renews the lease and the entry, and notices cancellation and loss between reports.
    async fn heartbeat(self, control: Arc<Control>, entry: String) {
        let every = self.visibility() / 4;
        loop {
            tokio::time::sleep(every).await;
            let renewed = async {
                let mut tx = TenantTx::begin(&self.pool, control.tenant).await?;
                let cancel: Option<bool> = sqlx::query_scalar(
                    "UPDATE jobs SET lease_until = now() + make_interval(secs => $3) \
                     WHERE id = $1 AND worker = $2 AND status = 'running' RETURNING cancel_requested",
                )
                .bind(control.job)
                .bind(&*control.worker)
                .bind(self.visibility().as_secs_f64())
                .fetch_optional(tx.conn())
                .await?;
                tx.commit().await?;
                Ok::<_, JobError>(cancel)
            }
            .await;
            match renewed {
                Ok(Some(cancel)) => {
                    if cancel {
                        control.cancelled.store(true, Ordering::Relaxed);
                    }
                }
                Ok(None) => control.lost.store(true, Ordering::Relaxed),
                Err(e) => tracing::warn!(job = %control.job, error = ?e, "renewing a job lease failed"),
            }
            if let Err(e) = self.queue.touch(&control.worker, &entry).await {
                tracing::warn!(job = %control.job, error = %e, "touching a stream entry failed");
            }
        }
    }

    async fn tenant_active(tx: &mut TenantTx, tenant: TenantId) -> Result<bool, JobError> {
        let status: Option<TenantStatus> =
            sqlx::query_scalar("SELECT status FROM tenants WHERE id = $1").bind(tenant.0).fetch_optional(tx.conn()).await?;
        Ok(status == Some(TenantStatus::Active))
    }

    /// Leaves a job to the dispatcher, which hands it out again once it may start.
    async fn put_back(mut tx: TenantTx, job: Uuid) -> Result<Claim, JobError> {
        sqlx::query("UPDATE jobs SET dispatched_at = NULL WHERE id = $1").bind(job).execute(tx.conn()).await?;
        tx.commit().await?;
        Ok(Claim::Acknowledge)
    }

    async fn claim(&self, tenant: TenantId, job: Uuid, worker: &str, entry: &str) -> Result<Claim, JobError> {
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let state: Option<(JobStatus, bool, bool, bool, i32, i32, Option<String>)> = sqlx::query_as(
            "SELECT status, COALESCE(lease_until < now(), true), next_attempt_at <= now(), cancel_requested, attempts, max_attempts, \
             stream_entry FROM jobs WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
        )
        .bind(tenant.0)
        .bind(job)
        .fetch_optional(tx.conn())
        .await?;
        let Some((status, expired, due, cancel_requested, attempts, max_attempts, running_entry)) = state else {
            return Ok(Claim::Acknowledge);
        };
        // A suspended tenant's job waits for its resumption, when the dispatcher hands it out
        // again; one that was running when the tenant was suspended runs to its end.
        let startable = status == JobStatus::Queued || (status == JobStatus::Running && expired);
        if startable && !Self::tenant_active(&mut tx, tenant).await? {
            return Self::put_back(tx, job).await;
        }
        let takeover = match status {
            JobStatus::Queued if !due => {
                // Early (a retry still backing off): the dispatcher adds it again when due.
                return Self::put_back(tx, job).await;
            }
            JobStatus::Queued => false,
            // A second entry for a job that runs under another one: a duplicate.
            JobStatus::Running if !expired && running_entry.as_deref() != Some(entry) => return Ok(Claim::Acknowledge),
            JobStatus::Running if !expired => return Ok(Claim::Leave),
            JobStatus::Running => true,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Dead => return Ok(Claim::Acknowledge),
        };
        let row = self.row_in(&mut tx, job).await?;
        let actor = row.submitter();
        if takeover && cancel_requested {
            self.end(&mut tx, job, JobStatus::Cancelled, None, Some("cancelled while its worker was lost")).await?;
            let event = AuditEvent::new(Some(tenant), actor, "job.cancelled").resource("job", job);
            self.auditor.record(tx.conn(), &RequestInfo::default(), vec![event]).await?;
            tx.commit().await?;
            return Ok(Claim::Acknowledge);
        }
        if attempts >= max_attempts {
            // The last attempt never reported back: its worker died with it.
            let reason = format!("attempt {attempts} of {max_attempts} ended with its worker");
            self.end(&mut tx, job, JobStatus::Dead, None, Some(&reason)).await?;
            let event = AuditEvent::new(Some(tenant), actor, "job.dead_lettered")
                .resource("job", job)
                .outcome(Outcome::Failure)
                .details(json!({ "attempts": attempts, "reason": reason }));
            self.auditor.record(tx.conn(), &RequestInfo::default(), vec![event]).await?;
            tx.commit().await?;
            let _ = self.queue.dead_letter(job, tenant.0, &reason).await;
            return Ok(Claim::Acknowledge);
        }
        let sql = format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, worker = $2, stream_entry = $4, \
             lease_until = now() + make_interval(secs => $3), started_at = COALESCE(started_at, now()), error = NULL \
             WHERE id = $1 RETURNING {JOB_COLUMNS}"
        );
        let row: JobRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(job)
            .bind(worker)
            .bind(self.visibility().as_secs_f64())
            .bind(entry)
            .fetch_one(tx.conn())
            .await?;
        record_event(&mut tx, job, "status", json!({ "status": "running", "attempt": row.attempts, "worker": worker, "takeover": takeover }))
            .await?;
        let event = AuditEvent::new(Some(tenant), row.submitter(), "job.started")
            .resource("job", job)
            .details(json!({ "attempt": row.attempts, "worker": worker, "takeover": takeover }));
        self.auditor.record(tx.conn(), &RequestInfo::default(), vec![event]).await?;
        tx.commit().await?;
        Ok(Claim::Run(Box::new(row)))
    }

    async fn row_in(&self, tx: &mut TenantTx, job: Uuid) -> Result<JobRow, JobError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND id = $2");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(tx.tenant().0).bind(job).fetch_one(tx.conn()).await?)
    }

    /// Puts a job in a final state with its status event (the caller holds the row).
    pub(super) async fn end(
        &self,
        tx: &mut TenantTx,
        job: Uuid,
        status: JobStatus,
        result: Option<Value>,
        error: Option<&str>,
    ) -> Result<(), JobError> {
        sqlx::query(
            "UPDATE jobs SET status = $2, result = COALESCE($3, result), error = $4, finished_at = now(), lease_until = NULL WHERE id = $1",
        )
        .bind(job)
        .bind(status)
        .bind(&result)
        .bind(error)
        .execute(tx.conn())
        .await?;
        let mut data = json!({ "status": status.as_str() });
        if let Some(error) = error {
            data["error"] = json!(error);
        }
        record_event(tx, job, "status", data).await
    }

    /// Locks the job if this worker still holds it; `None` when another one took it over.
    pub(super) async fn still_mine(&self, tx: &mut TenantTx, control: &Control) -> Result<bool, JobError> {
        let mine: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE id = $1 AND worker = $2 AND status = 'running' FOR UPDATE")
                .bind(control.job)
                .bind(&*control.worker)
                .fetch_optional(tx.conn())
                .await?;
        Ok(mine.is_some())
    }

    async fn finish_unsuccessfully(&self, control: &Control, row: &JobRow, stop: Stop) -> Result<(), JobError> {
        let mut tx = TenantTx::begin(&self.pool, control.tenant).await?;
        if !self.still_mine(&mut tx, control).await? {
            return Ok(());
        }
        let job = control.job;
        let actor = row.submitter();
        let worker = &*control.worker;
        let (action, outcome, details) = match stop {
            Stop::Lost => return Ok(()),
            Stop::Cancelled => {
                self.end(&mut tx, job, JobStatus::Cancelled, None, None).await?;
                ("job.cancelled", Outcome::Success, json!({ "worker": worker }))
            }
            Stop::ShuttingDown => {
                sqlx::query(
                    "UPDATE jobs SET status = 'queued', attempts = attempts - 1, worker = NULL, lease_until = NULL, \
                     dispatched_at = NULL, next_attempt_at = now() WHERE id = $1",
                )
                .bind(job)
                .execute(tx.conn())
                .await?;
                record_event(&mut tx, job, "status", json!({ "status": "queued", "reason": "worker shutting down" })).await?;
                ("job.handed_back", Outcome::Success, json!({ "worker": worker }))
            }
            Stop::Rejected(reason) => {
                self.end(&mut tx, job, JobStatus::Failed, None, Some(&reason)).await?;
                ("job.failed", Outcome::Failure, json!({ "worker": worker, "reason": reason, "retry": false }))
            }
            Stop::Failed(reason) if row.attempts < row.max_attempts => {
                let backoff = self.backoff(row.attempts as u32);
                sqlx::query(
                    "UPDATE jobs SET status = 'queued', worker = NULL, lease_until = NULL, dispatched_at = NULL, error = $2, \
                     next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1",
                )
                .bind(job)
                .bind(&reason)
                .bind(backoff.as_secs_f64())
                .execute(tx.conn())
                .await?;
                record_event(&mut tx, job, "status", json!({ "status": "queued", "error": reason, "retry_in_ms": backoff.as_millis() as u64 }))
                    .await?;
                ("job.attempt_failed", Outcome::Failure, json!({ "worker": worker, "reason": reason, "attempt": row.attempts }))
            }
            Stop::Failed(reason) => {
                self.end(&mut tx, job, JobStatus::Dead, None, Some(&reason)).await?;
                let _ = self.queue.dead_letter(job, control.tenant.0, &reason).await;
                ("job.dead_lettered", Outcome::Failure, json!({ "worker": worker, "reason": reason, "attempts": row.attempts }))
            }
        };
        let event = AuditEvent::new(Some(control.tenant), actor, action).resource("job", job).outcome(outcome).details(details);
        self.auditor.record(tx.conn(), &RequestInfo::default(), vec![event]).await?;
        tx.commit().await?;
        Ok(())
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.retry_base_backoff_ms;
        let ms = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(20)).min(self.settings.retry_max_backoff_ms);
        Duration::from_millis(ms)
    }
}
