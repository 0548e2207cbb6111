//! What a running job holds on its own state: progress reports that also say whether to go
//! on, and why a run stops. Workers (`runner`) create it; what a job does (`train`, `batch`)
//! reports through it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use super::error::JobError;
use super::service::{JobService, record_event};
use crate::error::{Code, ErrorCode, INTERNAL_DETAIL};
use crate::tenancy::TenantId;
use crate::tenancy::db::TenantTx;

/// Why a run ended without success.
#[derive(Debug)]
pub enum Stop {
    Cancelled,
    /// Another worker holds the job now: write nothing, acknowledge nothing.
    Lost,
    /// This process is stopping: the job goes back to the queue, not counted as an attempt.
    ShuttingDown,
    /// The job cannot succeed as submitted (bad data, missing model): no retry.
    Rejected(String),
    /// Something that may work next time (storage, database): retried with back-off.
    Failed(String),
}

/// A failure on a job's way: the client's (the submission) is final, anything else may pass.
/// The job records what a client would have been told.
impl<E: ErrorCode> From<E> for Stop {
    fn from(e: E) -> Self {
        let code = e.code();
        if code.status().is_client_error() {
            return Stop::Rejected(e.to_string());
        }
        if code == Code::InternalError {
            tracing::error!(error = %format!("{:#}", anyhow::Error::new(e)), "a job step failed");
            return Stop::Failed(INTERNAL_DETAIL.to_owned());
        }
        Stop::Failed(e.to_string())
    }
}

/// What a running job learns when it reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Stop,
}

/// A running job's handle on its own state: progress reports, and the verdict to stop.
pub struct Control {
    pub(super) service: JobService,
    pub(super) tenant: TenantId,
    pub(super) job: Uuid,
    pub(super) worker: Arc<str>,
    pub(super) cancelled: AtomicBool,
    pub(super) lost: AtomicBool,
    shutdown: watch::Receiver<bool>,
}

impl Control {
    pub(super) fn new(service: JobService, tenant: TenantId, job: Uuid, worker: Arc<str>, shutdown: watch::Receiver<bool>) -> Self {
        Self { service, tenant, job, worker, cancelled: AtomicBool::new(false), lost: AtomicBool::new(false), shutdown }
    }

    /// Records progress (also the job's current `progress`) and says whether to go on.
    pub async fn report(&self, data: Value) -> Decision {
        match self.write_progress(data).await {
            Ok(Some(cancel)) if cancel => self.cancelled.store(true, Ordering::Relaxed),
            Ok(Some(_)) => {}
            Ok(None) => self.lost.store(true, Ordering::Relaxed),
            Err(e) => tracing::warn!(job = %self.job, error = ?e, "recording progress failed"),
        }
        if self.stop_reason().is_some() { Decision::Stop } else { Decision::Continue }
    }

    async fn write_progress(&self, data: Value) -> Result<Option<bool>, JobError> {
        let mut tx = TenantTx::begin(&self.service.pool, self.tenant).await?;
        let cancel: Option<bool> = sqlx::query_scalar(
            "UPDATE jobs SET progress = $3 WHERE id = $1 AND worker = $2 AND status = 'running' RETURNING cancel_requested",
        )
        .bind(self.job)
        .bind(&*self.worker)
        .bind(&data)
        .fetch_optional(tx.conn())
        .await?;
        if cancel.is_some() {
            record_event(&mut tx, self.job, "progress", data).await?;
        }
        tx.commit().await?;
        Ok(cancel)
    }

    /// Why the job should stop now, if it should.
    pub fn stop_reason(&self) -> Option<Stop> {
        if self.lost.load(Ordering::Relaxed) {
            Some(Stop::Lost)
        } else if self.cancelled.load(Ordering::Relaxed) {
            Some(Stop::Cancelled)
        } else if *self.shutdown.borrow() {
            Some(Stop::ShuttingDown)
        } else {
            None
        }
    }
}

