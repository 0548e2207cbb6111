//! The encrypted model registry: models, immutable versions and movable aliases (`service`),
//! streamed encrypted uploads (`upload`), verified decryption into memory (`loader`), the
//! key hierarchy (`keys`) and the object store holding ciphertext (`store`).

pub mod error;
pub mod keys;
pub mod loader;
pub mod model;
pub mod onnx;
pub mod routes;
pub mod sealed;
pub mod service;
pub mod store;
pub mod upload;

pub use service::RegistryService;

/// Bytes gathered before one trip to the blocking pool, for uploads (encrypt, hash, scan) and
/// loads (decrypt, hash) alike: large enough that the hop costs nothing next to the AES work,
/// small enough to keep memory flat.
const BATCH_BYTES: usize = 1024 * 1024;
