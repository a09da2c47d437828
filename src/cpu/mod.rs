//! The CPU reference engine: hand-written forward and backward passes of scVI, parallel over cells
//! with rayon, generic over f32 and f64. It is the single source of truth for the maths; the CUDA
//! kernels are checked against it.
//!
//! One module per op family, each the twin of a kernel file (tests/cuda_kernels.rs runs each kernel
//! file against its twin as `<family>_emulated` / `<family>_gpu`):
//!
//! | module      | kernel file          | what                                                   |
//! |-------------|----------------------|--------------------------------------------------------|
//! | [`sparse`]  | kernels/sparse.cu    | the encoders' first layer on the sparse counts         |
//! | [`fc`]      | kernels/fc.cu        | one FCLayers layer after its product: BatchNorm, ...   |
//! | [`latent`]  | kernels/latent.cu    | posterior variance, reparameterisation, KL, library    |
//! | [`output`]  | kernels/output.cu    | softmax, likelihood and their gradients, fused         |
//! | [`adam`]    | kernels/adam.cu      | the optimiser step                                     |
//! | [`gemm`]    | cuBLAS (`cuda::ops`) | the dense products                                     |
//! | [`gemm_bf16`] | —                  | the output heads' products in bf16 (`--precision bf16`) |
//!
//! [`engine`] strings them into one step ([`CpuEngine`]); [`trainer`] puts it behind the `Engine`
//! contract with Adam and the noise ([`CpuTrainer`]); [`simd`] holds the vectorised element loops;
//! [`bf16`] the bf16 conversion and tile layouts and [`amx`] the AMX tile microkernel that
//! [`gemm_bf16`] builds the bf16 products from.
//!
//! Where the time goes and how it is spent well (BENCHMARKS.md has the figures): the dense
//! products go to faer in fixed single-threaded tiles (`gemm`); the decoder output is one fused pass
//! per cell (`output`); the encoders' first layer reads only the non-zeros (`sparse`); the element-wise
//! kernels are compiled for AVX-512, AVX2 and SSE2 and the widest is picked at run time (`simd`).
//! Results do not depend on the thread count or the instruction set.

pub mod adam;
pub mod amx;
pub mod bf16;
pub mod engine;
pub mod fc;
pub mod gemm;
pub mod gemm_bf16;
pub mod latent;
pub mod output;
pub mod simd;
pub mod sparse;
pub mod trainer;

pub use engine::{CpuEngine, StepNoise};
pub use trainer::CpuTrainer;
