//! What a job is, as clients submit and see it. Specs parse into types that are valid by
//! construction; anything else is a 400 naming the field before a job row exists.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::JobError;
use crate::burnml::Architecture;
use crate::burnml::train::TrainParams;
use crate::data::csv::MAX_COLUMNS;
use crate::registry::model::{ModelName, VersionRef, is_plain_name};

crate::text_enum! {
    #[derive(Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum JobKind {
        Train => "train",
        BatchInfer => "batch_infer",
    }
}

crate::text_enum! {
    #[derive(Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum JobStatus {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        /// Failed on every allowed attempt: kept for inspection, never retried.
        Dead => "dead",
    }
}

impl JobStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

/// A dataset's name: spelled like a model's name (1-128 of `A-Za-z0-9._-`, starting with a
/// letter or digit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DatasetName(String);

impl DatasetName {
    pub fn parse(value: &str) -> Result<Self, JobError> {
        if is_plain_name(value) { Ok(Self(value.to_owned())) } else { Err(JobError::InvalidDatasetName) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A job as submitted: `POST /v1/tenants/{tenant}/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobRequest {
    /// Train a Burn model on a dataset and register the result as a new version.
    Train(TrainRequest),
    /// Run a model version over every row of a dataset; the predictions become a CSV output.
    BatchInfer(BatchInferRequest),
}

// Documented by hand: derived, each kind would be its request's schema (which admits no
// other property) joined with `kind` by `allOf`, a combination no body satisfies. Here each
// kind is one object that holds its `kind`, and `kind` tells them apart.
impl utoipa::PartialSchema for JobRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::{Discriminator, ObjectBuilder, OneOfBuilder, Schema, Type};
        fn tagged(kind: &str, description: &str, request: RefOr<Schema>) -> Schema {
            let RefOr::T(Schema::Object(mut object)) = request else {
                unreachable!("a job request derives an inline object schema")
            };
            let tag = ObjectBuilder::new().schema_type(Type::String).enum_values(Some([kind]));
            object.properties.insert("kind".to_owned(), tag.into());
            object.required.insert(0, "kind".to_owned());
            object.description = Some(description.to_owned());
            Schema::Object(object)
        }
        OneOfBuilder::new()
            .item(tagged(
                JobKind::Train.as_str(),
                "Train a Burn model on a dataset and register the result as a new version.",
                <TrainRequest as utoipa::PartialSchema>::schema(),
            ))
            .item(tagged(
                JobKind::BatchInfer.as_str(),
                "Run a model version over every row of a dataset; the predictions become a CSV output.",
                <BatchInferRequest as utoipa::PartialSchema>::schema(),
            ))
            .discriminator(Some(Discriminator::new("kind")))
            .description(Some("A job as submitted: `POST /v1/tenants/{tenant}/jobs`."))
            .into()
    }
}

impl ToSchema for JobRequest {
    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        <TrainRequest as ToSchema>::schemas(schemas);
        <BatchInferRequest as ToSchema>::schemas(schemas);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    /// The model the trained weights become a version of; created (framework `burn`) if it
    /// does not exist.
    #[schema(example = "churn-mlp", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub model: String,
    /// `mlp` or `conv1d`.
    #[schema(example = "mlp", pattern = "^(mlp|conv1d)$")]
    pub architecture: String,
    /// The architecture's configuration (layer sizes, activation, dropout, task).
    #[schema(value_type = Object, example = json!({"inputs": 8, "hidden": [32, 32], "outputs": 3}))]
    pub config: Value,
    /// A dataset id (`POST /v1/tenants/{tenant}/datasets`).
    pub dataset: Uuid,
    /// The column to predict: class indices 0..outputs-1 (classification) or values (regression).
    #[schema(example = "label")]
    pub target: String,
    /// Feature columns, in the order the model sees them (default: every other column).
    #[serde(default)]
    #[schema(schema_with = feature_columns)]
    pub features: Option<Vec<String>>,
    #[serde(default = "default_epochs")]
    #[schema(minimum = 1, maximum = 10000)]
    pub epochs: u32,
    #[serde(default = "default_learning_rate")]
    #[schema(exclusive_minimum = 0.0)]
    pub learning_rate: f64,
    #[serde(default = "default_batch_size")]
    #[schema(minimum = 1, maximum = 65536)]
    pub batch_size: usize,
    #[serde(default = "default_validation_split")]
    #[schema(minimum = 0.0, maximum = 0.9)]
    pub validation_split: f64,
    #[serde(default)]
    pub seed: u64,
}

/// Distinct column names, at least one.
fn feature_columns() -> utoipa::openapi::Array {
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, schema::Type};
    ArrayBuilder::new()
        .items(ObjectBuilder::new().schema_type(Type::String))
        .min_items(Some(1))
        .unique_items(true)
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([Type::Array, Type::Null]))
        .build()
}

fn default_epochs() -> u32 {
    10
}
fn default_learning_rate() -> f64 {
    1e-3
}
fn default_batch_size() -> usize {
    32
}
fn default_validation_split() -> f64 {
    0.2
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchInferRequest {
    #[schema(example = "churn-mlp", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    pub model: String,
    /// A version number or alias (default: the latest version).
    #[serde(default)]
    #[schema(example = "production", pattern = "^(0*[1-9][0-9]{0,8}|[a-z][a-z0-9_-]{0,62})$")]
    pub version: Option<String>,
    pub dataset: Uuid,
    /// Input columns, in the model's input order (default: every column).
    #[serde(default)]
    #[schema(schema_with = feature_columns)]
    pub features: Option<Vec<String>>,
}

/// A training request after parsing: what a worker runs.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub model: ModelName,
    pub architecture: Architecture,
    pub dataset: Uuid,
    pub target: String,
    pub features: Option<Vec<String>>,
    pub params: TrainParams,
}

#[derive(Debug, Clone)]
pub struct BatchInferJob {
    pub model: ModelName,
    pub version: Option<VersionRef>,
    pub dataset: Uuid,
    pub features: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub enum JobSpec {
    Train(TrainJob),
    BatchInfer(BatchInferJob),
}

impl JobRequest {
    pub fn kind(&self) -> JobKind {
        match self {
            JobRequest::Train(_) => JobKind::Train,
            JobRequest::BatchInfer(_) => JobKind::BatchInfer,
        }
    }

    pub fn dataset(&self) -> Uuid {
        match self {
            JobRequest::Train(t) => t.dataset,
            JobRequest::BatchInfer(b) => b.dataset,
        }
    }

    /// Parses everything that can be checked without the dataset.
    pub fn parse(&self) -> Result<JobSpec, JobError> {
        match self {
            JobRequest::Train(t) => {
                let architecture: Architecture =
                    serde_json::from_value(serde_json::json!({ "architecture": t.architecture, "config": t.config })).map_err(|e| {
                        JobError::InvalidArchitecture { architecture: t.architecture.clone(), reason: e.to_string() }
                    })?;
                architecture.validate().map_err(JobError::InvalidConfig)?;
                let params = TrainParams {
                    epochs: t.epochs,
                    learning_rate: t.learning_rate,
                    batch_size: t.batch_size,
                    validation_split: t.validation_split,
                    seed: t.seed,
                };
                params.validate().map_err(JobError::InvalidParams)?;
                check_columns(t.features.as_deref())?;
                if t.features.as_ref().is_some_and(|f| f.contains(&t.target)) {
                    return Err(JobError::TargetIsFeature(t.target.clone()));
                }
                Ok(JobSpec::Train(TrainJob {
                    model: ModelName::parse(&t.model)?,
                    architecture,
                    dataset: t.dataset,
                    target: t.target.clone(),
                    features: t.features.clone(),
                    params,
                }))
            }
            JobRequest::BatchInfer(b) => {
                check_columns(b.features.as_deref())?;
                Ok(JobSpec::BatchInfer(BatchInferJob {
                    model: ModelName::parse(&b.model)?,
                    version: b.version.as_deref().map(VersionRef::parse).transpose()?,
                    dataset: b.dataset,
                    features: b.features.clone(),
                }))
            }
        }
    }
}

/// Runs on the request's thread: linear in the names, of which there are no more than a
/// dataset can have columns.
fn check_columns(columns: Option<&[String]>) -> Result<(), JobError> {
    let Some(columns) = columns else { return Ok(()) };
    if columns.is_empty() {
        return Err(JobError::NoFeatures);
    }
    if columns.len() > MAX_COLUMNS {
        return Err(JobError::TooManyFeatures(MAX_COLUMNS));
    }
    let mut seen = HashSet::with_capacity(columns.len());
    match columns.iter().find(|c| !seen.insert(c.as_str())) {
        Some(twice) => Err(JobError::DuplicateFeature(twice.clone())),
        None => Ok(()),
    }
}

/// Picks feature columns (and the target, for training) out of a table's header.
pub fn column_indices(header: &[String], wanted: Option<&[String]>, exclude: Option<&str>) -> Result<Vec<usize>, JobError> {
    match wanted {
        Some(names) => names
            .iter()
            .map(|n| header.iter().position(|h| h == n).ok_or_else(|| JobError::NoSuchColumn(n.clone())))
            .collect(),
        None => Ok((0..header.len()).filter(|i| Some(header[*i].as_str()) != exclude).collect()),
    }
}

/// A job as clients see it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub kind: JobKind,
    pub status: JobStatus,
    /// The request as submitted.
    #[schema(value_type = Object)]
    pub spec: Value,
    pub attempts: i32,
    pub max_attempts: i32,
    pub cancel_requested: bool,
    /// The latest progress report (epoch, loss, metric, rows done).
    #[schema(value_type = Object)]
    pub progress: Value,
    /// Training: the registered model version and its metrics. Batch inference: the output.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    pub error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// An uploaded dataset or a job's output.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DatasetView {
    pub id: Uuid,
    pub name: String,
    pub columns: Vec<String>,
    pub rows: i64,
    pub size_bytes: i64,
    pub sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(extra: Value) -> Result<JobSpec, String> {
        let mut body = serde_json::json!({
            "kind": "train", "model": "m", "architecture": "mlp",
            "config": {"inputs": 2, "hidden": [4], "outputs": 2},
            "dataset": Uuid::nil(), "target": "y"
        });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value::<JobRequest>(body).map_err(|e| e.to_string())?.parse().map_err(|e| e.to_string())
    }

    #[test]
    fn a_minimal_training_request_gets_defaults() {
        let JobSpec::Train(job) = train(serde_json::json!({})).unwrap() else { panic!() };
        assert_eq!((job.params.epochs, job.params.batch_size), (10, 32));
    }

    #[test]
    fn bad_requests_name_what_is_wrong() {
        for (extra, needle) in [
            (serde_json::json!({"epochs": 0}), "epochs"),
            (serde_json::json!({"learning_rate": -1.0}), "learning_rate"),
            (serde_json::json!({"architecture": "transformer"}), "transformer"),
            (serde_json::json!({"config": {"inputs": 2, "hidden": [4], "outputs": 2, "colour": 1}}), "colour"),
            (serde_json::json!({"features": ["y"]}), "target"),
            (serde_json::json!({"features": ["a", "b", "a"]}), "`a` is listed twice"),
            (serde_json::json!({"features": []}), "at least one"),
            (serde_json::json!({"model": "no spaces"}), "name"),
            (serde_json::json!({"unknown": 1}), "unknown"),
        ] {
            let err = train(extra.clone()).unwrap_err();
            assert!(err.contains(needle), "{extra}: {err}");
        }
    }

    #[test]
    fn more_features_than_a_dataset_has_columns_are_refused_at_once() {
        // Within the body limit, and quadratic to compare pairwise: refused by their number.
        let names: Vec<String> = (0..200_000).map(|i| format!("c{i}")).collect();
        let started = std::time::Instant::now();
        let err = train(serde_json::json!({ "features": names })).unwrap_err();
        assert!(err.contains("at most 4096"), "{err}");
        let mut names: Vec<String> = (0..MAX_COLUMNS).map(|i| format!("c{i}")).collect();
        assert!(train(serde_json::json!({ "features": names })).is_ok());
        names[MAX_COLUMNS - 1] = "c0".to_owned();
        assert!(train(serde_json::json!({ "features": names })).unwrap_err().contains("`c0` is listed twice"));
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    }

    #[test]
    fn columns_resolve_against_the_header() {
        let header: Vec<String> = ["a", "b", "y"].map(String::from).to_vec();
        assert_eq!(column_indices(&header, None, Some("y")).unwrap(), [0, 1]);
        assert_eq!(column_indices(&header, Some(&["b".into(), "a".into()]), None).unwrap(), [1, 0]);
        assert!(column_indices(&header, Some(&["c".into()]), None).unwrap_err().to_string().contains("`c`"));
    }
}
