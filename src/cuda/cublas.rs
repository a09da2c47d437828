//! cuBLAS, for the dense products: one handle bound to the engine's stream, and `sgemm` in plain
//! f32 (the default math mode, set explicitly: no TF32).
//!
//! Called through its own function table ([`Api`]) looked up in the library [`super::libs`]
//! loaded, `libcublas.so.12` or `libcublas.so.13`: the `_v2` functions used here have the same
//! signatures in both. Status codes stay plain integers, named here.

use super::dl::fn_table;
use super::kernels::DevPtr;
use super::libs::{self, Lib};
use crate::error::{Error, Result};
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;

/// `cublasHandle_t`.
type Handle = *mut c_void;

fn_table! {
    /// The cuBLAS functions scvi-rs calls, as `cublas_api.h` declares them (CUDA 12 and 13 alike).
    struct Api {
        create: "cublasCreate_v2" => fn(*mut Handle) -> c_int,
        destroy: "cublasDestroy_v2" => fn(Handle) -> c_int,
        set_stream: "cublasSetStream_v2" => fn(Handle, *mut c_void) -> c_int,
        set_math_mode: "cublasSetMathMode" => fn(Handle, c_int) -> c_int,
        sgemm: "cublasSgemm_v2" => fn(
            Handle, c_int, c_int, c_int, c_int, c_int, *const f32, *const f32, c_int, *const f32,
            c_int, *const f32, *mut f32, c_int
        ) -> c_int,
    }
}

/// `CUBLAS_OP_N`, `CUBLAS_OP_T`.
const OP_N: c_int = 0;
const OP_T: c_int = 1;
/// `CUBLAS_DEFAULT_MATH`: full f32, no TF32 (TF32 is opt-in, `CUBLAS_TF32_TENSOR_OP_MATH`).
const DEFAULT_MATH: c_int = 0;

fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    // SAFETY: the table's signatures are cublas_api.h's.
    unsafe { libs::functions(Lib::Cublas, &API, Api::load) }
}

/// `cublasStatus_t` by name.
fn status_name(s: c_int) -> &'static str {
    match s {
        1 => "CUBLAS_STATUS_NOT_INITIALIZED",
        3 => "CUBLAS_STATUS_ALLOC_FAILED",
        7 => "CUBLAS_STATUS_INVALID_VALUE",
        8 => "CUBLAS_STATUS_ARCH_MISMATCH",
        11 => "CUBLAS_STATUS_MAPPING_ERROR",
        13 => "CUBLAS_STATUS_EXECUTION_FAILED",
        14 => "CUBLAS_STATUS_INTERNAL_ERROR",
        15 => "CUBLAS_STATUS_NOT_SUPPORTED",
        16 => "CUBLAS_STATUS_LICENSE_ERROR",
        _ => "cuBLAS error",
    }
}

fn check(s: c_int, what: &str) -> Result<()> {
    if s == 0 {
        Ok(())
    } else {
        Err(Error::Cuda(format!("{what}: {} ({s})", status_name(s))))
    }
}

/// The arguments of a column-major `C = alpha op(A) op(B) + beta C`, as cuBLAS's sgemm takes them:
/// `op(A)` m x k, `op(B)` k x n, C m x n, leading dimensions in elements.
#[derive(Clone, Copy, Debug)]
pub struct Sgemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: DevPtr,
    pub lda: usize,
    pub b: DevPtr,
    pub ldb: usize,
    pub beta: f32,
    pub c: DevPtr,
    pub ldc: usize,
}

/// A cuBLAS handle bound to one stream; destroyed on drop.
pub struct Blas {
    api: &'static Api,
    handle: Handle,
}

impl Blas {
    /// A handle whose work goes to `stream` (a `CUstream`), in the default (f32) math mode. The
    /// caller's CUDA context must be current.
    pub(crate) fn new(stream: *mut c_void) -> Result<Blas> {
        let api = api()?;
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; the handle is destroyed once, in Drop.
        check(
            unsafe { (api.create)(&mut handle) },
            "creating a cuBLAS handle",
        )?;
        let blas = Blas { api, handle };
        // SAFETY: `handle` is live; `stream` belongs to the current context.
        check(
            unsafe { (api.set_stream)(handle, stream) },
            "binding cuBLAS to the stream",
        )?;
        // SAFETY: as above.
        check(
            unsafe { (api.set_math_mode)(handle, DEFAULT_MATH) },
            "setting cuBLAS's math mode",
        )?;
        Ok(blas)
    }

    /// Queue `g` on the handle's stream.
    ///
    /// # Safety
    /// The pointers must address matrices of the stated shapes and leading dimensions in live
    /// device memory of the handle's context, C not aliasing A or B.
    pub unsafe fn sgemm(&self, g: &Sgemm) -> Result<()> {
        let op = |t: bool| if t { OP_T } else { OP_N };
        check(
            (self.api.sgemm)(
                self.handle,
                op(g.trans_a),
                op(g.trans_b),
                g.m as c_int,
                g.n as c_int,
                g.k as c_int,
                &g.alpha,
                g.a as *const f32,
                g.lda as c_int,
                g.b as *const f32,
                g.ldb as c_int,
                &g.beta,
                g.c as *mut f32,
                g.ldc as c_int,
            ),
            "cuBLAS sgemm",
        )
    }
}

// SAFETY: a cuBLAS handle may be used from any host thread, one at a time; `Blas` is only ever
// used through `&mut`-free calls of the one engine that owns it, which is not shared across
// threads (it is `Send`, not `Sync`).
unsafe impl Send for Blas {}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { (self.api.destroy)(self.handle) };
    }
}
