//! The CPU reference engine: hand-written forward and backward passes of scVI, parallel over cells
//! with rayon, generic over f32 and f64. It is the single source of truth for the maths; the CUDA
//! kernels are checked against it.
//!
//! Where the time goes and how it is spent well (BENCHMARKS_CPU.md has the figures): the dense
//! products go to faer in fixed single-threaded tiles (`gemm`); the decoder output is one fused pass
//! per cell (`output`); the encoders' first layer reads only the non-zeros (`sparse`); the element-wise
//! kernels are compiled for AVX-512, AVX2 and SSE2 and the widest is picked at run time (`simd`).
//! Results do not depend on the thread count or the instruction set.

pub mod engine;
pub mod fc;
pub mod gemm;
pub mod output;
pub mod simd;
pub mod sparse;

pub use engine::{CpuEngine, LossParts, StepNoise};
pub use fc::Mode;
