//! Training jobs: a dataset in, a new encrypted Burn model version out.
//!
//! Training runs on the blocking pool. After each epoch it hands its report to the async side,
//! which records it (one round trip that also reads `cancel_requested`) and answers whether to
//! go on; so cancellation and shutdown take effect at the next epoch boundary.

use std::ops::ControlFlow;

use serde_json::{Value, json};

use super::batch::{load_table, parse_spec};
use super::control::{Control, Decision, Stop};
use super::error::JobError;
use super::model::{JobSpec, JobStatus, TrainJob, column_indices};
use super::service::JobRow;
use crate::audit::AuditEvent;
use crate::burnml::train::{Dataset, EpochReport, TrainError};
use crate::burnml::{self, Task};
use crate::registry::error::RegistryError;
use crate::registry::upload::Author;
use crate::request::RequestInfo;
use crate::tenancy::db::TenantTx;

/// Rows of the dataset whose predictions the job records, so that a client can check the
/// served version against the job's own evaluation; fewer when the model has many outputs,
/// so the job's result stays small.
const SAMPLE_ROWS: usize = 8;
const SAMPLE_VALUES: usize = 256;

fn epoch_json(report: &EpochReport) -> Value {
    json!({
        "epoch": report.epoch,
        "epochs": report.epochs,
        "train_loss": report.train_loss,
        "validation_loss": report.validation_loss,
        report.metric_name: report.metric,
        "samples_per_second": if report.seconds > 0.0 { report.samples as f64 / report.seconds } else { 0.0 },
    })
}

/// Features and targets out of a parsed table, as the architecture expects them.
fn dataset_for(job: &TrainJob, table: &crate::data::csv::CsvTable) -> Result<Dataset, Stop> {
    let target = column_indices(&table.columns, Some(std::slice::from_ref(&job.target)), None)?[0];
    let features = column_indices(&table.columns, job.features.as_deref(), Some(&job.target))?;
    if features.len() != job.architecture.input_features() {
        return Err(Stop::Rejected(format!(
            "the architecture takes {} features; {} columns were selected",
            job.architecture.input_features(),
            features.len()
        )));
    }
    let cells = table.columns.len();
    let rows = table.rows as usize;
    let mut x = Vec::with_capacity(rows * features.len());
    let mut y = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &table.values[r * cells..(r + 1) * cells];
        x.extend(features.iter().map(|c| row[*c]));
        y.push(row[target]);
    }
    Ok(Dataset { features: x, targets: y, rows, columns: features.len() })
}

/// What a finished training run hands to registration.
struct Trained {
    weights: Vec<u8>,
    history: Vec<Value>,
    metric_name: &'static str,
    metric: f64,
    sample: Vec<f32>,
    sample_rows: usize,
    seconds: f64,
    samples_per_second: f64,
}

pub(super) async fn run(control: &Control, row: &JobRow) -> Result<(), Stop> {
    let JobSpec::Train(job) = parse_spec(row)? else { return Err(Stop::Rejected("not a training job".into())) };
    let table = load_table(control, job.dataset).await?;
    let data = dataset_for(&job, &table)?;
    drop(table);
    if control.report(json!({ "stage": "training", "rows": data.rows, "epoch": 0, "epochs": job.params.epochs })).await == Decision::Stop {
        return Err(control.stop_reason().unwrap_or(Stop::Cancelled));
    }

    let (reports, mut received) = tokio::sync::mpsc::channel::<EpochReport>(1);
    let (answer, decisions) = std::sync::mpsc::channel::<Decision>();
    let (architecture, params) = (job.architecture.clone(), job.params.clone());
    let training = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let trained = burnml::train::train(&architecture, &data, &params, &mut |report| {
            if reports.blocking_send(report.clone()).is_err() {
                return ControlFlow::Break(());
            }
            match decisions.recv() {
                Ok(Decision::Continue) => ControlFlow::Continue(()),
                _ => ControlFlow::Break(()),
            }
        })?;
        let seconds = started.elapsed().as_secs_f64();
        let weights = burnml::to_bytes(&trained.network).map_err(TrainError::Invalid)?;
        let sample_rows = data.rows.min(SAMPLE_ROWS).min((SAMPLE_VALUES / architecture.outputs()).max(1));
        let sample = trained.network.infer(&data.features[..sample_rows * data.columns], sample_rows).map_err(TrainError::Invalid)?;
        let last = trained.history.last();
        let samples: usize = trained.history.iter().map(|r| r.samples).sum();
        let train_seconds: f64 = trained.history.iter().map(|r| r.seconds).sum();
        Ok::<_, TrainError>(Trained {
            history: trained.history.iter().map(epoch_json).collect(),
            metric_name: last.map_or("accuracy", |r| r.metric_name),
            metric: trained.validation_metric,
            weights,
            sample,
            sample_rows,
            seconds,
            samples_per_second: if train_seconds > 0.0 { samples as f64 / train_seconds } else { 0.0 },
        })
    });
    while let Some(report) = received.recv().await {
        let decision = control.report(epoch_json(&report)).await;
        let _ = answer.send(decision);
    }
    let trained = match training.await {
        Ok(Ok(trained)) => trained,
        Ok(Err(TrainError::Cancelled)) => return Err(control.stop_reason().unwrap_or(Stop::Cancelled)),
        Ok(Err(TrainError::Invalid(message))) => return Err(Stop::Rejected(message)),
        // A panic in training would panic again on the same data and spec.
        Err(e) if e.is_panic() => return Err(Stop::Rejected("training failed inside Burn".into())),
        Err(e) => return Err(Stop::Failed(format!("training stopped: {e}"))),
    };
    register(control, row, &job, trained).await
}

async fn register(control: &Control, row: &JobRow, job: &TrainJob, trained: Trained) -> Result<(), Stop> {
    let service = &control.service;
    let tenant = control.tenant;
    let sealed = service.registry.seal(tenant, trained.weights).await?;
    let metrics = json!({ trained.metric_name: trained.metric, "samples_per_second": trained.samples_per_second, "seconds": trained.seconds });
    let metadata = json!({
        "job": control.job,
        "dataset": job.dataset,
        "target": job.target,
        "features": job.features,
        "metrics": metrics,
        "params": {
            "epochs": job.params.epochs, "learning_rate": job.params.learning_rate, "batch_size": job.params.batch_size,
            "validation_split": job.params.validation_split, "seed": job.params.seed,
        },
    });
    let author = Author {
        actor: row.submitter(),
        user: (row.submitted_by_kind == "user").then(|| row.submitted_by_id.as_deref().and_then(|id| uuid::Uuid::parse_str(id).ok())).flatten(),
        job: Some(control.job),
    };
    let committed = async {
        let mut tx = TenantTx::begin(&service.pool, tenant).await?;
        if !service.still_mine(&mut tx, control).await? {
            return Ok(None);
        }
        let info = RequestInfo::default();
        let version =
            service.registry.register_trained(&mut tx, &author, &job.model, &sealed, job.architecture.clone(), metadata, &info).await?;
        let outputs = job.architecture.outputs();
        let result = json!({
            "model": job.model.as_str(),
            "version": version.version,
            "model_version_id": version.id,
            "metrics": metrics,
            "history": trained.history,
            "predictions_sample": {
                "rows": trained.sample_rows,
                "outputs": outputs,
                "kind": if job.architecture.task() == Task::Classification { "probabilities" } else { "values" },
                "values": trained.sample,
            },
        });
        service.end(&mut tx, control.job, JobStatus::Succeeded, Some(result), None).await?;
        let event = AuditEvent::new(Some(tenant), row.submitter(), "job.succeeded").resource("job", control.job).details(json!({
            "kind": "train", "model": job.model.as_str(), "version": version.version, "metrics": metrics,
        }));
        service.auditor.record(tx.conn(), &info, vec![event]).await?;
        tx.commit().await?;
        Ok::<_, JobError>(Some(version))
    }
    .await;
    match committed {
        Ok(Some(_)) => {
            service.models.forget(tenant, job.model.as_str());
            Ok(())
        }
        Ok(None) => {
            service.registry.discard(&sealed.object_key).await;
            Err(Stop::Lost)
        }
        Err(e) => {
            service.registry.discard(&sealed.object_key).await;
            // Another attempt registered first: it also finished the job, so this one lost.
            if matches!(e, JobError::Registry(RegistryError::JobAlreadyRegistered(_))) { Err(Stop::Lost) } else { Err(e.into()) }
        }
    }
}
