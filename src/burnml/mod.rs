//! Small neural networks (MLP and 1-D convolution) on Burn's pure-Rust CPU backend:
//! architecture description, initialization, serving inference, weight bytes and training.

pub mod arch;
pub mod network;
pub mod train;
pub mod weights;

pub use arch::{Activation, Architecture, Conv1dConfig, MlpConfig, Task};
pub use network::Network;
pub use train::{Dataset, EpochReport, TrainError, TrainParams, Trained, evaluate, train};
pub use weights::{from_bytes, to_bytes};
