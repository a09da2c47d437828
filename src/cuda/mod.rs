//! The GPU engine: the same [`Engine`] interface, flat parameter layout and results as the CPU
//! reference, with the forward and backward passes written as fused CUDA kernels (kernels/*.cu)
//! compiled at run time by NVRTC and launched through cudarc; the dense products go to cuBLAS.
//!
//! - [`libs`]: finding libcuda / libnvrtc / libcublas at run time, never panicking when absent;
//! - [`nvrtc`]: the embedded kernel sources and their compilation, cached per architecture and
//!   source hash;
//! - [`device`]: a device (context, stream, cuBLAS, loaded kernels) or the host emulation of the
//!   kernels ([`emu`], tests only), memory and launches;
//! - [`ops`]: the kernels' `#[repr(C)]` argument structs and launch shapes;
//! - [`engine`]: [`CudaEngine`], one training step as a sequence of launches;
//! - [`harness`]: what the GPU tests share (skipping with a reason, named tolerances).
//!
//! docs/cuda.md describes the design, what has been verified and how.

pub mod device;
pub mod emu;
pub mod engine;
pub mod harness;
pub mod libs;
pub mod nvrtc;
pub mod ops;

pub use device::{DeviceInfo, Gpu};
pub use engine::CudaEngine;

use crate::engine::Engine;
use crate::error::Result;
use crate::train::AdamConfig;

/// The CUDA engine for `model` on device `index`, or [`crate::Error::Cuda`] saying why there is
/// none (no driver, no NVRTC or cuBLAS, no such device, out of memory, a kernel that does not
/// compile).
pub fn engine(
    model: &crate::scvi::Scvi,
    index: usize,
    seed: u64,
    adam: AdamConfig,
) -> Result<Box<dyn Engine>> {
    engine::check_config(model.config())?;
    let gpu = Gpu::cuda(index)?;
    Ok(Box::new(CudaEngine::new(gpu, &model.state, seed, adam)?))
}

/// Why no CUDA device can run the GPU engine here, or `Ok(n)` with the number of devices.
pub fn availability() -> Result<usize> {
    for l in [libs::Lib::Driver, libs::Lib::Nvrtc, libs::Lib::Cublas] {
        libs::require(l)?;
    }
    let n = device::device_count()?;
    if n == 0 {
        return Err(crate::Error::Cuda(
            "the CUDA driver reports no device".into(),
        ));
    }
    Ok(n)
}

/// Whether a CUDA device and the libraries the GPU engine needs are present.
pub fn gpu_available() -> bool {
    availability().is_ok()
}
