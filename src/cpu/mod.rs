//! The CPU reference engine: hand-written forward and backward passes of scVI, parallel over cells
//! with rayon, generic over f32 and f64. It is the single source of truth for the maths; the CUDA
//! kernels are checked against it.

pub mod engine;
pub mod fc;
pub mod gemm;
pub mod output;
pub mod sparse;

pub use engine::{CpuEngine, LossParts, StepNoise};
pub use fc::Mode;
