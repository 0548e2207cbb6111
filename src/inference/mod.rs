//! Inference: the Open Inference Protocol v2 (`routes`, `protocol`) over worker actors
//! (`worker`) running engines (`engine`: ONNX Runtime sessions) for the model versions that
//! `models` resolves, loads and evicts; inputs checked against signatures (`validate`),
//! results cached in Redis for deterministic models (`cache`), one call end to end in
//! `service`, and what any of it can fail with (`error`).

pub mod cache;
pub mod engine;
pub mod error;
pub mod metadata;
pub mod metrics;
pub mod models;
pub mod protocol;
pub mod quiet;
pub mod routes;
pub mod service;
pub mod validate;
pub mod worker;

pub use service::InferenceService;
