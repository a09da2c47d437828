//! The kernels' launches: grid and block shapes live here, next to the launch, so the engine and
//! the tests launch a kernel the same way (the argument structs and entry names are in
//! [`super::kernels`]); and the dense products, as cuBLAS calls.

use super::device::{Gpu, Launch, Sgemm};
use super::kernels::*;
use crate::error::Result;
use crate::model::layout::LinearShape;

/// fc_post_fwd / fc_post_bwd: one block of 32 x 8 per 32 columns.
pub fn fc_post(gpu: &Gpu, a: &FcPostArgs, backward: bool) -> Result<()> {
    let l = Launch {
        grid: (a.pass.n.div_ceil(FC_TX).max(1), 1, 1),
        block: (FC_TX, FC_TY, 1),
        smem: 0,
    };
    gpu.launch([FC_POST_FWD, FC_POST_BWD][backward as usize], l, a)
}

/// layer_norm_fwd / layer_norm_bwd: one block of 128 per row.
pub fn layer_norm(gpu: &Gpu, a: &LayerNormArgs, backward: bool) -> Result<()> {
    let name = [LAYER_NORM_FWD, LAYER_NORM_BWD][backward as usize];
    gpu.launch(name, Launch::new(a.pass.rows, LN_THREADS), a)
}

/// sparse_log1p_linear_fwd: one block of 128 per cell.
pub fn sparse_linear_fwd(gpu: &Gpu, a: &SparseLinearArgs) -> Result<()> {
    gpu.launch(SPARSE_LOG1P_LINEAR_FWD, Launch::new(a.rows, SP_THREADS), a)
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
        block: (SP_THREADS, 1, 1),
        smem: a.tile * a.h * 4,
    };
    gpu.launch(SPARSE_LOG1P_LINEAR_BWD, l, &a)
}

/// transpose_fwd: `TR_TILE` x `TR_TILE` tiles.
pub fn transpose(gpu: &Gpu, a: &TransposeArgs) -> Result<()> {
    let l = Launch {
        grid: (
            a.cols_src.div_ceil(TR_TILE).max(1),
            a.rows_src.div_ceil(TR_TILE).max(1),
            1,
        ),
        block: (TR_TILE, TR_ROWS, 1),
        smem: 0,
    };
    gpu.launch(TRANSPOSE_FWD, l, a)
}

/// The latent kernels (`REPARAM_KL_FWD`, `REPARAM_KL_BWD`, `LIBRARY_FWD`, `LIBRARY_BWD`): one
/// thread per cell.
pub fn latent(gpu: &Gpu, name: &'static str, a: &LatentArgs) -> Result<()> {
    gpu.launch(name, Launch::cover(a.rows as usize, 128), a)
}

/// decoder_output_fwd (loss only) / decoder_output_bwd (loss and gradients): one block per cell.
pub fn decoder_output(gpu: &Gpu, a: &OutputArgs, grads: bool) -> Result<()> {
    let name = [DECODER_OUTPUT_FWD, DECODER_OUTPUT_BWD][grads as usize];
    gpu.launch(name, Launch::new(a.rows, OUT_THREADS), a)
}

/// column_sum_bwd: one thread per column.
pub fn column_sum(gpu: &Gpu, a: &ColumnArgs) -> Result<()> {
    gpu.launch(COLUMN_SUM_BWD, Launch::cover(a.n as usize, 128), a)
}

/// adam_step: one thread per element.
pub fn adam(gpu: &Gpu, a: &AdamArgs) -> Result<()> {
    gpu.launch(ADAM_STEP, Launch::cover(a.n as usize, 256), a)
}

/// gather_offsets_fwd (one block: the scan), then gather_rows_fwd (one block per cell).
pub fn gather(gpu: &Gpu, a: &GatherArgs) -> Result<()> {
    gpu.launch(GATHER_OFFSETS_FWD, Launch::new(1, GATHER_THREADS), a)?;
    gpu.launch(GATHER_ROWS_FWD, Launch::new(a.rows, GATHER_THREADS), a)
}

/// `y = x W[:, :n_in]^T` for row-major y `[B, n_out]`, x `[B, n_in]`.
pub fn linear_fwd(gpu: &Gpu, y: DevPtr, x: DevPtr, w: DevPtr, s: LinearShape) -> Result<()> {
    if s.n_in == 0 {
        return gpu.zero(y, s.b * s.n_out * 4);
    }
    // Column-major: y^T [n_out, B] = W[:, :n_in] (as [n_in, n_out], transposed) x^T.
    gpu.sgemm(&Sgemm {
        trans_a: true,
        trans_b: false,
        m: s.n_out,
        n: s.b,
        k: s.n_in,
        alpha: 1.0,
        a: w,
        lda: s.ldw,
        b: x,
        ldb: s.n_in,
        beta: 0.0,
        c: y,
        ldc: s.n_out,
    })
}

/// `dW[:, :n_in] += d^T x`.
pub fn linear_wgrad(gpu: &Gpu, dw: DevPtr, d: DevPtr, x: DevPtr, s: LinearShape) -> Result<()> {
    gpu.sgemm(&Sgemm {
        trans_a: false,
        trans_b: true,
        m: s.n_in,
        n: s.n_out,
        k: s.b,
        alpha: 1.0,
        a: x,
        lda: s.n_in,
        b: d,
        ldb: s.n_out,
        beta: 1.0,
        c: dw,
        ldc: s.ldw,
    })
}

/// `dx = d W[:, :n_in]` (`accumulate`: `dx += ...`).
pub fn linear_dgrad(
    gpu: &Gpu,
    dx: DevPtr,
    d: DevPtr,
    w: DevPtr,
    s: LinearShape,
    accumulate: bool,
) -> Result<()> {
    gpu.sgemm(&Sgemm {
        trans_a: false,
        trans_b: false,
        m: s.n_in,
        n: s.b,
        k: s.n_out,
        alpha: 1.0,
        a: w,
        lda: s.ldw,
        b: d,
        ldb: s.n_out,
        beta: if accumulate { 1.0 } else { 0.0 },
        c: dx,
        ldc: s.n_in,
    })
}
