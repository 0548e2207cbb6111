//! The encrypted model registry. So far: the key hierarchy (`keys.rs`) on top of `crypto`.

pub mod keys;
