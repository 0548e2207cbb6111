//! Tabular data that models read and write: numeric CSV, checked as it streams. Both the
//! registry (sealed datasets and outputs) and jobs (training and batch inputs) use it; it knows
//! neither.

pub mod csv;
