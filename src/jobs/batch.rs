//! Batch inference: every row of a dataset through a model version, on the same worker
//! threads that serve the OIP endpoint, and the predictions stored as an encrypted CSV.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;

use super::control::{Control, Decision, Stop};
use super::error::JobError;
use super::model::{BatchInferJob, JobRequest, JobSpec, JobStatus, column_indices};
use super::service::JobRow;
use crate::audit::AuditEvent;
use crate::data::csv::{CsvScanner, CsvTable};
use crate::request::RequestInfo;
use crate::inference::engine::RunOutput;
use crate::inference::protocol::{DataType, TensorData};
use crate::inference::worker::{Job, WorkError};
use crate::tenancy::db::TenantTx;

/// Rows per trip to the model's workers: big enough to amortise the hop, small enough that
/// interactive requests to the same model interleave.
const CHUNK_ROWS: usize = 256;
/// Progress is reported (and cancellation checked) every this many chunks.
const REPORT_EVERY: usize = 8;

pub(super) fn parse_spec(row: &JobRow) -> Result<JobSpec, Stop> {
    let request: JobRequest = serde_json::from_value(row.spec.clone()).map_err(|e| Stop::Rejected(format!("job spec: {e}")))?;
    request.parse().map_err(Stop::from)
}

/// Decrypts and parses a dataset on the blocking pool.
pub(super) async fn load_table(control: &Control, dataset: uuid::Uuid) -> Result<CsvTable, Stop> {
    let service = &control.service;
    let row = service.data_object(control.tenant, dataset, "dataset").await?;
    let bytes = service.open_data_object(control.tenant, &row).await?;
    tokio::task::spawn_blocking(move || {
        let mut scanner = CsvScanner::collecting();
        scanner.update(&bytes)?;
        scanner.finish()
    })
    .await
    .map_err(|e| Stop::Failed(e.to_string()))?
    .map_err(|e| Stop::Rejected(format!("dataset: {e}")))
}

pub(super) async fn run(control: &Control, row: &JobRow) -> Result<(), Stop> {
    let JobSpec::BatchInfer(job) = parse_spec(row)? else { return Err(Stop::Rejected("not a batch inference job".into())) };
    let service = &control.service;
    let tenant = control.tenant;
    let name = job.model.as_str();
    let version = job.version.as_ref().map(|v| v.to_string());
    let resolved = service.models.resolve(tenant, name, version.as_deref()).await?;
    let model = service.models.get(tenant, name, &resolved, &row.submitter()).await?;

    let [input] = &model.inputs[..] else {
        return Err(Stop::Rejected(format!("batch inference needs a model with one input; `{name}` has {}", model.inputs.len())));
    };
    if input.datatype != DataType::Fp32 {
        return Err(Stop::Rejected(format!("input `{}` is {}; batch inference feeds FP32", input.name, input.datatype.as_str())));
    }
    let row_shape: Vec<usize> = input.shape.iter().skip(1).map(|d| usize::try_from(*d).unwrap_or(0)).collect();
    if input.shape.first() != Some(&-1) || row_shape.contains(&0) {
        return Err(Stop::Rejected(format!("input `{}` must be [-1, fixed sizes...] for batch inference", input.name)));
    }
    let width: usize = row_shape.iter().product();

    let table = load_table(control, job.dataset).await?;
    let columns = column_indices(&table.columns, job.features.as_deref(), None)?;
    if columns.len() != width {
        return Err(Stop::Rejected(format!("the model takes {width} values per row; {} columns were selected", columns.len())));
    }
    let rows = table.rows as usize;
    let cells = table.columns.len();
    let mut header: Option<Vec<String>> = None;
    let mut text = String::new();
    let mut done = 0usize;
    for (n, start) in (0..rows).step_by(CHUNK_ROWS).enumerate() {
        let end = (start + CHUNK_ROWS).min(rows);
        let mut values = Vec::with_capacity((end - start) * width);
        for r in start..end {
            let row_values = &table.values[r * cells..(r + 1) * cells];
            values.extend(columns.iter().map(|c| row_values[*c]));
        }
        let mut shape = vec![end - start];
        shape.extend(&row_shape);
        let outputs = run_chunk(control, &model.pool, shape, values).await?;
        if header.is_none() {
            let names = output_columns(&model.outputs.iter().map(|o| o.name.clone()).collect::<Vec<_>>(), &outputs, end - start);
            text.push_str(&names.join(","));
            text.push('\n');
            header = Some(names);
        }
        write_rows(&mut text, &outputs, end - start).map_err(Stop::Rejected)?;
        done = end;
        // The output is held, encrypted and served whole: it gets the same cap as a dataset.
        let projected = text.len() as u64 / done as u64 * rows as u64;
        if projected > service.settings.max_dataset_bytes {
            return Err(Stop::Rejected(format!(
                "the predictions would take about {projected} bytes, more than the {} bytes an output may have",
                service.settings.max_dataset_bytes
            )));
        }
        if (n + 1) % REPORT_EVERY == 0 && control.report(json!({ "rows_done": done, "rows": rows })).await == Decision::Stop {
            return Err(control.stop_reason().unwrap_or(Stop::Cancelled));
        }
    }
    if control.report(json!({ "rows_done": done, "rows": rows })).await == Decision::Stop {
        return Err(control.stop_reason().unwrap_or(Stop::Cancelled));
    }
    store_output(control, row, &job, header.unwrap_or_default(), rows, text.into_bytes(), resolved.version).await
}

/// How long a chunk may wait for room in the model's queue before the job gives up (the
/// attempt is retried later).
const QUEUE_WAIT: Duration = Duration::from_secs(120);

async fn run_chunk(control: &Control, pool: &crate::inference::worker::WorkerPool, shape: Vec<usize>, values: Vec<f32>) -> Result<Vec<RunOutput>, Stop> {
    let (reply, answer) = oneshot::channel();
    let mut job = Job {
        inputs: vec![(shape, TensorData::Fp32(values))],
        deadline: None,
        batchable: false,
        span: tracing::Span::current(),
        reply,
    };
    // A full queue is the model's backpressure: wait for room rather than fail the job, but
    // not forever (its workers may be gone) and not past a cancellation or shutdown.
    let waiting = std::time::Instant::now();
    while let Err(back) = pool.submit(job) {
        job = back;
        if let Some(stop) = control.stop_reason() {
            return Err(stop);
        }
        if waiting.elapsed() > QUEUE_WAIT {
            return Err(Stop::Failed(format!("the model's queue stayed full for {} s", QUEUE_WAIT.as_secs())));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match answer.await {
        Ok(Ok(outputs)) => Ok(outputs),
        // The same rows would fail the same way again.
        Ok(Err(WorkError::Failed(e))) => Err(Stop::Rejected(format!("the model failed: {e}"))),
        Ok(Err(e)) => Err(Stop::Failed(format!("the model failed: {e:?}"))),
        Err(_) => Err(Stop::Failed("the model's worker stopped".into())),
    }
}

/// `name` for one value per row, `name_0`, `name_1`, ... for several.
fn output_columns(names: &[String], outputs: &[RunOutput], rows: usize) -> Vec<String> {
    let mut columns = Vec::new();
    for (name, output) in names.iter().zip(outputs) {
        let per_row = output.data.len() / rows.max(1);
        if per_row == 1 {
            columns.push(name.clone());
        } else {
            columns.extend((0..per_row).map(|i| format!("{name}_{i}")));
        }
    }
    columns
}

fn write_rows(text: &mut String, outputs: &[RunOutput], rows: usize) -> Result<(), String> {
    for r in 0..rows {
        let mut first = true;
        for output in outputs {
            let per_row = output.data.len() / rows.max(1);
            for i in r * per_row..(r + 1) * per_row {
                if !first {
                    text.push(',');
                }
                first = false;
                match &output.data {
                    TensorData::Fp32(v) => write!(text, "{}", v[i]),
                    TensorData::Fp64(v) => write!(text, "{}", v[i]),
                    TensorData::Int64(v) => write!(text, "{}", v[i]),
                    TensorData::Int32(v) => write!(text, "{}", v[i]),
                    TensorData::Bool(v) => write!(text, "{}", u8::from(v[i])),
                    other => return Err(format!("outputs of type {} cannot be written as CSV", other.datatype().as_str())),
                }
                .expect("writing to a String");
            }
        }
        text.push('\n');
    }
    Ok(())
}

async fn store_output(
    control: &Control,
    row: &JobRow,
    job: &BatchInferJob,
    columns: Vec<String>,
    rows: usize,
    csv: Vec<u8>,
    version: i32,
) -> Result<(), Stop> {
    let service = &control.service;
    let sealed = service.registry.seal(control.tenant, csv).await?;
    let committed = async {
        let mut tx = TenantTx::begin(&service.pool, control.tenant).await?;
        if !service.still_mine(&mut tx, control).await? {
            return Ok(false);
        }
        let table = CsvTable { columns: columns.clone(), rows: rows as u64, values: Vec::new() };
        let name = format!("job-{}-output", control.job);
        let output = service.insert_data_object(&mut tx, "job_output", &name, &sealed, &table, None).await?;
        let result = json!({
            "output": output.id, "rows": rows, "columns": columns, "model": job.model.as_str(), "version": version,
            "size_bytes": output.size_bytes, "sha256": output.sha256,
        });
        service.end(&mut tx, control.job, JobStatus::Succeeded, Some(result), None).await?;
        let event = AuditEvent::new(Some(control.tenant), row.submitter(), "job.succeeded")
            .resource("job", control.job)
            .details(json!({ "kind": "batch_infer", "output": output.id, "rows": rows, "model": job.model.as_str(), "version": version }));
        service.auditor.record(tx.conn(), &RequestInfo::default(), vec![event]).await?;
        tx.commit().await?;
        Ok::<_, JobError>(true)
    }
    .await;
    match committed {
        Ok(true) => Ok(()),
        Ok(false) => {
            service.registry.discard(&sealed.object_key).await;
            Err(Stop::Lost)
        }
        Err(e) => {
            service.registry.discard(&sealed.object_key).await;
            Err(e.into())
        }
    }
}
