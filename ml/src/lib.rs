//! Warden's training engine, in plain Rust on the CPU: LSTM and GRU
//! layers with hand-written backpropagation through time (gates fused into
//! one packed matrix product per step over the batch), Adam/AdamW/SGD, the
//! LSTM autoencoder, the GRU predictor and the statistical sentinel,
//! windows and standardisation, detection metrics, and the model file.
//! Nothing here knows about storage or HTTP; `warden-actors` runs a
//! [`train::Session`] inside a training run's actor.

pub mod data;
pub mod eval;
pub mod gradient;
pub mod hyper;
pub mod layers;
pub mod linalg;
pub mod model;
pub mod net;
pub mod onnx;
pub mod optim;
pub mod rng;
pub mod sentinel;
pub mod train;

pub use data::{Raw, Series};
pub use eval::Metrics;
pub use hyper::{Architecture, Hyper, Loss};
pub use model::Model;
pub use rng::Rng;
pub use train::{Checkpoint, EpochLoss, Evaluation, Session};

#[cfg(test)]
mod tests;
