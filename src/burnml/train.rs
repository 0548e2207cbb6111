use std::ops::ControlFlow;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Tensor, TensorData, activation};

use super::arch::{Architecture, Task};
use super::network::{Model, Network, SeededRng, cpu};

/// Row-major training or evaluation data.
///
/// `targets` holds one class index per row (`0.0 ..= outputs-1`) for classification, and
/// `outputs` values per row for regression.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub features: Vec<f32>,
    pub targets: Vec<f32>,
    pub rows: usize,
    pub columns: usize,
}

#[derive(Debug, Clone)]
pub struct TrainParams {
    pub epochs: u32,
    pub learning_rate: f64,
    pub batch_size: usize,
    /// Fraction of rows held out for validation, in `[0, 0.9]`. With 0, the reported validation
    /// loss and metric are measured on the training rows.
    pub validation_split: f64,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct EpochReport {
    pub epoch: u32,
    pub epochs: u32,
    /// Mean loss over the epoch's training batches (with dropout active).
    pub train_loss: f64,
    pub validation_loss: f64,
    /// `"accuracy"` (classification) or `"rmse"` (regression).
    pub metric_name: &'static str,
    pub metric: f64,
    /// Training rows seen this epoch.
    pub samples: usize,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrainError {
    /// `on_epoch` asked to stop.
    Cancelled,
    Invalid(String),
}

impl std::fmt::Display for TrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainError::Cancelled => write!(f, "training was cancelled"),
            TrainError::Invalid(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for TrainError {}

#[derive(Debug, Clone)]
pub struct Trained {
    pub network: Network,
    pub history: Vec<EpochReport>,
    /// The last epoch's validation metric.
    pub validation_metric: f64,
}

const MAX_EPOCHS: u32 = 10_000;
const MAX_BATCH: usize = 65_536;
const MAX_VALIDATION_SPLIT: f64 = 0.9;
/// Rows per forward pass when evaluating, to bound memory on large datasets.
const EVAL_CHUNK: usize = 4_096;

fn metric_name(task: Task) -> &'static str {
    match task {
        Task::Classification => "accuracy",
        Task::Regression => "rmse",
    }
}

/// Checks `data` against `arch`: sizes, finiteness and class labels.
fn check_data(arch: &Architecture, data: &Dataset) -> Result<(), String> {
    let features = arch.input_features();
    if data.columns != features {
        return Err(format!(
            "dataset has {} columns but the architecture takes {features} input features",
            data.columns
        ));
    }
    let expected = data.rows.checked_mul(data.columns);
    if expected != Some(data.features.len()) {
        return Err(format!(
            "features hold {} values, expected rows * columns = {} * {}",
            data.features.len(),
            data.rows,
            data.columns
        ));
    }
    let per_row = match arch.task() {
        Task::Classification => 1,
        Task::Regression => arch.outputs(),
    };
    if data.rows.checked_mul(per_row) != Some(data.targets.len()) {
        return Err(format!(
            "targets hold {} values, expected {per_row} per row for {} rows",
            data.targets.len(),
            data.rows
        ));
    }
    if let Some(i) = data.features.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "feature at row {} column {} is not a finite number",
            i / data.columns,
            i % data.columns
        ));
    }
    if let Some(i) = data.targets.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "target at row {} is not a finite number",
            i / per_row
        ));
    }
    if arch.task() == Task::Classification {
        let classes = arch.outputs();
        if let Some((row, t)) = data
            .targets
            .iter()
            .enumerate()
            .find(|(_, t)| t.fract() != 0.0 || **t < 0.0 || **t >= classes as f32)
        {
            return Err(format!(
                "target at row {row} is {t}, expected a class index from 0 to {}",
                classes - 1
            ));
        }
    }
    Ok(())
}

impl TrainParams {
    /// The bounds `train` enforces, checkable before any data is read.
    pub fn validate(&self) -> Result<(), String> {
        let params = self;
        if !(1..=MAX_EPOCHS).contains(&params.epochs) {
            return Err(format!(
                "epochs must be between 1 and {MAX_EPOCHS}, got {}",
                params.epochs
            ));
        }
        if !(1..=MAX_BATCH).contains(&params.batch_size) {
            return Err(format!(
                "batch_size must be between 1 and {MAX_BATCH}, got {}",
                params.batch_size
            ));
        }
        if !(params.learning_rate.is_finite() && params.learning_rate > 0.0) {
            return Err(format!(
                "learning_rate must be a finite number above 0, got {}",
                params.learning_rate
            ));
        }
        if !(0.0..=MAX_VALIDATION_SPLIT).contains(&params.validation_split) {
            return Err(format!(
                "validation_split must be between 0 and {MAX_VALIDATION_SPLIT}, got {}",
                params.validation_split
            ));
        }
        Ok(())
    }
}

/// Copies the given rows of `data` into a contiguous batch.
fn gather(data: &[f32], width: usize, rows: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        out.extend_from_slice(&data[r * width..(r + 1) * width]);
    }
    out
}

/// Cross-entropy on logits, or mean squared error; `[1]` tensor on the logits' device.
fn batch_loss(task: Task, output: Tensor<2>, targets: &[f32], rows: &[usize]) -> Tensor<1> {
    let [batch, outputs] = output.dims();
    let device = output.device();
    match task {
        Task::Classification => {
            let mut one_hot = vec![0.0f32; batch * outputs];
            for (i, &r) in rows.iter().enumerate() {
                one_hot[i * outputs + targets[r] as usize] = 1.0;
            }
            let one_hot =
                Tensor::<2>::from_data(TensorData::new(one_hot, [batch, outputs]), &device);
            (activation::log_softmax(output, 1) * one_hot)
                .sum()
                .mul_scalar(-1.0 / batch as f64)
        }
        Task::Regression => {
            let y = gather(targets, outputs, rows);
            let y = Tensor::<2>::from_data(TensorData::new(y, [batch, outputs]), &device);
            let diff = output - y;
            (diff.clone() * diff).mean()
        }
    }
}

/// Raw outputs (logits or values) of a plain-device model for the given rows.
fn raw_outputs(model: &Model, data: &Dataset, rows: &[usize]) -> Vec<f32> {
    let device = cpu();
    let mut out = Vec::new();
    for chunk in rows.chunks(EVAL_CHUNK) {
        let x = gather(&data.features, data.columns, chunk);
        let x = Tensor::<2>::from_data(TensorData::new(x, [chunk.len(), data.columns]), &device);
        let y = model.forward(x, None).into_data();
        out.extend(y.try_into_vec::<f32>().expect("network output is f32"));
    }
    out
}

/// (loss, metric) of raw outputs against the targets of `rows`: cross-entropy and accuracy,
/// or mean squared error and its root.
fn score(task: Task, outputs: usize, raw: &[f32], targets: &[f32], rows: &[usize]) -> (f64, f64) {
    let n = rows.len().max(1) as f64;
    match task {
        Task::Classification => {
            let (mut loss, mut correct) = (0.0f64, 0usize);
            for (logits, &r) in raw.chunks(outputs).zip(rows) {
                let class = targets[r] as usize;
                let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
                let log_sum = logits
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln()
                    + max;
                loss += log_sum - logits[class] as f64;
                if argmax(logits) == class {
                    correct += 1;
                }
            }
            (loss / n, correct as f64 / n)
        }
        Task::Regression => {
            let mut sum = 0.0f64;
            for (values, &r) in raw.chunks(outputs).zip(rows) {
                for (v, y) in values.iter().zip(&targets[r * outputs..(r + 1) * outputs]) {
                    sum += (*v as f64 - *y as f64).powi(2);
                }
            }
            let mse = sum / (n * outputs as f64);
            (mse, mse.sqrt())
        }
    }
}

/// Index of the largest value; the first one on ties.
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// Trains a fresh network of architecture `arch` on `data` with Adam.
///
/// Deterministic for a given `params.seed`: the same inputs give bit-identical weights. Rows are
/// shuffled with the seed and the last `validation_split` of them held out; each epoch then
/// reshuffles the training rows. `on_epoch` sees every epoch's report and can stop the run.
pub fn train(
    arch: &Architecture,
    data: &Dataset,
    params: &TrainParams,
    on_epoch: &mut dyn FnMut(&EpochReport) -> ControlFlow<()>,
) -> Result<Trained, TrainError> {
    arch.validate()
        .map_err(|e| TrainError::Invalid(format!("invalid architecture: {e}")))?;
    params.validate().map_err(TrainError::Invalid)?;
    check_data(arch, data).map_err(TrainError::Invalid)?;

    let held_out = if params.validation_split > 0.0 {
        ((data.rows as f64 * params.validation_split).round() as usize).max(1)
    } else {
        0
    };
    if held_out >= data.rows {
        return Err(TrainError::Invalid(format!(
            "{} rows are not enough to hold out a validation split of {} and still train",
            data.rows, params.validation_split
        )));
    }

    let task = arch.task();
    let outputs = arch.outputs();
    // Kept apart from the initialization stream so that the data order does not depend on the
    // network's size.
    let mut rng = SeededRng::new(params.seed ^ 0x5851_f42d_4c95_7f2d);
    let mut order: Vec<usize> = (0..data.rows).collect();
    rng.shuffle(&mut order);
    let (train_rows, validation_rows) = order.split_at(data.rows - held_out);
    let mut train_rows = train_rows.to_vec();
    let validation_rows = if validation_rows.is_empty() {
        train_rows.clone()
    } else {
        validation_rows.to_vec()
    };

    let device = cpu().autodiff();
    let mut model = Model::init(arch, params.seed, &device);
    let mut optimizer = AdamConfig::new().init();
    let mut history = Vec::with_capacity(params.epochs as usize);

    for epoch in 1..=params.epochs {
        let started = Instant::now();
        rng.shuffle(&mut train_rows);
        let mut loss_sum = 0.0f64;
        for batch in train_rows.chunks(params.batch_size) {
            let x = gather(&data.features, data.columns, batch);
            let x =
                Tensor::<2>::from_data(TensorData::new(x, [batch.len(), data.columns]), &device);
            let output = model.forward(x, Some(&mut rng));
            let loss = batch_loss(task, output, &data.targets, batch);
            loss_sum += loss.clone().into_scalar::<f32>() as f64 * batch.len() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(params.learning_rate, model, grads);
        }
        let train_loss = loss_sum / train_rows.len() as f64;
        if !train_loss.is_finite() {
            return Err(TrainError::Invalid(format!(
                "training diverged at epoch {epoch} (loss is {train_loss}); \
                 try a lower learning_rate or scaled features/targets"
            )));
        }

        let snapshot = model.valid();
        let raw = raw_outputs(&snapshot, data, &validation_rows);
        let (validation_loss, metric) = score(task, outputs, &raw, &data.targets, &validation_rows);

        let report = EpochReport {
            epoch,
            epochs: params.epochs,
            train_loss,
            validation_loss,
            metric_name: metric_name(task),
            metric,
            samples: train_rows.len(),
            seconds: started.elapsed().as_secs_f64(),
        };
        let flow = on_epoch(&report);
        history.push(report);
        if flow.is_break() {
            return Err(TrainError::Cancelled);
        }
    }

    let validation_metric = history.last().map_or(f64::NAN, |r| r.metric);
    Ok(Trained {
        network: Network::from_model(arch, model.valid()),
        history,
        validation_metric,
    })
}

/// The network's metric on `data` (accuracy or RMSE) and its served outputs for every row
/// (`rows * outputs`: probabilities for classification, values for regression).
pub fn evaluate(network: &Network, data: &Dataset) -> Result<(f64, Vec<f32>), String> {
    let arch = network.architecture();
    check_data(arch, data)?;
    let outputs = arch.outputs();
    let rows: Vec<usize> = (0..data.rows).collect();
    let raw = raw_outputs(network.model(), data, &rows);
    let (_, metric) = score(arch.task(), outputs, &raw, &data.targets, &rows);
    let predictions = match arch.task() {
        Task::Regression => raw,
        Task::Classification => {
            let mut probabilities = Vec::with_capacity(raw.len());
            for chunk in rows.chunks(EVAL_CHUNK) {
                let x = gather(&data.features, data.columns, chunk);
                probabilities.extend(network.infer_unchecked(&x, chunk.len()));
            }
            probabilities
        }
    };
    Ok((metric, predictions))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::burnml::arch::{Activation, Conv1dConfig, MlpConfig};
    use crate::burnml::weights::{from_bytes, to_bytes};

    fn uniform(rng: &mut SeededRng, low: f32, high: f32) -> f32 {
        low + (high - low) * rng.next_f64() as f32
    }

    fn gaussian(rng: &mut SeededRng) -> f32 {
        let u1 = 1.0 - rng.next_f64();
        let u2 = rng.next_f64();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// Three unit-variance gaussian blobs in 8-D with centres 3 apart per axis.
    pub(crate) fn blobs(rows: usize, seed: u64) -> Dataset {
        let mut rng = SeededRng::new(seed);
        let centres: Vec<Vec<f32>> = (0..3)
            .map(|_| (0..8).map(|_| uniform(&mut rng, -3.0, 3.0)).collect())
            .collect();
        let (mut features, mut targets) = (Vec::new(), Vec::new());
        for i in 0..rows {
            let class = i % 3;
            for c in &centres[class] {
                features.push(c + gaussian(&mut rng));
            }
            targets.push(class as f32);
        }
        Dataset {
            features,
            targets,
            rows,
            columns: 8,
        }
    }

    pub(crate) fn blob_mlp() -> Architecture {
        Architecture::Mlp(MlpConfig {
            inputs: 8,
            hidden: vec![64, 64],
            outputs: 3,
            activation: Activation::Relu,
            dropout: 0.1,
            task: Task::Classification,
        })
    }

    pub(crate) fn blob_params(epochs: u32) -> TrainParams {
        TrainParams {
            epochs,
            learning_rate: 1e-2,
            batch_size: 32,
            validation_split: 0.2,
            seed: 42,
        }
    }

    fn keep_going(_: &EpochReport) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    #[test]
    fn mlp_learns_blobs_and_round_trips() {
        let data = blobs(1_500, 5);
        let started = Instant::now();
        let trained = train(&blob_mlp(), &data, &blob_params(10), &mut keep_going).unwrap();
        eprintln!(
            "mlp blobs training: {:.3} s, validation accuracy {:.4}",
            started.elapsed().as_secs_f64(),
            trained.validation_metric
        );

        assert_eq!(trained.history.len(), 10);
        assert_eq!(trained.history[0].samples, 1_200);
        assert_eq!(trained.history[0].metric_name, "accuracy");
        assert!(
            trained.validation_metric >= 0.95,
            "accuracy {}",
            trained.validation_metric
        );
        assert!(trained.history[9].train_loss < trained.history[0].train_loss);

        let (accuracy, probabilities) = evaluate(&trained.network, &data).unwrap();
        assert!(accuracy >= 0.95, "accuracy {accuracy}");
        assert_eq!(probabilities.len(), 1_500 * 3);

        let bytes = to_bytes(&trained.network).unwrap();
        let loaded = from_bytes(&blob_mlp(), &bytes).unwrap();
        let before = trained.network.infer(&data.features, data.rows).unwrap();
        assert_eq!(before, probabilities);
        assert_eq!(loaded.infer(&data.features, data.rows).unwrap(), before);
    }

    #[test]
    fn training_is_deterministic() {
        let data = blobs(300, 9);
        let params = TrainParams {
            epochs: 3,
            batch_size: 16,
            ..blob_params(3)
        };
        let a = train(&blob_mlp(), &data, &params, &mut keep_going).unwrap();
        let b = train(&blob_mlp(), &data, &params, &mut keep_going).unwrap();
        // assert! rather than assert_eq!: a failure would print kilobytes of weights
        assert!(to_bytes(&a.network).unwrap() == to_bytes(&b.network).unwrap());
        let losses = |t: &Trained| t.history.iter().map(|r| r.train_loss).collect::<Vec<_>>();
        assert_eq!(losses(&a), losses(&b));

        let other = TrainParams { seed: 43, ..params };
        let c = train(&blob_mlp(), &data, &other, &mut keep_going).unwrap();
        assert!(to_bytes(&a.network).unwrap() != to_bytes(&c.network).unwrap());
    }

    /// Two channels of 32 steps: a noisy sine of random phase and frequency (class 0) or a
    /// noisy ramp of random slope and offset (class 1).
    fn sine_or_ramp(rows: usize, seed: u64) -> Dataset {
        let mut rng = SeededRng::new(seed);
        let (channels, length) = (2, 32);
        let (mut features, mut targets) = (Vec::new(), Vec::new());
        for i in 0..rows {
            let class = i % 2;
            let (a, b) = (uniform(&mut rng, 0.0, 6.3), uniform(&mut rng, 0.2, 0.6));
            for ch in 0..channels {
                let amplitude = 1.0 + ch as f32 * 0.5;
                for t in 0..length {
                    let t = t as f32;
                    let clean = if class == 0 {
                        amplitude * (a + b * t).sin()
                    } else {
                        amplitude * ((t / length as f32) * 2.0 - 1.0) * (b * 4.0) + (a - 3.0) * 0.2
                    };
                    features.push(clean + 0.1 * gaussian(&mut rng));
                }
            }
            targets.push(class as f32);
        }
        Dataset {
            features,
            targets,
            rows,
            columns: channels * length,
        }
    }

    #[test]
    fn conv1d_tells_sine_from_ramp() {
        let arch = Architecture::Conv1d(Conv1dConfig { filters: vec![8, 8], ..crate::burnml::arch::fixtures::conv1d() });
        let data = sine_or_ramp(400, 3);
        let params = TrainParams {
            epochs: 15,
            learning_rate: 1e-2,
            batch_size: 32,
            validation_split: 0.25,
            seed: 1,
        };
        let started = Instant::now();
        let trained = train(&arch, &data, &params, &mut keep_going).unwrap();
        eprintln!(
            "conv1d training: {:.3} s, validation accuracy {:.4}",
            started.elapsed().as_secs_f64(),
            trained.validation_metric
        );

        assert!(
            trained.validation_metric >= 0.9,
            "accuracy {}",
            trained.validation_metric
        );
        let bytes = to_bytes(&trained.network).unwrap();
        let loaded = from_bytes(&arch, &bytes).unwrap();
        assert_eq!(
            loaded.infer(&data.features[..64 * 5], 5).unwrap(),
            trained.network.infer(&data.features[..64 * 5], 5).unwrap()
        );
    }

    #[test]
    fn regression_fits_a_linear_map() {
        let arch = Architecture::Mlp(MlpConfig {
            inputs: 3,
            hidden: vec![16],
            outputs: 2,
            activation: Activation::Tanh,
            dropout: 0.0,
            task: Task::Regression,
        });
        let mut rng = SeededRng::new(4);
        let rows = 400;
        let features: Vec<f32> = (0..rows * 3)
            .map(|_| uniform(&mut rng, -1.0, 1.0))
            .collect();
        let targets: Vec<f32> = features
            .chunks(3)
            .flat_map(|x| [x[0] - 0.5 * x[1], 0.3 * x[2] + 0.2])
            .collect();
        let data = Dataset {
            features,
            targets,
            rows,
            columns: 3,
        };
        let params = TrainParams {
            epochs: 40,
            learning_rate: 1e-2,
            batch_size: 16,
            validation_split: 0.0,
            seed: 2,
        };
        let trained = train(&arch, &data, &params, &mut keep_going).unwrap();
        assert_eq!(trained.history[0].metric_name, "rmse");
        assert!(
            trained.validation_metric < 0.1,
            "rmse {}",
            trained.validation_metric
        );
        let (rmse, values) = evaluate(&trained.network, &data).unwrap();
        assert!((rmse - trained.validation_metric).abs() < 1e-9);
        assert_eq!(values.len(), rows * 2);
    }

    #[test]
    fn on_epoch_can_cancel() {
        let data = blobs(90, 1);
        let mut seen = 0;
        let result = train(
            &blob_mlp(),
            &data,
            &blob_params(5),
            &mut |r: &EpochReport| {
                seen = r.epoch;
                if r.epoch == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        assert_eq!(result.unwrap_err(), TrainError::Cancelled);
        assert_eq!(seen, 2);
    }

    #[test]
    fn divergence_is_reported() {
        let arch = Architecture::Mlp(MlpConfig {
            inputs: 1,
            hidden: vec![8],
            outputs: 1,
            activation: Activation::Relu,
            dropout: 0.0,
            task: Task::Regression,
        });
        let rows = 64;
        let features: Vec<f32> = (0..rows).map(|i| i as f32 * 1e18).collect();
        let targets: Vec<f32> = features.iter().map(|x| x * 1e18).collect();
        let data = Dataset {
            features,
            targets,
            rows,
            columns: 1,
        };
        let params = TrainParams {
            epochs: 5,
            learning_rate: 1e3,
            batch_size: 8,
            validation_split: 0.0,
            seed: 1,
        };
        match train(&arch, &data, &params, &mut keep_going) {
            Err(TrainError::Invalid(msg)) => assert!(msg.contains("diverged"), "{msg}"),
            other => panic!(
                "expected divergence, got {:?}",
                other.map(|t| t.validation_metric)
            ),
        }
    }

    #[test]
    fn invalid_inputs_are_reported() {
        let data = blobs(30, 1);
        let run = |data: &Dataset, params: &TrainParams| match train(
            &blob_mlp(),
            data,
            params,
            &mut keep_going,
        ) {
            Err(TrainError::Invalid(msg)) => msg,
            other => panic!(
                "expected Invalid, got {:?}",
                other.map(|t| t.validation_metric)
            ),
        };
        let p = blob_params(1);
        let refused = [
            (TrainParams { epochs: 0, ..p.clone() }, "epochs"),
            (TrainParams { epochs: 10_001, ..p.clone() }, "epochs"),
            (TrainParams { batch_size: 0, ..p.clone() }, "batch_size"),
            (TrainParams { learning_rate: f64::NAN, ..p.clone() }, "learning_rate"),
            (TrainParams { learning_rate: 0.0, ..p.clone() }, "learning_rate"),
            (TrainParams { validation_split: 0.95, ..p.clone() }, "validation_split"),
        ];
        for (params, field) in &refused {
            assert!(run(&data, params).contains(field), "{field}");
        }

        let mut bad = data.clone();
        bad.targets[7] = 3.0;
        assert!(run(&bad, &p).contains("row 7"));
        bad.targets[7] = 1.5;
        assert!(run(&bad, &p).contains("row 7"));
        let mut bad = data.clone();
        bad.features[8 * 4 + 2] = f32::INFINITY;
        assert!(run(&bad, &p).contains("row 4 column 2"));
        let mut bad = data.clone();
        bad.columns = 7;
        assert!(run(&bad, &p).contains("columns"));
        let tiny = Dataset {
            features: vec![0.0; 8],
            targets: vec![0.0],
            rows: 1,
            columns: 8,
        };
        assert!(run(&tiny, &p).contains("not enough"));
        assert!(evaluate(&Network::init(&blob_mlp(), 1), &bad).is_err());
    }
}
