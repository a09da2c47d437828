//! scvi-rs: scVI (single-cell variational inference, Lopez et al. 2018) with a hand-written CPU
//! engine, computing exactly what scvi-tools' `SCVI` computes.

pub mod batch;
pub mod cpu;
pub mod data;
pub mod error;
pub mod float;
pub mod infer;
pub mod math;
pub mod model;
pub mod rng;
pub mod store;

pub use error::{Error, Result};
pub mod engine;
pub mod scvi;
pub mod train;

pub use scvi::{Device, Scvi, Setup};

/// The CUDA engine for a model, or why there is none.
pub fn cuda_engine(
    _model: &scvi::Scvi,
    device: usize,
    _seed: u64,
    _adam: train::AdamConfig,
) -> Result<Box<dyn engine::Engine>> {
    Err(Error::Cuda(format!(
        "device cuda:{device} is not available: this build's GPU engine is not implemented yet; use --device cpu"
    )))
}

/// Whether a CUDA device can run the GPU engine here.
pub fn gpu_available() -> bool {
    false
}
