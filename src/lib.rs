//! scvi-rs: scVI (single-cell variational inference, Lopez et al. 2018) with a hand-written CPU
//! engine, computing exactly what scvi-tools' `SCVI` computes.

pub mod atomic;
pub mod batch;
pub mod cpu;
pub mod cuda;
pub mod data;
pub mod error;
pub mod float;
pub mod infer;
pub mod interrupt;
pub mod limits;
pub mod math;
pub mod model;
pub mod rng;
pub mod store;

pub use error::{Error, Result};
pub mod engine;
pub mod scvi;
pub mod train;
pub mod training;

pub use scvi::{Device, Scvi, Setup};
