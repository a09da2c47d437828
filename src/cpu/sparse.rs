//! The encoders' first layer on sparse input, `y = log1p(x) W[:, :G]^T + W[:, G + cat] + bias`,
//! without densifying `x` (B cells, G genes, H outputs, W `[H, G + K]` as PyTorch stores it).
//!
//! Forward: W's gene columns are transposed once per step into `Wt` `[G, H]` (8x8 register tiles,
//! in parallel over genes), then each cell sums the rows of `Wt` of its non-zeros, scaled by
//! `log1p(x)`, in registers (64 outputs at a time), in parallel over cells.
//!
//! Backward: the non-zeros are sorted by gene once (a counting sort into a CSC copy of the indices,
//! stable, so each gene's cells stay in order); then, in parallel over ranges of blocks of `GB`
//! genes, each gene's row `sum_b log1p(x_bg) d[b, :]` is summed in registers into an L1 block
//! `[GB, H]`, which is added, transposed, into dW's columns. Row order within the CSR does not
//! matter to either direction.
//!
//! Each output element is summed in the same order (bias, one-hot, then the row's non-zeros in
//! order; dW over cells in order) however the work is split between threads.
//!
//! CPU twin of kernels/sparse.cu (checked by tests/cuda_kernels.rs `sparse_*`):
//! [`sparse_log1p_linear_forward`] of `sparse_log1p_linear_fwd` (whose bias and one-hot column
//! fc.cu adds), [`sparse_log1p_linear_backward`] of `sparse_log1p_linear_bwd` (the gene columns
//! of dW), and the transposition into `Wt` (`simd::transpose`) of `transpose_fwd`.

use super::gemm::SendPtr;
use super::simd::{dispatch, transpose, transpose_raw, Kernel};
use crate::batch::Minibatch;
use crate::float::Float;
use crate::math::likelihood::CountTables;
use rayon::prelude::*;

/// Genes per block.
const GB: usize = 32;

/// The minibatch's non-zeros as the layer reads them: `log1p(x)` in T.
#[derive(Default, Debug)]
pub struct SparseInput<T> {
    pub lx: Vec<T>,
}

impl<T: Float> SparseInput<T> {
    /// Compute `log1p(x)` for every non-zero (a table for whole counts).
    pub fn prepare(&mut self, batch: &Minibatch) {
        let tables = CountTables::get();
        self.lx.clear();
        self.lx
            .extend(batch.values.iter().map(|&v| tables.log1p::<T>(v)));
    }

    /// `(indptr, indices, log1p values)`.
    fn view<'a>(&'a self, batch: &'a Minibatch) -> (&'a [usize], &'a [u32], &'a [T]) {
        (&batch.indptr, &batch.indices, &self.lx)
    }
}

/// Buffers of the layer, reused across steps.
#[derive(Default, Debug)]
pub struct SparseScratch<T> {
    /// W's gene columns, transposed: `[G, H]`.
    wt: Vec<T>,
    /// The non-zeros by gene: `csc_ptr[j]..csc_ptr[j + 1]` index `csc_cell` / `csc_lx`.
    csc_ptr: Vec<usize>,
    csc_cell: Vec<u32>,
    csc_lx: Vec<T>,
    /// One `[GB, H]` block per task.
    blocks: Vec<Vec<T>>,
}

impl<T: Float> SparseScratch<T> {
    /// The CSC copy of the minibatch's non-zeros (counting sort by gene, stable).
    fn build_csc(&mut self, indptr: &[usize], idx: &[u32], lx: &[T], g: usize) {
        let nnz = idx.len();
        let ptr = &mut self.csc_ptr;
        ptr.clear();
        ptr.resize(g + 1, 0);
        for &j in idx {
            ptr[j as usize + 1] += 1;
        }
        for j in 0..g {
            ptr[j + 1] += ptr[j];
        }
        self.csc_cell.resize(nnz, 0);
        self.csc_lx.resize(nnz, T::ZERO);
        for b in 0..indptr.len() - 1 {
            for p in indptr[b]..indptr[b + 1] {
                let j = idx[p] as usize;
                let q = ptr[j];
                ptr[j] += 1;
                self.csc_cell[q] = b as u32;
                self.csc_lx[q] = lx[p];
            }
        }
        // ptr[j] now holds the end of gene j: shift back to starts.
        for j in (1..=g).rev() {
            ptr[j] = ptr[j - 1];
        }
        ptr[0] = 0;
    }
}

/// `y[b, h] = bias[h] + W[h, G + cat_b] + sum_{g in nz(b)} W[h, g] log1p(x_bg)`, `y` `[B, H]`.
#[allow(clippy::too_many_arguments)]
pub fn sparse_log1p_linear_forward<T: Float>(
    y: &mut [T],
    batch: &Minibatch,
    input: &SparseInput<T>,
    weight: &[T],
    bias: &[T],
    n_cat: usize,
    n_out: usize,
    scratch: &mut SparseScratch<T>,
) {
    let dims = Dims::new(batch, n_cat, n_out);
    let (Dims { h, g, ldw }, nb) = (dims, batch.len());
    assert!(y.len() >= nb * h && weight.len() >= h * ldw && bias.len() >= h);
    // Wt = W[:, :G]^T, 64 genes per task.
    const GENES_PER_TASK: usize = 64;
    scratch.wt.resize(g * h, T::ZERO);
    scratch.wt[..g * h]
        .par_chunks_mut(GENES_PER_TASK * h)
        .enumerate()
        .for_each(|(t, wt)| {
            let j0 = t * GENES_PER_TASK;
            let nj = wt.len() / h;
            transpose::<T, false>(&weight[j0..], ldw, h, nj, wt, h);
        });
    let wt = &scratch.wt[..g * h];
    let (indptr, idx, lx) = input.view(batch);
    const CELLS_PER_TASK: usize = 8;
    y[..nb * h]
        .par_chunks_mut(CELLS_PER_TASK * h)
        .enumerate()
        .for_each(|(t, y)| {
            dispatch(ForwardCells {
                y,
                b0: t * CELLS_PER_TASK,
                dims,
                cats: &batch.batch,
                n_cat,
                weight,
                bias,
                wt,
                indptr,
                idx,
                lx,
            })
        });
}

/// The layer's sizes: H outputs, G genes, the weight's row length `ldw = G + n_cat`.
#[derive(Clone, Copy)]
struct Dims {
    h: usize,
    g: usize,
    ldw: usize,
}

impl Dims {
    fn new(batch: &Minibatch, n_cat: usize, n_out: usize) -> Self {
        Dims {
            h: n_out,
            g: batch.n_genes,
            ldw: batch.n_genes + n_cat,
        }
    }
}

struct ForwardCells<'a, T> {
    y: &'a mut [T],
    b0: usize,
    dims: Dims,
    cats: &'a [u32],
    n_cat: usize,
    weight: &'a [T],
    bias: &'a [T],
    wt: &'a [T],
    indptr: &'a [usize],
    idx: &'a [u32],
    lx: &'a [T],
}

/// Outputs accumulated in registers at a time.
const HB: usize = 64;

impl<T: Float> Kernel for ForwardCells<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let ForwardCells {
            y,
            b0,
            dims: Dims { h, g, ldw },
            cats,
            n_cat,
            weight,
            bias,
            wt,
            indptr,
            idx,
            lx,
        } = self;
        for (i, row) in y.chunks_mut(h).enumerate() {
            let b = b0 + i;
            let (lo, hi) = (indptr[b], indptr[b + 1]);
            let (idx, lx) = (&idx[lo..hi], &lx[lo..hi]);
            row.copy_from_slice(&bias[..h]);
            if n_cat > 0 {
                let c = g + cats[b] as usize;
                for (k, v) in row.iter_mut().enumerate() {
                    *v += weight[k * ldw + c];
                }
            }
            let mut h0 = 0;
            while h0 + HB <= h {
                let mut acc = [T::ZERO; HB];
                acc.copy_from_slice(&row[h0..h0 + HB]);
                for (&j, &v) in idx.iter().zip(lx) {
                    let w = &wt[j as usize * h + h0..j as usize * h + h0 + HB];
                    for k in 0..HB {
                        acc[k] += w[k] * v;
                    }
                }
                row[h0..h0 + HB].copy_from_slice(&acc);
                h0 += HB;
            }
            if h0 < h {
                let n = h - h0;
                let out = &mut row[h0..h];
                for (&j, &v) in idx.iter().zip(lx) {
                    let w = &wt[j as usize * h + h0..j as usize * h + h];
                    for k in 0..n {
                        out[k] += w[k] * v;
                    }
                }
            }
        }
    }
}

/// `dW[h, g] += sum_b d[b, h] log1p(x_bg)` over the non-zeros, `dW[h, G + cat_b] += d[b, h]`,
/// `dbias[h] += sum_b d[b, h]`; `d` is `[B, H]`.
#[allow(clippy::too_many_arguments)]
pub fn sparse_log1p_linear_backward<T: Float>(
    dweight: &mut [T],
    dbias: &mut [T],
    d: &[T],
    batch: &Minibatch,
    input: &SparseInput<T>,
    n_cat: usize,
    n_out: usize,
    scratch: &mut SparseScratch<T>,
) {
    let dims = Dims::new(batch, n_cat, n_out);
    let (Dims { h, g, ldw }, nb) = (dims, batch.len());
    assert!(dweight.len() >= h * ldw && d.len() >= nb * h && dbias.len() >= h);
    for b in 0..nb {
        let dr = &d[b * h..(b + 1) * h];
        for (acc, &v) in dbias[..h].iter_mut().zip(dr) {
            *acc += v;
        }
        if n_cat > 0 {
            let c = g + batch.batch[b] as usize;
            for (k, &v) in dr.iter().enumerate() {
                dweight[k * ldw + c] += v;
            }
        }
    }
    let (indptr, idx, lx) = input.view(batch);
    scratch.build_csc(indptr, idx, lx, g);
    // Gene blocks split into contiguous ranges, a few per thread.
    let n_blocks = g.div_ceil(GB);
    let threads = rayon::current_num_threads();
    let n_tasks = (threads * 2).min(n_blocks).max(1);
    let per = n_blocks.div_ceil(n_tasks);
    let n_tasks = n_blocks.div_ceil(per);
    let SparseScratch {
        csc_ptr,
        csc_cell,
        csc_lx,
        blocks,
        ..
    } = scratch;
    if blocks.len() < n_tasks {
        blocks.resize_with(n_tasks, Vec::new);
    }
    let dp = SendPtr(dweight.as_mut_ptr());
    blocks[..n_tasks]
        .par_iter_mut()
        .enumerate()
        .for_each(|(t, acc)| {
            acc.resize(GB * h, T::ZERO);
            dispatch(BackwardTask {
                dweight: dp,
                blocks: t * per..((t + 1) * per).min(n_blocks),
                d,
                dims,
                ptr: csc_ptr,
                cell: csc_cell,
                lx: csc_lx,
                acc,
            });
        });
}

struct BackwardTask<'a, T> {
    /// dW `[H, ldw]`; the task writes only the columns of its blocks.
    dweight: SendPtr<T>,
    blocks: std::ops::Range<usize>,
    d: &'a [T],
    dims: Dims,
    ptr: &'a [usize],
    cell: &'a [u32],
    lx: &'a [T],
    acc: &'a mut [T],
}

impl<T: Float> Kernel for BackwardTask<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let BackwardTask {
            dweight,
            blocks,
            d,
            dims: Dims { h, g, ldw },
            ptr,
            cell,
            lx,
            acc,
        } = self;
        for blk in blocks {
            let j0 = blk * GB;
            let j1 = (j0 + GB).min(g);
            let nj = j1 - j0;
            if ptr[j0] == ptr[j1] {
                continue;
            }
            // acc[jj, :] = sum over the gene's cells of log1p(x) d[b, :], in registers.
            for jj in 0..nj {
                let (e0, e1) = (ptr[j0 + jj], ptr[j0 + jj + 1]);
                let row = &mut acc[jj * h..(jj + 1) * h];
                let mut h0 = 0;
                while h0 + HB <= h {
                    let mut r = [T::ZERO; HB];
                    for e in e0..e1 {
                        let b = cell[e] as usize;
                        let (v, dr) = (lx[e], &d[b * h + h0..b * h + h0 + HB]);
                        for k in 0..HB {
                            r[k] += dr[k] * v;
                        }
                    }
                    row[h0..h0 + HB].copy_from_slice(&r);
                    h0 += HB;
                }
                if h0 < h {
                    let out = &mut row[h0..];
                    out.iter_mut().for_each(|x| *x = T::ZERO);
                    for e in e0..e1 {
                        let b = cell[e] as usize;
                        let (v, dr) = (lx[e], &d[b * h + h0..(b + 1) * h]);
                        for (o, &x) in out.iter_mut().zip(dr) {
                            *o += x * v;
                        }
                    }
                }
            }
            // dW[k, j0 + jj] += acc[jj, k].
            // SAFETY: dW holds h * ldw elements (asserted by the caller) and j1 <= g <= ldw, so
            // the block's columns j0..j1 of rows 0..h are in bounds; tasks own disjoint blocks.
            unsafe { transpose_raw::<T, true>(acc, h, nj, h, dweight.get().add(j0), ldw) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forward and backward against the dense definitions, over several gene blocks, with unsorted
    /// rows, an empty row, a one-hot covariate and H not a multiple of the register width, on 1
    /// and 3 threads (f64: the sums are of small integers times table values, compared to 1e-12).
    #[test]
    fn matches_the_dense_definition() {
        let (g, h, n_cat, nb) = (203, 70, 3, 9);
        let ldw = g + n_cat;
        let mut mb = Minibatch {
            n_genes: g,
            indptr: vec![0],
            ..Default::default()
        };
        let mut dense = vec![0.0f64; nb * g];
        for b in 0..nb {
            let mut row: Vec<(u32, f32)> = (0..g)
                .filter(|j| b != 4 && (j * 7 + b * 13) % 5 == 0)
                .map(|j| (j as u32, ((j + b) % 6 + 1) as f32))
                .collect();
            if b % 2 == 1 {
                row.reverse(); // unsorted
            }
            for &(j, v) in &row {
                dense[b * g + j as usize] = v as f64;
                mb.indices.push(j);
                mb.values.push(v);
            }
            mb.indptr.push(mb.indices.len());
            mb.cells.push(b);
            mb.batch.push((b % n_cat) as u32);
            mb.labels.push(0);
            mb.log_library.push(1.0);
        }
        let w: Vec<f64> = (0..h * ldw)
            .map(|i| ((i * 31) % 17) as f64 * 0.125 - 1.0)
            .collect();
        let bias: Vec<f64> = (0..h).map(|i| i as f64 * 0.5).collect();
        let d: Vec<f64> = (0..nb * h).map(|i| ((i * 11) % 7) as f64 - 3.0).collect();
        let lx = |v: f64| v.ln_1p();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut input = SparseInput::<f64>::default();
            let mut scratch = SparseScratch::default();
            let mut y = vec![0.0; nb * h];
            let mut dw = vec![0.5; h * ldw];
            let mut db = vec![0.25; h];
            pool.install(|| {
                input.prepare(&mb);
                sparse_log1p_linear_forward(&mut y, &mb, &input, &w, &bias, n_cat, h, &mut scratch);
                sparse_log1p_linear_backward(
                    &mut dw,
                    &mut db,
                    &d,
                    &mb,
                    &input,
                    n_cat,
                    h,
                    &mut scratch,
                );
            });
            for b in 0..nb {
                for k in 0..h {
                    let mut want = bias[k] + w[k * ldw + g + mb.batch[b] as usize];
                    for j in 0..g {
                        want += w[k * ldw + j] * lx(dense[b * g + j]);
                    }
                    assert!((y[b * h + k] - want).abs() < 1e-12, "y[{b},{k}]");
                }
            }
            for k in 0..h {
                let want_b: f64 = 0.25 + (0..nb).map(|b| d[b * h + k]).sum::<f64>();
                assert!((db[k] - want_b).abs() < 1e-12);
                for j in 0..ldw {
                    let want: f64 = 0.5
                        + (0..nb)
                            .map(|b| {
                                let x = if j < g {
                                    lx(dense[b * g + j])
                                } else if mb.batch[b] as usize == j - g {
                                    1.0
                                } else {
                                    0.0
                                };
                                d[b * h + k] * x
                            })
                            .sum::<f64>();
                    assert!((dw[k * ldw + j] - want).abs() < 1e-12, "dW[{k},{j}]");
                }
            }
        }
    }
}
