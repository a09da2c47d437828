//! The native half of the `scvi_rs` Python package (`scvi_rs._core`): data handed over without
//! copies, the model, and the plumbing (threads, the GIL, Ctrl-C, errors). The scvi-tools-shaped
//! API is Python, in `scvi_rs/__init__.py`.

mod after;
mod csr;
mod data;
mod errors;
mod model;
mod run;

use pyo3::prelude::*;

/// Whether a GPU with the CUDA driver, NVRTC and cuBLAS can be used.
#[pyfunction]
fn gpu_available() -> bool {
    scvi_rs::cuda::gpu_available()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<data::Data>()?;
    m.add_class::<model::Model>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(gpu_available, m)?)?;
    Ok(())
}
