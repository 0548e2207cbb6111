use burn::module::{Module, Param, ParamId};
use burn::nn::conv::Conv1d;
use burn::nn::{Linear, PaddingConfig1d};
use burn::tensor::{Device, Tensor, TensorData, activation};

use super::arch::{Activation, Architecture, Task};

/// Layout facts the forward pass needs that are not parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub activation: Activation,
    pub dropout: f64,
    /// `(channels, length)` for a convolutional network.
    pub conv: Option<(usize, usize)>,
}

/// One module type serves both architectures (an MLP has no `convs`, a conv net no `hidden`),
/// so weight paths are `convs.N.*`, `hidden.N.*` and `head.*` and a record of one kind never
/// loads into the other.
#[derive(Module, Debug)]
pub(crate) struct Model {
    pub convs: Vec<Conv1d>,
    pub hidden: Vec<Linear>,
    pub head: Linear,
    #[module(skip)]
    pub spec: Spec,
}

fn activate<const D: usize>(activation: Activation, x: Tensor<D>) -> Tensor<D> {
    match activation {
        Activation::Relu => activation::relu(x),
        Activation::Gelu => activation::gelu(x),
        Activation::Tanh => activation::tanh(x),
        Activation::Sigmoid => activation::sigmoid(x),
    }
}

/// SplitMix64 (Steele, Lea and Flood, 2014), the source of all randomness here.
///
/// Not `rand`'s `StdRng`: its algorithm may change between `rand` releases, which would quietly
/// change what a seed produces, and its generic code, compiled into this crate, is slow without
/// optimization (the default `dev` profile), where it dominated small training runs.
#[derive(Debug, Clone)]
pub(crate) struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        SeededRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` for `n > 0`, by multiply-shift (bias at most n / 2^64).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Dropout drawn from the caller's RNG instead of the backend's process-wide one, so that
/// concurrent trainings stay independent and each stays reproducible from its seed.
fn dropout<const D: usize>(x: Tensor<D>, prob: f64, rng: Option<&mut SeededRng>) -> Tensor<D> {
    let Some(rng) = rng else { return x };
    if prob <= 0.0 {
        return x;
    }
    let shape = x.shape();
    let scale = (1.0 / (1.0 - prob)) as f32;
    let mask: Vec<f32> = (0..shape.num_elements())
        .map(|_| if rng.next_f64() < prob { 0.0 } else { scale })
        .collect();
    let mask = Tensor::<D>::from_data(TensorData::new(mask, shape), &x.device());
    x * mask
}

impl Model {
    /// `[batch, features]` to `[batch, outputs]`; dropout is applied only when `rng` is given.
    pub fn forward(&self, x: Tensor<2>, mut rng: Option<&mut SeededRng>) -> Tensor<2> {
        let spec = self.spec;
        let x = match spec.conv {
            None => {
                let mut x = x;
                for layer in &self.hidden {
                    x = activate(spec.activation, layer.forward(x));
                    x = dropout(x, spec.dropout, rng.as_deref_mut());
                }
                x
            }
            Some((channels, length)) => {
                let [batch, _] = x.dims();
                let mut x: Tensor<3> = x.reshape([batch, channels, length]);
                for conv in &self.convs {
                    x = activate(spec.activation, conv.forward(x));
                    x = dropout(x, spec.dropout, rng.as_deref_mut());
                }
                let [batch, filters, _] = x.dims();
                x.mean_dim(2).reshape([batch, filters])
            }
        };
        self.head.forward(x)
    }
}

/// Where initial weight values come from.
enum Source {
    /// PyTorch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases, drawn
    /// from our own seeded RNG: the backend's RNG is one process-wide global, which concurrent
    /// trainings would race on.
    Seeded(SeededRng),
    /// For a module whose values are about to be overwritten by loaded weights.
    Zeros,
}

struct Fill {
    source: Source,
    /// Parameter ids are numbered in build order rather than drawn at random (Burn's default),
    /// so that equal weights always serialize to equal bytes.
    next_id: u64,
}

impl Fill {
    fn param<const D: usize>(
        &mut self,
        shape: [usize; D],
        fan_in: usize,
        device: &Device,
    ) -> Param<Tensor<D>> {
        let n = shape.iter().product();
        let values = match &mut self.source {
            Source::Seeded(rng) => {
                let bound = 1.0 / (fan_in as f64).sqrt();
                (0..n)
                    .map(|_| ((2.0 * rng.next_f64() - 1.0) * bound) as f32)
                    .collect()
            }
            Source::Zeros => vec![0.0; n],
        };
        let mut param = Param::from_data(TensorData::new(values, shape), device);
        param.id = ParamId::from(self.next_id);
        self.next_id += 1;
        param
    }

    fn linear(&mut self, inputs: usize, outputs: usize, device: &Device) -> Linear {
        Linear {
            weight: self.param([inputs, outputs], inputs, device),
            bias: Some(self.param([outputs], inputs, device)),
        }
    }

    fn conv1d(&mut self, inputs: usize, outputs: usize, kernel: usize, device: &Device) -> Conv1d {
        let fan_in = inputs * kernel;
        Conv1d {
            weight: self.param([outputs, inputs, kernel], fan_in, device),
            bias: Some(self.param([outputs], fan_in, device)),
            stride: 1,
            kernel_size: kernel,
            dilation: 1,
            groups: 1,
            padding: PaddingConfig1d::Same,
        }
    }
}

impl Model {
    /// Builds the module on `device` (plain or autodiff) with weights drawn from `seed`.
    pub fn init(arch: &Architecture, seed: u64, device: &Device) -> Model {
        Self::build(
            arch,
            Fill {
                source: Source::Seeded(SeededRng::new(seed)),
                next_id: 1,
            },
            device,
        )
    }

    /// An all-zero module of the right shapes, to load weights into.
    pub fn zeros(arch: &Architecture, device: &Device) -> Model {
        Self::build(
            arch,
            Fill {
                source: Source::Zeros,
                next_id: 1,
            },
            device,
        )
    }

    fn build(arch: &Architecture, mut fill: Fill, device: &Device) -> Model {
        match arch {
            Architecture::Mlp(c) => {
                let mut fan_in = c.inputs;
                let mut hidden = Vec::with_capacity(c.hidden.len());
                for &width in &c.hidden {
                    hidden.push(fill.linear(fan_in, width, device));
                    fan_in = width;
                }
                Model {
                    convs: Vec::new(),
                    hidden,
                    head: fill.linear(fan_in, c.outputs, device),
                    spec: Spec {
                        activation: c.activation,
                        dropout: c.dropout,
                        conv: None,
                    },
                }
            }
            Architecture::Conv1d(c) => {
                let mut fan_in = c.channels;
                let mut convs = Vec::with_capacity(c.filters.len());
                for &f in &c.filters {
                    convs.push(fill.conv1d(fan_in, f, c.kernel_size, device));
                    fan_in = f;
                }
                Model {
                    convs,
                    hidden: Vec::new(),
                    head: fill.linear(fan_in, c.outputs, device),
                    spec: Spec {
                        activation: c.activation,
                        dropout: c.dropout,
                        conv: Some((c.channels, c.length)),
                    },
                }
            }
        }
    }
}

/// A built network on the CPU (Burn's `flex` backend), ready to serve.
///
/// `Send` and `Sync`; calls do not mutate it.
#[derive(Debug, Clone)]
pub struct Network {
    arch: Architecture,
    model: Model,
    device: Device,
}

pub(crate) fn cpu() -> Device {
    Device::flex()
}

impl Network {
    /// A freshly initialized network; the same `arch` and `seed` always give the same weights.
    ///
    /// Panics if `arch` does not validate; call [`Architecture::validate`] on untrusted input.
    pub fn init(arch: &Architecture, seed: u64) -> Network {
        if let Err(e) = arch.validate() {
            panic!("invalid architecture: {e}");
        }
        let device = cpu();
        Network {
            arch: arch.clone(),
            model: Model::init(arch, seed, &device),
            device,
        }
    }

    pub(crate) fn from_model(arch: &Architecture, model: Model) -> Network {
        Network {
            arch: arch.clone(),
            model,
            device: cpu(),
        }
    }

    pub(crate) fn model(&self) -> &Model {
        &self.model
    }

    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// The CPU device the weights live on; tensors passed to [`Network::forward`] belong here.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Raw network output for `[batch, input_features]`: logits for classification, values for
    /// regression. Inference only (no dropout, no autodiff).
    pub fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        self.model.forward(input, None)
    }

    /// Serving entry point: `rows` row-major rows of `input_features` values in, `rows *
    /// outputs` values out — softmax probabilities for classification, values for regression.
    pub fn infer(&self, input: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        let features = self.arch.input_features();
        let expected = rows
            .checked_mul(features)
            .ok_or_else(|| format!("{rows} rows of {features} features is too large"))?;
        if input.len() != expected {
            return Err(format!(
                "expected {rows} rows of {features} features ({expected} values), got {} values",
                input.len()
            ));
        }
        if let Some(i) = input.iter().position(|v| !v.is_finite()) {
            return Err(format!(
                "input row {} column {} is not a finite number",
                i / features,
                i % features
            ));
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        Ok(self.infer_unchecked(input, rows))
    }

    pub(crate) fn infer_unchecked(&self, input: &[f32], rows: usize) -> Vec<f32> {
        let features = self.arch.input_features();
        let x = Tensor::<2>::from_data(
            TensorData::new(input.to_vec(), [rows, features]),
            &self.device,
        );
        let mut y = self
            .model
            .forward(x, None)
            .into_data()
            .try_into_vec::<f32>()
            .expect("network output is f32");
        if self.arch.task() == Task::Classification {
            // On the host: for a handful of logits per row this is cheaper than the five tensor
            // ops of a softmax, each with its own dispatch cost.
            for row in y.chunks_mut(self.arch.outputs()) {
                softmax_in_place(row);
            }
        }
        y
    }
}

/// Numerically stable softmax (max subtracted first).
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::burnml::arch::Conv1dConfig;
    use crate::burnml::arch::fixtures::{self, mlp};

    #[test]
    fn network_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Network>();
    }

    #[test]
    fn concurrent_inference_agrees_with_sequential() {
        let net = Network::init(&mlp(), 5);
        let input: Vec<f32> = (0..8 * 8).map(|i| (i % 7) as f32 * 0.2 - 0.6).collect();
        let expected = net.infer(&input, 8).unwrap();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..200)
                            .map(|_| net.infer(&input, 8).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for worker in workers {
                for out in worker.join().unwrap() {
                    assert_eq!(out, expected);
                }
            }
        });
    }

    #[test]
    fn init_is_deterministic_per_seed() {
        let input: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
        let a = Network::init(&mlp(), 7).infer(&input, 2).unwrap();
        let b = Network::init(&mlp(), 7).infer(&input, 2).unwrap();
        let c = Network::init(&mlp(), 8).infer(&input, 2).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn classification_outputs_are_probabilities() {
        let net = Network::init(&mlp(), 1);
        let out = net.infer(&[0.5; 8 * 5], 5).unwrap();
        assert_eq!(out.len(), 15);
        for row in out.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(row.iter().all(|p| *p > 0.0));
        }
    }

    #[test]
    fn conv_and_regression_shapes() {
        let arch = Architecture::Conv1d(Conv1dConfig {
            length: 10,
            filters: vec![4, 6],
            kernel_size: 4,
            activation: Activation::Gelu,
            dropout: 0.5,
            task: Task::Regression,
            ..fixtures::conv1d()
        });
        let net = Network::init(&arch, 3);
        let out = net.infer(&vec![0.25; 20 * 3], 3).unwrap();
        assert_eq!(out.len(), 6);
        // dropout is off at inference: repeated calls agree
        assert_eq!(out, net.infer(&vec![0.25; 20 * 3], 3).unwrap());
        let raw = net.forward(Tensor::<2>::from_data(
            TensorData::new(vec![0.25f32; 60], [3, 20]),
            &cpu(),
        ));
        assert_eq!(raw.into_data().try_into_vec::<f32>().unwrap(), out);
    }

    #[test]
    fn infer_rejects_bad_input() {
        let net = Network::init(&mlp(), 1);
        assert!(
            net.infer(&[0.0; 7], 1)
                .unwrap_err()
                .contains("expected 1 rows")
        );
        let mut x = [0.0; 16];
        x[9] = f32::NAN;
        assert!(net.infer(&x, 2).unwrap_err().contains("row 1 column 1"));
        assert_eq!(net.infer(&[], 0).unwrap(), Vec::<f32>::new());
    }
}
