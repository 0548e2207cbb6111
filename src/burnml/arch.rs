use serde::{Deserialize, Serialize};

/// Largest accepted size of any single dimension (inputs, layer widths, channels, length, ...).
pub const MAX_SIZE: usize = 65_536;
/// Largest accepted number of hidden (MLP) or convolution layers.
pub const MAX_LAYERS: usize = 16;
/// Largest accepted number of trainable parameters.
pub const MAX_PARAMETERS: usize = 50_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Outputs are class logits; targets are class indices.
    #[default]
    Classification,
    /// Outputs are real values; targets are `outputs` values per row.
    Regression,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    pub inputs: usize,
    /// Widths of the hidden layers; empty gives a linear (logistic / least-squares) model.
    pub hidden: Vec<usize>,
    pub outputs: usize,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub task: Task,
}

/// A row of `channels * length` features is read channel-major as `[channels, length]`.
/// Each entry of `filters` adds a convolution (stride 1, "same" zero padding, so the length is
/// kept whatever the kernel) followed by the activation and dropout; a global average over the
/// length and a linear head give the outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv1dConfig {
    pub channels: usize,
    pub length: usize,
    pub filters: Vec<usize>,
    pub kernel_size: usize,
    pub outputs: usize,
    #[serde(default)]
    pub activation: Activation,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub task: Task,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "architecture", content = "config", rename_all = "snake_case")]
pub enum Architecture {
    Mlp(MlpConfig),
    Conv1d(Conv1dConfig),
}

fn check_size(name: &str, value: usize) -> Result<(), String> {
    if value == 0 || value > MAX_SIZE {
        return Err(format!(
            "{name} must be between 1 and {MAX_SIZE}, got {value}"
        ));
    }
    Ok(())
}

fn check_dropout(dropout: f64) -> Result<(), String> {
    if !(0.0..1.0).contains(&dropout) {
        return Err(format!("dropout must be in [0, 1), got {dropout}"));
    }
    Ok(())
}

fn check_outputs(task: Task, outputs: usize) -> Result<(), String> {
    check_size("outputs", outputs)?;
    if task == Task::Classification && outputs < 2 {
        return Err(format!(
            "classification needs at least 2 outputs (one per class), got {outputs}"
        ));
    }
    Ok(())
}

/// Parameters of a dense layer, or `None` on overflow (only reachable before size checks).
fn dense_params(inputs: usize, outputs: usize) -> Option<usize> {
    inputs.checked_mul(outputs)?.checked_add(outputs)
}

impl Architecture {
    /// `mlp` or `conv1d`, as in the serialised form.
    pub fn name(&self) -> &'static str {
        match self {
            Architecture::Mlp(_) => "mlp",
            Architecture::Conv1d(_) => "conv1d",
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        match self {
            Architecture::Mlp(c) => {
                check_size("inputs", c.inputs)?;
                if c.hidden.len() > MAX_LAYERS {
                    return Err(format!(
                        "at most {MAX_LAYERS} hidden layers are allowed, got {}",
                        c.hidden.len()
                    ));
                }
                for (i, &width) in c.hidden.iter().enumerate() {
                    check_size(&format!("hidden[{i}]"), width)?;
                }
                check_outputs(c.task, c.outputs)?;
                check_dropout(c.dropout)?;
            }
            Architecture::Conv1d(c) => {
                check_size("channels", c.channels)?;
                check_size("length", c.length)?;
                let features = c.channels.saturating_mul(c.length);
                if features > MAX_SIZE {
                    return Err(format!(
                        "channels * length (input features) must be at most {MAX_SIZE}, got {features}"
                    ));
                }
                if c.filters.is_empty() {
                    return Err("filters must list at least one convolution layer".into());
                }
                if c.filters.len() > MAX_LAYERS {
                    return Err(format!(
                        "at most {MAX_LAYERS} convolution layers are allowed, got {}",
                        c.filters.len()
                    ));
                }
                for (i, &f) in c.filters.iter().enumerate() {
                    check_size(&format!("filters[{i}]"), f)?;
                }
                check_size("kernel_size", c.kernel_size)?;
                if c.kernel_size > c.length {
                    return Err(format!(
                        "kernel_size ({}) must not exceed length ({})",
                        c.kernel_size, c.length
                    ));
                }
                check_outputs(c.task, c.outputs)?;
                check_dropout(c.dropout)?;
            }
        }
        match self.checked_parameter_count() {
            Some(n) if n <= MAX_PARAMETERS => Ok(()),
            Some(n) => Err(format!(
                "the network would have {n} parameters, more than the {MAX_PARAMETERS} allowed"
            )),
            None => Err(format!(
                "the network would have more than the {MAX_PARAMETERS} parameters allowed"
            )),
        }
    }

    pub fn input_features(&self) -> usize {
        match self {
            Architecture::Mlp(c) => c.inputs,
            Architecture::Conv1d(c) => c.channels.saturating_mul(c.length),
        }
    }

    pub fn outputs(&self) -> usize {
        match self {
            Architecture::Mlp(c) => c.outputs,
            Architecture::Conv1d(c) => c.outputs,
        }
    }

    pub fn task(&self) -> Task {
        match self {
            Architecture::Mlp(c) => c.task,
            Architecture::Conv1d(c) => c.task,
        }
    }

    /// Trainable parameters (weights and biases). Saturates at `usize::MAX` for absurd
    /// configurations, which `validate` rejects.
    pub fn parameter_count(&self) -> usize {
        self.checked_parameter_count().unwrap_or(usize::MAX)
    }

    fn checked_parameter_count(&self) -> Option<usize> {
        let mut total: usize = 0;
        match self {
            Architecture::Mlp(c) => {
                let mut fan_in = c.inputs;
                for &width in &c.hidden {
                    total = total.checked_add(dense_params(fan_in, width)?)?;
                    fan_in = width;
                }
                total = total.checked_add(dense_params(fan_in, c.outputs)?)?;
            }
            Architecture::Conv1d(c) => {
                let mut fan_in = c.channels;
                for &f in &c.filters {
                    let weights = fan_in.checked_mul(f)?.checked_mul(c.kernel_size)?;
                    total = total.checked_add(weights)?.checked_add(f)?;
                    fan_in = f;
                }
                total = total.checked_add(dense_params(fan_in, c.outputs)?)?;
            }
        }
        Some(total)
    }
}

/// Architectures the tests of every Burn module build on.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// 8 inputs, two hidden layers of 64, 3 classes.
    pub fn mlp() -> Architecture {
        Architecture::Mlp(MlpConfig {
            inputs: 8,
            hidden: vec![64, 64],
            outputs: 3,
            activation: Activation::Relu,
            dropout: 0.0,
            task: Task::Classification,
        })
    }

    /// Two channels of 32 samples, filters of 8 and 16, two classes.
    pub fn conv1d() -> Conv1dConfig {
        Conv1dConfig {
            channels: 2,
            length: 32,
            filters: vec![8, 16],
            kernel_size: 5,
            outputs: 2,
            activation: Activation::Relu,
            dropout: 0.0,
            task: Task::Classification,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::mlp;
    use super::*;

    #[test]
    fn json_round_trip_and_defaults() {
        let json = r#"{"architecture":"mlp","config":{"inputs":8,"hidden":[64,64],"outputs":3}}"#;
        let arch: Architecture = serde_json::from_str(json).unwrap();
        assert_eq!(arch, mlp());
        let back: Architecture =
            serde_json::from_str(&serde_json::to_string(&arch).unwrap()).unwrap();
        assert_eq!(back, arch);

        let json = r#"{"architecture":"conv1d","config":{"channels":2,"length":16,"filters":[8],
            "kernel_size":3,"outputs":1,"activation":"gelu","task":"regression","dropout":0.1}}"#;
        let arch: Architecture = serde_json::from_str(json).unwrap();
        assert_eq!(arch.input_features(), 32);
        assert_eq!(arch.task(), Task::Regression);
        assert!(arch.validate().is_ok());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let json =
            r#"{"architecture":"mlp","config":{"inputs":8,"hidden":[],"outputs":3,"extra":1}}"#;
        assert!(serde_json::from_str::<Architecture>(json).is_err());
        let json = r#"{"architecture":"mlp","config":{"inputs":8,"hidden":[],"outputs":3,"activation":"swish"}}"#;
        assert!(serde_json::from_str::<Architecture>(json).is_err());
    }

    #[test]
    fn parameter_counts() {
        assert_eq!(
            mlp().parameter_count(),
            8 * 64 + 64 + 64 * 64 + 64 + 64 * 3 + 3
        );
        let conv = Architecture::Conv1d(fixtures::conv1d());
        assert_eq!(
            conv.parameter_count(),
            (2 * 8 * 5 + 8) + (8 * 16 * 5 + 16) + (16 * 2 + 2)
        );
    }

    #[test]
    fn validation_messages() {
        let err = |f: &dyn Fn(&mut MlpConfig)| {
            let Architecture::Mlp(mut c) = mlp() else {
                unreachable!()
            };
            f(&mut c);
            Architecture::Mlp(c).validate().unwrap_err()
        };
        assert!(err(&|c| c.inputs = 0).contains("inputs"));
        assert!(err(&|c| c.hidden[1] = 70_000).contains("hidden[1]"));
        assert!(err(&|c| c.hidden = vec![4; 17]).contains("at most 16"));
        assert!(err(&|c| c.dropout = 1.0).contains("dropout"));
        assert!(err(&|c| c.dropout = f64::NAN).contains("dropout"));
        assert!(err(&|c| c.outputs = 1).contains("at least 2"));
        assert!(err(&|c| c.hidden = vec![65_536; 16]).contains("parameters"));

        let Architecture::Mlp(mut c) = mlp() else {
            unreachable!()
        };
        c.outputs = 1;
        c.task = Task::Regression;
        assert!(Architecture::Mlp(c).validate().is_ok());

        let conv = |kernel_size, filters: Vec<usize>| {
            Architecture::Conv1d(Conv1dConfig {
                channels: 1,
                length: 8,
                filters,
                kernel_size,
                outputs: 2,
                activation: Activation::Tanh,
                dropout: 0.0,
                task: Task::Classification,
            })
            .validate()
        };
        assert!(conv(9, vec![4]).unwrap_err().contains("kernel_size"));
        assert!(conv(3, vec![]).unwrap_err().contains("filters"));
        assert!(conv(8, vec![4]).is_ok());
    }
}
