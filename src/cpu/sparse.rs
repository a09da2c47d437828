//! The encoders' first layer on sparse input: `y = log1p(x) W[:, :G]^T + W[:, G + cat] + bias`
//! without densifying `x` (B cells, G genes, H outputs). Only the non-zeros of each row are read.

use crate::batch::Minibatch;
use crate::float::Float;
use rayon::prelude::*;

/// `y[b, h] = bias[h] + W[h, G + cat_b] + sum_{g in nz(b)} W[h, g] log1p(x_bg)`.
pub fn sparse_log1p_linear_forward<T: Float>(
    y: &mut [T],
    batch: &Minibatch,
    weight: &[T],
    bias: &[T],
    n_cat: usize,
    n_out: usize,
) {
    let g = batch.n_genes;
    let ldw = g + n_cat;
    y[..batch.len() * n_out]
        .par_chunks_mut(n_out)
        .enumerate()
        .for_each(|(b, row)| {
            let (idx, val) = batch.row(b);
            for (h, out) in row.iter_mut().enumerate() {
                let w = &weight[h * ldw..h * ldw + g];
                let mut acc = bias[h];
                if n_cat > 0 {
                    acc += weight[h * ldw + g + batch.batch[b] as usize];
                }
                for (&j, &v) in idx.iter().zip(val) {
                    acc += w[j as usize] * T::from_f64(v as f64).ln_1p();
                }
                *out = acc;
            }
        });
}

/// `dW[h, g] += sum_b d[b, h] log1p(x_bg)` over the non-zeros, `dW[h, G + cat_b] += d[b, h]`,
/// `dbias[h] += sum_b d[b, h]`. Parallel over output rows h (each thread owns rows of dW).
pub fn sparse_log1p_linear_backward<T: Float>(
    dweight: &mut [T],
    dbias: &mut [T],
    d: &[T],
    batch: &Minibatch,
    n_cat: usize,
    n_out: usize,
) {
    let g = batch.n_genes;
    let ldw = g + n_cat;
    let nb = batch.len();
    dweight[..n_out * ldw]
        .par_chunks_mut(ldw)
        .zip(dbias.par_iter_mut())
        .enumerate()
        .for_each(|(h, (wrow, db))| {
            for b in 0..nb {
                let dv = d[b * n_out + h];
                *db += dv;
                if n_cat > 0 {
                    wrow[g + batch.batch[b] as usize] += dv;
                }
                let (idx, val) = batch.row(b);
                for (&j, &v) in idx.iter().zip(val) {
                    wrow[j as usize] += dv * T::from_f64(v as f64).ln_1p();
                }
            }
        });
}
