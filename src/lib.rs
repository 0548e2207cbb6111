//! Tessera: a multi-tenant AI inference platform.
//!
//! See ARCHITECTURE.md for the module map and the invariants between modules.

pub mod api;
pub mod audit;
pub mod burnml;
pub mod cli;
pub mod client;
pub mod config;
pub mod crypto;
pub mod data;
pub mod db;
pub mod error;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod inference;
pub mod jobs;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod page;
pub mod redis_store;
pub mod registry;
pub mod request;
pub mod startup;
pub mod telemetry;
pub mod tenancy;
pub mod tls;
pub mod usage;

/// Version string reported by `/metrics` build info and `tessera --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
