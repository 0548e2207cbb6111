//! Burn beside ONNX Runtime, in process, in one run:
//!
//! 1. Inference of the same MLP shape (256 → 1024 → 1024 → 10, ReLU, softmax) through the two
//!    engines Tessera's workers run: `BurnEngine` (Burn, `flex` CPU backend) and `OnnxEngine`
//!    (ONNX Runtime, one intra-op thread), batch 1 and 8; median µs per call.
//! 2. Training throughput (samples per second) of the job runner's trainer: that MLP, a small
//!    MLP (4 → 16 → 3) and a 1-D convolutional network, on synthetic separable data.
//!
//!     BENCH_MLP_ONNX=path/to/mlp.onnx cargo bench --bench burn
//!
//! `deploy/local/bench-burn.sh` runs this beside the same models served over OIP.

use std::ops::ControlFlow;
use std::time::Instant;

use tessera::burnml::{Architecture, Network, train};
use tessera::inference::engine::{BurnEngine, Engine, OnnxEngine, OnnxRuntime, RunInput};
use tessera::inference::protocol::{DataType, TensorData};

fn architecture(json: serde_json::Value) -> Architecture {
    serde_json::from_value(json).expect("a valid architecture")
}

fn median_us(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Median µs per `run` over `rounds` rounds of `calls` calls each.
fn time_engine(engine: &mut dyn Engine, batch: usize, features: usize) -> f64 {
    let shape = [batch, features];
    let data = TensorData::Fp32((0..batch * features).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect());
    let input = [RunInput { shape: &shape, data: &data }];
    for _ in 0..50 {
        engine.run(&input).expect("warm-up run");
    }
    let (rounds, calls) = (15, 100);
    let mut per_call = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..calls {
            engine.run(&input).expect("run");
        }
        per_call.push(started.elapsed().as_secs_f64() * 1e6 / calls as f64);
    }
    median_us(per_call)
}

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / ((1u64 << 24) as f32)
    }

    fn normal(&mut self) -> f32 {
        (0..6).map(|_| self.uniform()).sum::<f32>() - 3.0
    }
}

/// `classes` blobs in `features` dimensions, `rows` rows.
fn blobs(rows: usize, features: usize, classes: usize, seed: u64) -> train::Dataset {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..classes).map(|_| (0..features).map(|_| 3.0 * rng.normal()).collect()).collect();
    let mut x = Vec::with_capacity(rows * features);
    let mut y = Vec::with_capacity(rows);
    for i in 0..rows {
        let class = i % classes;
        x.extend(centres[class].iter().map(|m| m + rng.normal()));
        y.push(class as f32);
    }
    train::Dataset { features: x, targets: y, rows, columns: features }
}

fn training_throughput(label: &str, arch: &Architecture, data: &train::Dataset, epochs: u32, batch_size: usize) {
    let params = train::TrainParams { epochs, learning_rate: 1e-3, batch_size, validation_split: 0.2, seed: 1 };
    let trained = train::train(arch, data, &params, &mut |_| ControlFlow::Continue(())).expect("training runs");
    let samples: usize = trained.history.iter().map(|r| r.samples).sum();
    let seconds: f64 = trained.history.iter().map(|r| r.seconds).sum();
    println!(
        "| {label} | {} rows × {epochs} epochs, batch {batch_size} | {:.0} | {:.3} |",
        data.rows,
        samples as f64 / seconds,
        trained.validation_metric
    );
}

fn main() {
    let mlp = architecture(serde_json::json!({ "architecture": "mlp", "config": { "inputs": 256, "hidden": [1024, 1024], "outputs": 10 } }));
    let mut burn = BurnEngine::new(Network::init(&mlp, 1));

    println!("## In-process inference, MLP 256-1024-1024-10 (median µs per call)\n");
    println!("| batch | Burn (flex) µs | ONNX Runtime µs | Burn ÷ ORT |");
    println!("|---:|---:|---:|---:|");
    let onnx = std::env::var("BENCH_MLP_ONNX").ok().map(|path| {
        let runtime = OnnxRuntime::load(None).expect("ONNX Runtime loads (ORT_DYLIB_PATH)");
        let bytes = std::fs::read(&path).expect("the ONNX MLP is readable");
        let session = runtime.session(&bytes, 1).expect("the ONNX MLP loads");
        OnnxEngine::new(session, vec!["x".into()], vec![("probs".into(), DataType::Fp32)])
    });
    let mut onnx = onnx;
    for batch in [1, 8] {
        let burn_us = time_engine(&mut burn, batch, 256);
        match onnx.as_mut() {
            Some(ort) => {
                let ort_us = time_engine(ort, batch, 256);
                println!("| {batch} | {burn_us:.1} | {ort_us:.1} | {:.2}x |", burn_us / ort_us);
            }
            None => println!("| {batch} | {burn_us:.1} | (set BENCH_MLP_ONNX) | |"),
        }
    }

    println!("\n## Training throughput (Burn autodiff on flex, Adam)\n");
    println!("| network | data | samples/s | validation accuracy |");
    println!("|---|---|---:|---:|");
    let small = architecture(serde_json::json!({ "architecture": "mlp", "config": { "inputs": 4, "hidden": [16], "outputs": 3 } }));
    training_throughput("MLP 4-16-3", &small, &blobs(20_000, 4, 3, 3), 3, 64);
    training_throughput("MLP 256-1024-1024-10", &mlp, &blobs(4_000, 256, 10, 5), 1, 64);
    let conv = architecture(serde_json::json!({
        "architecture": "conv1d",
        "config": { "channels": 1, "length": 64, "filters": [16, 16], "kernel_size": 5, "outputs": 3 }
    }));
    training_throughput("Conv1d 1×64, 16-16 filters k5", &conv, &blobs(4_000, 64, 3, 7), 2, 64);
}
