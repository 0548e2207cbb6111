//! Network weights as burnpack bytes (Burn's native record container, via `burn-store`).
//!
//! The caller keeps the architecture and passes it back when loading; the bytes are checked
//! against it. They also carry the architecture as JSON metadata (key `architecture`), which
//! catches what tensor shapes cannot: another activation, task or sequence length.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::store::burn_pack::Reader;
use burn::store::{BurnpackStore, ModuleSnapshot, ModuleStore};
use burn::tensor::{Bytes, DType};

use super::arch::Architecture;
use super::network::{Model, Network, cpu};

const ARCHITECTURE_KEY: &str = "architecture";

/// The architecture as far as weights are concerned: dropout only matters while training.
fn for_weights(arch: &Architecture) -> Architecture {
    let mut arch = arch.clone();
    match &mut arch {
        Architecture::Mlp(c) => c.dropout = 0.0,
        Architecture::Conv1d(c) => c.dropout = 0.0,
    }
    arch
}

/// The network's weights as burnpack bytes. Equal weights give equal bytes.
pub fn to_bytes(network: &Network) -> Result<Vec<u8>, String> {
    let arch = serde_json::to_string(network.architecture())
        .map_err(|e| format!("cannot serialize the architecture: {e}"))?;
    let mut store = BurnpackStore::from_bytes(None).metadata(ARCHITECTURE_KEY, arch);
    network
        .model()
        .save_into(&mut store)
        .map_err(|e| format!("cannot serialize weights: {e}"))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| format!("cannot serialize weights: {e}"))?;
    Ok(bytes.to_vec())
}

/// A network of architecture `arch` with weights from `bytes` (as written by [`to_bytes`]).
///
/// Fails with a message, never panics, when the bytes are not a burnpack record or do not fit
/// `arch` (missing, extra or differently shaped tensors, another architecture in the metadata).
pub fn from_bytes(arch: &Architecture, bytes: &[u8]) -> Result<Network, String> {
    arch.validate()
        .map_err(|e| format!("invalid architecture: {e}"))?;
    // Nothing below is expected to panic, but the bytes are untrusted and a panic deep in Burn
    // would otherwise take the worker thread down with it.
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

    // Shared so that the clone below is a reference, not a copy.
    let bytes = Bytes::from_bytes_vec(bytes.to_vec()).shared();
    let reader = Reader::from_bytes(bytes.clone())
        .map_err(|e| format!("not a burnpack weight record: {e}"))?;
    // Absent from records written elsewhere; those get the tensor checks only.
    if let Some(saved) = reader.metadata().get(ARCHITECTURE_KEY) {
        let saved: Architecture = serde_json::from_str(saved)
            .map_err(|e| format!("the record's architecture metadata is unreadable: {e}"))?;
        if for_weights(&saved) != for_weights(arch) {
            return Err(format!(
                "weights were saved for another architecture: {} (requested {})",
                serde_json::to_string(&saved).unwrap_or_default(),
                serde_json::to_string(arch).unwrap_or_default()
            ));
        }
    }
    drop(reader);

    let mut store = BurnpackStore::from_bytes(Some(bytes));
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
            problems.push(format!(
                "unexpected tensor {name} {}",
                describe(shape, *dtype)
            ));
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
        (0..8 * 4)
            .map(|i| ((i * 7) % 11) as f32 * 0.3 - 1.5)
            .collect()
    }

    #[test]
    fn round_trip_is_exact() {
        let net = Network::init(&mlp(vec![64, 64]), 11);
        let bytes = to_bytes(&net).unwrap();
        let back = from_bytes(&mlp(vec![64, 64]), &bytes).unwrap();
        assert_eq!(
            net.infer(&input(), 4).unwrap(),
            back.infer(&input(), 4).unwrap()
        );
        assert_eq!(to_bytes(&back).unwrap(), bytes);
    }

    /// The same weights without the architecture metadata, as another producer would write
    /// them, to exercise the tensor checks.
    fn bare_bytes(network: &Network) -> Vec<u8> {
        let mut store = BurnpackStore::from_bytes(None);
        network.model().save_into(&mut store).unwrap();
        store.get_bytes().unwrap().to_vec()
    }

    #[test]
    fn metadata_catches_what_shapes_cannot() {
        let arch = |activation, dropout| {
            Architecture::Conv1d(Conv1dConfig {
                channels: 2,
                length: 16,
                filters: vec![4],
                kernel_size: 3,
                outputs: 2,
                activation,
                dropout,
                task: Task::Classification,
            })
        };
        let bytes = to_bytes(&Network::init(&arch(Activation::Relu, 0.2), 1)).unwrap();
        assert!(from_bytes(&arch(Activation::Relu, 0.0), &bytes).is_ok());
        let err = from_bytes(&arch(Activation::Tanh, 0.2), &bytes).unwrap_err();
        assert!(err.contains("another architecture"), "{err}");
        let Architecture::Conv1d(mut longer) = arch(Activation::Relu, 0.2) else {
            unreachable!()
        };
        longer.length = 32;
        let err = from_bytes(&Architecture::Conv1d(longer), &bytes).unwrap_err();
        assert!(err.contains("another architecture"), "{err}");

        let bare = bare_bytes(&Network::init(&arch(Activation::Relu, 0.2), 1));
        assert!(from_bytes(&arch(Activation::Tanh, 0.0), &bare).is_ok());
    }

    #[test]
    fn mismatched_architecture_fails_cleanly() {
        let err = from_bytes(
            &mlp(vec![64, 32]),
            &to_bytes(&Network::init(&mlp(vec![64, 64]), 1)).unwrap(),
        )
        .unwrap_err();
        assert!(err.contains("another architecture"), "{err}");

        let bytes = bare_bytes(&Network::init(&mlp(vec![64, 64]), 1));

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
        assert!(
            from_bytes(&arch, b"")
                .unwrap_err()
                .contains("not a burnpack")
        );
        assert!(
            from_bytes(&arch, b"definitely not weights")
                .unwrap_err()
                .contains("not a burnpack")
        );
        let bytes = to_bytes(&Network::init(&arch, 1)).unwrap();
        assert!(from_bytes(&arch, &bytes[..bytes.len() - 9]).is_err());
        let mut flipped = bytes.clone();
        for b in flipped.iter_mut().take(40).skip(8) {
            *b ^= 0x5a;
        }
        assert!(from_bytes(&arch, &flipped).is_err());
    }
}
