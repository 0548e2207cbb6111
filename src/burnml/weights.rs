//! Network weights as burnpack bytes (Burn's native record container, via `burn-store`).
//!
//! The bytes hold tensors only; the architecture travels separately and is what the bytes are
//! checked against when loading.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::store::{BurnpackStore, ModuleSnapshot, ModuleStore};
use burn::tensor::{Bytes, DType};

use super::arch::Architecture;
use super::network::{Model, Network, cpu};

pub fn to_bytes(network: &Network) -> Result<Vec<u8>, String> {
    let mut store = BurnpackStore::from_bytes(None);
    network
        .model()
        .save_into(&mut store)
        .map_err(|e| format!("cannot serialize weights: {e}"))?;
    let bytes = store.get_bytes().map_err(|e| format!("cannot serialize weights: {e}"))?;
    Ok(bytes.to_vec())
}

pub fn from_bytes(arch: &Architecture, bytes: &[u8]) -> Result<Network, String> {
    arch.validate().map_err(|e| format!("invalid architecture: {e}"))?;
    // Burn validates shapes itself, but a panic inside its loader would take the worker
    // thread down; contain it and report it as a load error instead.
    match catch_unwind(AssertUnwindSafe(|| load(arch, bytes))) {
        Ok(result) => result,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(format!("weights could not be loaded: {reason}"))
        }
    }
}

fn describe(shape: &[usize], dtype: DType) -> String {
    format!("{shape:?} {dtype:?}")
}

fn load(arch: &Architecture, bytes: &[u8]) -> Result<Network, String> {
    let mut model = Model::zeros(arch, &cpu());

    let expected: BTreeMap<String, (Vec<usize>, DType)> = model
        .collect(None, None, false)
        .into_iter()
        .map(|t| (t.name, (t.shape.to_vec(), t.dtype)))
        .collect();

    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes.to_vec())));
    let found: BTreeMap<String, (Vec<usize>, DType)> = store
        .get_all_tensors()
        .map_err(|e| format!("not a burnpack weight record: {e}"))?
        .iter()
        .map(|(name, t)| (name.clone(), (t.shape.to_vec(), t.dtype)))
        .collect();

    // Checked up front so that the error names every disagreement at once, and so that
    // Burn's loader, which aborts the process if it panics mid-apply, only ever sees tensors
    // that fit.
    let mut problems = Vec::new();
    for (name, (shape, dtype)) in &expected {
        match found.get(name) {
            None => problems.push(format!("missing tensor {name} {}", describe(shape, *dtype))),
            Some((s, d)) if s != shape || d != dtype => problems.push(format!(
                "tensor {name} is {} but the architecture needs {}",
                describe(s, *d),
                describe(shape, *dtype)
            )),
            Some(_) => {}
        }
    }
    for (name, (shape, dtype)) in &found {
        if !expected.contains_key(name) {
            problems.push(format!("unexpected tensor {name} {}", describe(shape, *dtype)));
        }
    }
    if !problems.is_empty() {
        return Err(format!(
            "weights do not match the architecture: {}",
            problems.join("; ")
        ));
    }

    let result = model
        .load_from(&mut store)
        .map_err(|e| format!("weights could not be loaded: {e}"))?;
    if !result.errors.is_empty() || !result.missing.is_empty() || !result.unused.is_empty() {
        return Err(format!(
            "weights could not be loaded: errors {:?}, missing {:?}, unused {:?}",
            result.errors, result.missing, result.unused
        ));
    }
    Ok(Network::from_model(arch, model))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::burnml::arch::{Activation, Conv1dConfig, MlpConfig, Task};

    fn mlp(hidden: Vec<usize>) -> Architecture {
        Architecture::Mlp(MlpConfig {
            inputs: 8,
            hidden,
            outputs: 3,
            activation: Activation::Relu,
            dropout: 0.0,
            task: Task::Classification,
        })
    }

    fn input() -> Vec<f32> {
        (0..8 * 4).map(|i| ((i * 7) % 11) as f32 * 0.3 - 1.5).collect()
    }

    #[test]
    fn round_trip_is_exact() {
        let net = Network::init(&mlp(vec![64, 64]), 11);
        let bytes = to_bytes(&net).unwrap();
        let back = from_bytes(&mlp(vec![64, 64]), &bytes).unwrap();
        assert_eq!(net.infer(&input(), 4).unwrap(), back.infer(&input(), 4).unwrap());
        assert_eq!(to_bytes(&back).unwrap(), bytes);
    }

    #[test]
    fn mismatched_architecture_fails_cleanly() {
        let bytes = to_bytes(&Network::init(&mlp(vec![64, 64]), 1)).unwrap();

        let err = from_bytes(&mlp(vec![64, 32]), &bytes).unwrap_err();
        assert!(err.contains("hidden.1.weight is [64, 64]"), "{err}");

        let err = from_bytes(&mlp(vec![64]), &bytes).unwrap_err();
        assert!(err.contains("unexpected tensor hidden.1.weight"), "{err}");

        let err = from_bytes(&mlp(vec![64, 64, 64]), &bytes).unwrap_err();
        assert!(err.contains("missing tensor hidden.2.weight"), "{err}");

        let conv = Architecture::Conv1d(Conv1dConfig {
            channels: 1,
            length: 8,
            filters: vec![64],
            kernel_size: 3,
            outputs: 3,
            activation: Activation::Relu,
            dropout: 0.0,
            task: Task::Classification,
        });
        let err = from_bytes(&conv, &bytes).unwrap_err();
        assert!(err.contains("missing tensor convs.0.weight"), "{err}");
    }

    #[test]
    fn garbage_is_rejected() {
        let arch = mlp(vec![4]);
        assert!(from_bytes(&arch, b"").unwrap_err().contains("not a burnpack"));
        assert!(from_bytes(&arch, b"definitely not weights").unwrap_err().contains("not a burnpack"));
        let bytes = to_bytes(&Network::init(&arch, 1)).unwrap();
        assert!(from_bytes(&arch, &bytes[..bytes.len() - 9]).is_err());
        let mut flipped = bytes.clone();
        for b in flipped.iter_mut().take(40).skip(8) {
            *b ^= 0x5a;
        }
        assert!(from_bytes(&arch, &flipped).is_err());
    }
}
