//! One integration-test binary (one link step). Every test starts the real application on a
//! random port against the real Postgres (a fresh database each) and the real Redis (a unique
//! key prefix each); see `helpers`.

mod helpers;
#[path = "../support/onnx_builder.rs"]
mod onnx_builder;

mod attacks;
mod audit;
mod auth;
mod authz_matrix;
mod cli;
mod errors;
mod health;
mod inference;
mod jobs;
mod lists;
mod openapi_drift;
mod portal;
mod registry;
mod registry_keys;
mod tenant_isolation;
mod tenants;
mod tls;
mod usage;
