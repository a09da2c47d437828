//! scvi-rs: scVI (single-cell variational inference, Lopez et al. 2018) with a hand-written CPU
//! engine, computing exactly what scvi-tools' `SCVI` computes.

pub mod batch;
pub mod cpu;
pub mod data;
pub mod error;
pub mod float;
pub mod math;
pub mod model;
pub mod rng;

pub use error::{Error, Result};
