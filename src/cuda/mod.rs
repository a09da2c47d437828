//! The GPU engine: the same [`Engine`] contract, flat parameter layout and results as the CPU
//! reference, with the forward and backward passes written as fused CUDA kernels (kernels/*.cu)
//! compiled at run time by NVRTC and launched through cudarc; the dense products go to cuBLAS.
//! Like the CPU engine it stands below the user-facing model: it is built from a model's values
//! ([`engine()`]), and knows neither `Scvi` nor the CPU engine.
//!
//! - [`kernels`]: what Rust and the kernels share, each defined once: the embedded sources, the
//!   entry-point names, the constants (passed as `-D` defines) and the `#[repr(C)]` argument
//!   structs;
//! - [`dl`]: the dynamic loader (open a library, look a symbol up, which file holds it);
//! - [`libs`]: finding and loading libcuda / libnvrtc / libcublas of CUDA 12 or 13 at run time,
//!   never panicking when absent, and saying which files were loaded from where;
//! - [`nvrtc`]: compiling the kernels, cached per architecture and source hash;
//! - [`cublas`]: the dense products through cuBLAS;
//! - [`device`]: a device (context, stream, cuBLAS, loaded kernels), memory and launches;
//! - `emu` (builds with the `test-support` feature only, as the test suite's): the host emulation
//!   of the kernels, so that the tests run every kernel where there is no GPU;
//! - [`ops`]: each kernel's launch shape, and the cuBLAS products;
//! - [`engine`](mod@engine): [`CudaEngine`], one training step as a sequence of launches.
//!
//! docs/cuda.md describes the design, what has been verified and how.

pub mod cublas;
pub mod device;
pub mod dl;
#[cfg(feature = "test-support")]
pub mod emu;
pub mod engine;
pub mod kernels;
pub mod libs;
pub mod nvrtc;
pub mod ops;

pub use device::{Counts, DeviceInfo, Gpu};
pub use engine::CudaEngine;

use crate::engine::{AdamConfig, Engine};
use crate::error::{Error, Result};
use crate::model::init::ModelState;

/// The CUDA engine holding `state` on device `index`, or [`Error::Cuda`] saying why there is
/// none (no driver, no NVRTC or cuBLAS, no such device, out of memory, a kernel that does not
/// compile).
pub fn engine(
    state: &ModelState<f32>,
    index: usize,
    seed: u64,
    adam: AdamConfig,
) -> Result<Box<dyn Engine>> {
    engine::check_config(&state.layout.config)?;
    let gpu = Gpu::cuda(index)?;
    Ok(Box::new(CudaEngine::new(gpu, state, seed, adam)?))
}

/// Why no CUDA device can run the GPU engine here, or `Ok(n)` with the number of devices.
pub fn availability() -> Result<usize> {
    for l in libs::Lib::ALL {
        libs::require(l)?;
    }
    let n = device::device_count()?;
    if n == 0 {
        return Err(Error::Cuda("the CUDA driver reports no device".into()));
    }
    Ok(n)
}

/// Whether a CUDA device and the libraries the GPU engine needs are present.
pub fn gpu_available() -> bool {
    availability().is_ok()
}
