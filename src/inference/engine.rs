//! What a worker thread runs: an `Engine` is one loaded model instance (an ONNX Runtime
//! session, or a Burn model) that turns input tensors into output tensors. Engines are owned
//! by exactly one worker thread and never touched by the async executor.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorRef};

use super::protocol::{DataType, TensorData};

/// One input of a run, in the model signature's order.
pub struct RunInput<'a> {
    pub shape: &'a [usize],
    pub data: &'a TensorData,
}

#[derive(Debug, Clone)]
pub struct RunOutput {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

pub trait Engine: Send {
    /// Runs the model once; returns every output of the signature, in its order.
    fn run(&mut self, inputs: &[RunInput<'_>]) -> Result<Vec<RunOutput>, String>;
}

/// ONNX Runtime, loaded once per process from a shared library (`load-dynamic`): nothing is
/// downloaded or linked at build time, and a missing or wrong library is one clear error at
/// start-up instead of a crash at the first request.
pub struct OnnxRuntime {
    env: Environment,
}

static RUNTIME: OnceLock<Result<Arc<OnnxRuntime>, String>> = OnceLock::new();

impl OnnxRuntime {
    /// Loads the library named by `configured`, or else by `ORT_DYLIB_PATH`. The first call
    /// decides for the whole process (ONNX Runtime allows one environment per process).
    pub fn load(configured: Option<&std::path::Path>) -> Result<Arc<OnnxRuntime>, String> {
        RUNTIME.get_or_init(|| Self::load_once(configured)).clone()
    }

    fn load_once(configured: Option<&std::path::Path>) -> Result<Arc<OnnxRuntime>, String> {
        let path: PathBuf = match configured.filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => p.to_path_buf(),
            None => std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()).map(PathBuf::from).ok_or_else(|| {
                "ONNX Runtime is not configured: set inference.onnxruntime_path or ORT_DYLIB_PATH to \
                 libonnxruntime.so (deploy/local/install-onnxruntime.sh installs 1.31.1)"
                    .to_owned()
            })?,
        };
        if !path.is_file() {
            return Err(format!("ONNX Runtime library {} does not exist", path.display()));
        }
        let builder = ort::init_from(&path).map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        let env = builder
            .with_name("tessera")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("ONNX Runtime from {} failed to start: {e}", path.display()))?;
        Ok(Arc::new(OnnxRuntime { env }))
    }

    /// A session over a model held in memory (ONNX Runtime copies what it needs).
    pub fn session(&self, model: &[u8], intra_op_threads: usize) -> Result<Session, String> {
        // Checked again at load, whenever the artifact was uploaded: ONNX Runtime is never
        // handed a model that could make it read a file.
        let mut scanner = crate::registry::onnx::SignatureScanner::new();
        scanner.update(model).and_then(|()| scanner.finish().map(drop)).map_err(|e| e.to_string())?;
        let build = || -> ort::Result<Session> {
            Session::builder(&self.env)?
                .with_optimization_level(GraphOptimizationLevel::All)?
                .with_intra_threads(intra_op_threads)?
                .with_inter_threads(1)?
                .with_parallel_execution(false)?
                // A model from memory would otherwise resolve external data files relative to
                // the server's working directory: point it at a folder that does not exist.
                .with_config_entry("session.model_external_initializers_file_folder_path", "/nonexistent/tessera-no-external-data")?
                .commit_from_memory(model)
        };
        build().map_err(|e| e.to_string())
    }
}

pub struct OnnxEngine {
    session: Session,
    input_names: Vec<String>,
    output_names: Vec<String>,
    output_types: Vec<DataType>,
}

impl OnnxEngine {
    pub fn new(session: Session, input_names: Vec<String>, outputs: Vec<(String, DataType)>) -> Self {
        let (output_names, output_types) = outputs.into_iter().unzip();
        Self { session, input_names, output_names, output_types }
    }
}

fn view<'a, T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
    shape: &[usize],
    data: &'a [T],
) -> ort::Result<SessionInputValue<'a>> {
    Ok(TensorRef::from_array_view((shape.to_vec(), data))?.into())
}

fn input_value<'a>(input: &RunInput<'a>) -> Result<SessionInputValue<'a>, String> {
    let shape = input.shape;
    let value = match input.data {
        TensorData::Bool(v) => view(shape, v),
        TensorData::Uint8(v) => view(shape, v),
        TensorData::Uint16(v) => view(shape, v),
        TensorData::Uint32(v) => view(shape, v),
        TensorData::Uint64(v) => view(shape, v),
        TensorData::Int8(v) => view(shape, v),
        TensorData::Int16(v) => view(shape, v),
        TensorData::Int32(v) => view(shape, v),
        TensorData::Int64(v) => view(shape, v),
        TensorData::Fp16(v) => view(shape, v),
        TensorData::Fp32(v) => view(shape, v),
        TensorData::Fp64(v) => view(shape, v),
        TensorData::Bytes(v) => {
            let strings = v
                .iter()
                .map(|b| String::from_utf8(b.to_vec()).map_err(|_| "BYTES elements must be UTF-8 for this model".to_owned()))
                .collect::<Result<Vec<String>, String>>()?;
            Tensor::from_string_array((shape.to_vec(), &strings[..])).map(SessionInputValue::from)
        }
    };
    value.map_err(|e| e.to_string())
}

fn extract(value: &ort::value::DynValue, datatype: DataType) -> ort::Result<RunOutput> {
    macro_rules! typed {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>()?;
            (shape.iter().map(|d| *d as usize).collect(), TensorData::$variant(data.to_vec()))
        }};
    }
    let (shape, data): (Vec<usize>, TensorData) = match datatype {
        DataType::Bool => typed!(bool, Bool),
        DataType::Uint8 => typed!(u8, Uint8),
        DataType::Uint16 => typed!(u16, Uint16),
        DataType::Uint32 => typed!(u32, Uint32),
        DataType::Uint64 => typed!(u64, Uint64),
        DataType::Int8 => typed!(i8, Int8),
        DataType::Int16 => typed!(i16, Int16),
        DataType::Int32 => typed!(i32, Int32),
        DataType::Int64 => typed!(i64, Int64),
        DataType::Fp16 => typed!(half::f16, Fp16),
        DataType::Fp32 => typed!(f32, Fp32),
        DataType::Fp64 => typed!(f64, Fp64),
        DataType::Bytes => {
            let (shape, strings) = value.try_extract_strings()?;
            (shape.iter().map(|d| *d as usize).collect(), TensorData::Bytes(strings.into_iter().map(bytes::Bytes::from).collect()))
        }
    };
    Ok(RunOutput { shape, data })
}

impl Engine for OnnxEngine {
    fn run(&mut self, inputs: &[RunInput<'_>]) -> Result<Vec<RunOutput>, String> {
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (name, input) in self.input_names.iter().zip(inputs) {
            values.push((Cow::Borrowed(name.as_str()), input_value(input)?));
        }
        let results = self.session.run(values).map_err(|e| e.to_string())?;
        self.output_names
            .iter()
            .zip(&self.output_types)
            .map(|(name, datatype)| {
                let value = results.get(name.as_str()).ok_or_else(|| format!("the model produced no output `{name}`"))?;
                extract(value, *datatype).map_err(|e| e.to_string())
            })
            .collect()
    }
}

/// A Burn network (MLP or 1-D convolution) on the CPU: one FP32 input, one FP32 output.
pub struct BurnEngine {
    network: crate::burnml::Network,
    outputs: usize,
}

impl BurnEngine {
    pub fn new(network: crate::burnml::Network) -> Self {
        let outputs = network.architecture().outputs();
        Self { network, outputs }
    }
}

impl Engine for BurnEngine {
    fn run(&mut self, inputs: &[RunInput<'_>]) -> Result<Vec<RunOutput>, String> {
        let [input] = inputs else { return Err(format!("a Burn model takes one input, not {}", inputs.len())) };
        let TensorData::Fp32(values) = input.data else { return Err("a Burn model takes FP32 input".into()) };
        let rows = input.shape.first().copied().unwrap_or(0);
        let out = self.network.infer(values, rows)?;
        Ok(vec![RunOutput { shape: vec![rows, self.outputs], data: TensorData::Fp32(out) }])
    }
}
