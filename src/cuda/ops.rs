//! The kernels' argument structs (`#[repr(C)]` mirrors of the structs of the same name in
//! kernels/*.cu, field for field) and their launches: grid and block shapes live here, next to the
//! struct, so the engine and the tests launch a kernel the same way.
//!
//! Pointers are raw device addresses ([`DevPtr`]); 0 stands for "absent" where a kernel allows it.

use super::device::{DevPtr, Gpu, Launch};
use crate::error::Result;
use crate::rng::Stream;
use cudarc::driver::DeviceRepr;

/// Philox key and stream (`PhiloxKey` in common.cuh): element `i` of stream (`stream`, `index`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PhiloxKey {
    pub key0: u32,
    pub key1: u32,
    pub stream: u32,
    pub pad: u32,
    pub index: u64,
}

impl PhiloxKey {
    /// The same key as `Philox::new(seed)` in src/rng.rs, for one stream.
    pub fn new(seed: u64, stream: Stream, index: u64) -> Self {
        PhiloxKey {
            key0: seed as u32,
            key1: (seed >> 32) as u32,
            stream: stream as u32,
            pad: 0,
            index,
        }
    }
}

pub const FC_HAS_BN: u32 = 1;
pub const FC_TRAIN: u32 = 2;
pub const FC_ACT: u32 = 4;
pub const FC_DROPOUT: u32 = 8;

/// fc.cu `FcPostArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FcPostArgs {
    pub lin: DevPtr,
    pub bias: DevPtr,
    pub weight: DevPtr,
    pub dweight: DevPtr,
    pub dbias: DevPtr,
    pub cats: DevPtr,
    pub gamma: DevPtr,
    pub beta: DevPtr,
    pub dgamma: DevPtr,
    pub dbeta: DevPtr,
    pub running_mean: DevPtr,
    pub running_var: DevPtr,
    pub num_batches_tracked: DevPtr,
    pub xhat: DevPtr,
    pub inv_std: DevPtr,
    pub pre: DevPtr,
    pub out: DevPtr,
    pub key: PhiloxKey,
    pub dropout_p: f64,
    pub dropout_scale: f32,
    pub flags: u32,
    pub rows: u32,
    pub n: u32,
    pub n_in: u32,
    pub n_cat: u32,
    pub ldw: u32,
    pub pad: u32,
}

/// fc.cu `LayerNormArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LayerNormArgs {
    pub pre: DevPtr,
    pub out: DevPtr,
    pub d: DevPtr,
    pub ln_inv: DevPtr,
    pub key: PhiloxKey,
    pub dropout_p: f64,
    pub dropout_scale: f32,
    pub flags: u32,
    pub rows: u32,
    pub n: u32,
}

/// sparse.cu `SparseLinearArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SparseLinearArgs {
    pub lin: DevPtr,
    pub d: DevPtr,
    pub wt: DevPtr,
    pub dweight: DevPtr,
    pub indptr: DevPtr,
    pub indices: DevPtr,
    pub values: DevPtr,
    pub rows: u32,
    pub h: u32,
    pub genes: u32,
    pub ldw: u32,
    pub tile: u32,
    pub pad: u32,
}

/// sparse.cu `TransposeArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TransposeArgs {
    pub src: DevPtr,
    pub dst: DevPtr,
    pub rows_src: u32,
    pub cols_src: u32,
    pub ld_src: u32,
    pub pad: u32,
}

pub const LAT_LN: u32 = 1;
pub const LAT_OBSERVED: u32 = 2;

/// latent.cu `LatentArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LatentArgs {
    pub q_m: DevPtr,
    pub b_m: DevPtr,
    pub u: DevPtr,
    pub b_v: DevPtr,
    pub q_v: DevPtr,
    pub z: DevPtr,
    pub eps: DevPtr,
    pub kl: DevPtr,
    pub dz: DevPtr,
    pub d_q_m: DevPtr,
    pub d_u: DevPtr,
    pub log_library: DevPtr,
    pub prior_means: DevPtr,
    pub prior_vars: DevPtr,
    pub codes: DevPtr,
    pub key: PhiloxKey,
    pub kl_w: f32,
    pub flags: u32,
    pub rows: u32,
    pub n: u32,
}

pub const LIK_ZINB: u32 = 0;
pub const LIK_NB: u32 = 1;
pub const LIK_POISSON: u32 = 2;
pub const THETA_NONE: u32 = 0;
pub const THETA_GENE: u32 = 1;
pub const THETA_CATEGORY: u32 = 2;
pub const THETA_CELL: u32 = 3;

/// output.cu `OutputArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OutputArgs {
    pub rho: DevPtr,
    pub b_rho: DevPtr,
    pub d_rho: DevPtr,
    pub pi: DevPtr,
    pub b_pi: DevPtr,
    pub r: DevPtr,
    pub b_r: DevPtr,
    pub px_r: DevPtr,
    pub codes: DevPtr,
    pub library: DevPtr,
    pub indptr: DevPtr,
    pub indices: DevPtr,
    pub values: DevPtr,
    pub rec: DevPtr,
    pub d_library: DevPtr,
    pub grad_scale: f64,
    pub likelihood: u32,
    pub theta_mode: u32,
    pub n_cat: u32,
    pub rows: u32,
    pub genes: u32,
    pub pad: u32,
}

/// output.cu `ColumnArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ColumnArgs {
    pub d: DevPtr,
    pub out: DevPtr,
    pub codes: DevPtr,
    pub rows: u32,
    pub n: u32,
    pub n_cat: u32,
    pub pad: u32,
}

/// adam.cu `AdamArgs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AdamArgs {
    pub params: DevPtr,
    pub grads: DevPtr,
    pub m: DevPtr,
    pub v: DevPtr,
    pub mask: DevPtr,
    pub n: u64,
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub one_minus_beta1: f32,
    pub one_minus_beta2: f32,
    pub weight_decay: f32,
    pub eps: f32,
}

// SAFETY: each is #[repr(C)], made of integers, floats and device addresses, and mirrors the
// kernel-side struct of the same name field for field (tests/cuda_kernels.rs checks the sizes
// against the C++ compiler's).
unsafe impl DeviceRepr for PhiloxKey {}
unsafe impl DeviceRepr for FcPostArgs {}
unsafe impl DeviceRepr for LayerNormArgs {}
unsafe impl DeviceRepr for SparseLinearArgs {}
unsafe impl DeviceRepr for TransposeArgs {}
unsafe impl DeviceRepr for LatentArgs {}
unsafe impl DeviceRepr for OutputArgs {}
unsafe impl DeviceRepr for ColumnArgs {}
unsafe impl DeviceRepr for AdamArgs {}

/// The structs' sizes, for the layout check against the C++ compiler's (`emu::c_struct_size`).
pub fn struct_sizes() -> Vec<(&'static str, usize)> {
    use std::mem::size_of;
    vec![
        ("PhiloxKey", size_of::<PhiloxKey>()),
        ("FcPostArgs", size_of::<FcPostArgs>()),
        ("LayerNormArgs", size_of::<LayerNormArgs>()),
        ("SparseLinearArgs", size_of::<SparseLinearArgs>()),
        ("TransposeArgs", size_of::<TransposeArgs>()),
        ("LatentArgs", size_of::<LatentArgs>()),
        ("OutputArgs", size_of::<OutputArgs>()),
        ("ColumnArgs", size_of::<ColumnArgs>()),
        ("AdamArgs", size_of::<AdamArgs>()),
    ]
}

const FC_TX: u32 = 32;
const FC_TY: u32 = 8;

/// fc_post_fwd / fc_post_bwd: one block of 32 x 8 per 32 columns.
pub fn fc_post(gpu: &Gpu, a: &FcPostArgs, backward: bool) -> Result<()> {
    let l = Launch {
        grid: (a.n.div_ceil(FC_TX).max(1), 1, 1),
        block: (FC_TX, FC_TY, 1),
        smem: 0,
    };
    gpu.launch(
        if backward {
            "fc_post_bwd"
        } else {
            "fc_post_fwd"
        },
        l,
        a,
    )
}

/// layer_norm_fwd / layer_norm_bwd: one block of 128 per row.
pub fn layer_norm(gpu: &Gpu, a: &LayerNormArgs, backward: bool) -> Result<()> {
    let name = if backward {
        "layer_norm_bwd"
    } else {
        "layer_norm_fwd"
    };
    gpu.launch(name, Launch::new(a.rows, 128), a)
}

/// sparse_log1p_linear_fwd: one block of 128 per cell.
pub fn sparse_linear_fwd(gpu: &Gpu, a: &SparseLinearArgs) -> Result<()> {
    gpu.launch("sparse_log1p_linear_fwd", Launch::new(a.rows, 128), a)
}

/// Genes per block of sparse_log1p_linear_bwd: a [tile, H] f32 accumulator in at most 48 KiB.
pub fn sparse_tile(h: u32) -> u32 {
    (12288 / h.max(1)).clamp(1, 32)
}

/// sparse_log1p_linear_bwd: one block of 128 per `a.tile` genes (set by [`sparse_tile`]).
pub fn sparse_linear_bwd(gpu: &Gpu, a: &SparseLinearArgs) -> Result<()> {
    let mut a = *a;
    a.tile = sparse_tile(a.h);
    let l = Launch {
        grid: (a.genes.div_ceil(a.tile).max(1), 1, 1),
        block: (128, 1, 1),
        smem: a.tile * a.h * 4,
    };
    gpu.launch("sparse_log1p_linear_bwd", l, &a)
}

/// transpose_fwd: 32 x 32 tiles.
pub fn transpose(gpu: &Gpu, a: &TransposeArgs) -> Result<()> {
    let l = Launch {
        grid: (
            a.cols_src.div_ceil(32).max(1),
            a.rows_src.div_ceil(32).max(1),
            1,
        ),
        block: (32, 8, 1),
        smem: 0,
    };
    gpu.launch("transpose_fwd", l, a)
}

/// The latent kernels: one thread per cell.
pub fn latent(gpu: &Gpu, name: &'static str, a: &LatentArgs) -> Result<()> {
    gpu.launch(name, Launch::cover(a.rows as usize, 128), a)
}

/// decoder_output_fwd (loss only) / decoder_output_bwd (loss and gradients): one block per cell.
pub fn decoder_output(gpu: &Gpu, a: &OutputArgs, grads: bool) -> Result<()> {
    let name = if grads {
        "decoder_output_bwd"
    } else {
        "decoder_output_fwd"
    };
    gpu.launch(name, Launch::new(a.rows, 256), a)
}

/// column_sum_bwd: one thread per column.
pub fn column_sum(gpu: &Gpu, a: &ColumnArgs) -> Result<()> {
    gpu.launch("column_sum_bwd", Launch::cover(a.n as usize, 128), a)
}

/// adam_step: one thread per element.
pub fn adam(gpu: &Gpu, a: &AdamArgs) -> Result<()> {
    gpu.launch("adam_step", Launch::cover(a.n as usize, 256), a)
}

/// `y = x W[:, :n_in]^T` for row-major y `[B, n_out]`, x `[B, n_in]`, W `[n_out, ldw]`.
#[allow(clippy::too_many_arguments)]
pub fn linear_fwd(
    gpu: &Gpu,
    y: DevPtr,
    x: DevPtr,
    w: DevPtr,
    b: usize,
    n_in: usize,
    ldw: usize,
    n_out: usize,
) -> Result<()> {
    if n_in == 0 {
        return gpu.zero(y, b * n_out * 4);
    }
    gpu.sgemm(
        true, false, n_out, b, n_in, 1.0, w, ldw, x, n_in, 0.0, y, n_out,
    )
}

/// `dW[:, :n_in] += d^T x`.
#[allow(clippy::too_many_arguments)]
pub fn linear_wgrad(
    gpu: &Gpu,
    dw: DevPtr,
    d: DevPtr,
    x: DevPtr,
    b: usize,
    n_in: usize,
    ldw: usize,
    n_out: usize,
) -> Result<()> {
    gpu.sgemm(
        false, true, n_in, n_out, b, 1.0, x, n_in, d, n_out, 1.0, dw, ldw,
    )
}

/// `dx = d W[:, :n_in]` (`accumulate`: `dx += ...`).
#[allow(clippy::too_many_arguments)]
pub fn linear_dgrad(
    gpu: &Gpu,
    dx: DevPtr,
    d: DevPtr,
    w: DevPtr,
    b: usize,
    n_in: usize,
    ldw: usize,
    n_out: usize,
    accumulate: bool,
) -> Result<()> {
    let beta = if accumulate { 1.0 } else { 0.0 };
    gpu.sgemm(
        false, false, n_in, b, n_out, 1.0, w, ldw, d, n_out, beta, dx, n_in,
    )
}
