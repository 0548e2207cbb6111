//! Jobs: training and batch inference, run by workers that share the work through a Redis
//! stream (`queue`) while Postgres holds each job's state, lease and event log (`service`,
//! `runner`). Datasets are numeric CSV files checked as they stream (`crate::data::csv`) and stored
//! encrypted like models; training (`train`) registers a Burn model version, batch inference
//! (`batch`) stores its predictions as an encrypted CSV.

pub mod batch;
pub mod control;
pub mod error;
pub mod model;
pub mod queue;
pub mod routes;
pub mod runner;
pub mod service;
pub mod train;

pub use service::JobService;
