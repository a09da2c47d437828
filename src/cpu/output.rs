//! The decoder's output, fused: per cell, one pass over the genes computes the softmax of the scale
//! logits, the mean `mu = exp(library) softmax(rho)`, the log-likelihood of the counts, and its
//! gradient with respect to both heads' logits (`rho`, `pi`) and the dispersion; a second light pass
//! applies the softmax's Jacobian: with `a_g = -(dl_g/dmu_g) mu_g`,
//! `dloss/drho_k = a_k - s_k sum_g a_g` (B cells, G genes). Zeros are handled in bulk between the
//! non-zeros of the sparse row; each count is read once.

use crate::batch::Minibatch;
use crate::float::Float;
use crate::math::likelihood::GeneLikelihood;
use rayon::prelude::*;

/// Where a cell's `theta = exp(px_r)` comes from.
#[derive(Clone, Copy)]
pub enum ThetaSource<'a, T> {
    /// No dispersion (Poisson).
    None,
    /// `theta[g]`, one row per gene (already exponentiated).
    Gene(&'a [T]),
    /// `theta[g, k]` `[G, K]` (exponentiated) for the cell's batch (`k = batch`) or label.
    PerCategory {
        theta: &'a [T],
        n_cat: usize,
        codes: &'a [u32],
    },
    /// Per cell and gene, from the `r` buffer (logits, exponentiated here).
    Cell,
}

/// The `[B, G]` planes of the output and their gradients.
#[derive(Default, Debug)]
pub struct OutputPlanes<T> {
    /// In: the scale logits `rho`. Out: `px_scale = softmax(rho)`.
    pub scale: Vec<T>,
    /// Out: `dloss/drho` (already divided by B).
    pub d_rho: Vec<T>,
    /// In: zero-inflation logits `pi`. Out: `dloss/dpi`.
    pub pi: Vec<T>,
    /// In (gene-cell): dispersion logits `r`. Out: `dloss/dr` per cell and gene, for every
    /// dispersion (the per-gene gradients are its sums over cells).
    pub r: Vec<T>,
    /// Per cell: `-sum_g log p(x_g)`.
    pub reconstruction: Vec<f64>,
    /// Per cell: `dloss/dlibrary` (already divided by B).
    pub d_library: Vec<T>,
}

impl<T: Float> OutputPlanes<T> {
    pub fn resize(&mut self, b: usize, g: usize) {
        for v in [&mut self.scale, &mut self.d_rho, &mut self.pi, &mut self.r] {
            v.resize(b * g, T::ZERO);
        }
        self.reconstruction.resize(b, 0.0);
        self.d_library.resize(b, T::ZERO);
    }
}

/// Forward and (when `grad_scale` is not zero) backward of the output for every cell of `batch`.
/// `library[b]` is the log library size; `grad_scale` is `1/B` for the mean over cells.
pub fn decoder_output<T: Float>(
    planes: &mut OutputPlanes<T>,
    batch: &Minibatch,
    likelihood: GeneLikelihood,
    theta: ThetaSource<T>,
    library: &[T],
    grad_scale: f64,
) {
    let g = batch.n_genes;
    let nb = batch.len();
    let has_pi = likelihood.has_pi();
    let OutputPlanes {
        scale,
        d_rho,
        pi,
        r,
        reconstruction,
        d_library,
    } = planes;
    scale[..nb * g]
        .par_chunks_mut(g)
        .zip(d_rho[..nb * g].par_chunks_mut(g))
        .zip(pi[..nb * g].par_chunks_mut(g))
        .zip(r[..nb * g].par_chunks_mut(g))
        .zip(reconstruction[..nb].par_iter_mut())
        .zip(d_library[..nb].par_iter_mut())
        .enumerate()
        .for_each(|(b, (((((s_row, drho_row), pi_row), r_row), rec), dlib))| {
            // Softmax, as torch does it: exp(rho - max) / sum.
            let mx = s_row
                .iter()
                .fold(T::from_f64(f64::NEG_INFINITY), |m, &v| m.max(v));
            let mut sum = T::ZERO;
            for v in s_row.iter_mut() {
                *v = (*v - mx).exp();
                sum += *v;
            }
            let inv = T::ONE / sum;
            s_row.iter_mut().for_each(|v| *v *= inv);
            let lib = library[b].exp();
            let (idx, val) = batch.row(b);
            let mut next = 0usize;
            let mut rec_sum = 0.0f64;
            let mut sum_a = 0.0f64;
            for j in 0..g {
                let x = if next < idx.len() && idx[next] as usize == j {
                    next += 1;
                    val[next - 1] as f64
                } else {
                    0.0
                };
                let mu = lib * s_row[j];
                let th = match theta {
                    ThetaSource::None => T::ONE,
                    ThetaSource::Gene(t) => t[j],
                    ThetaSource::PerCategory {
                        theta,
                        n_cat,
                        codes,
                    } => theta[j * n_cat + codes[b] as usize],
                    ThetaSource::Cell => r_row[j].exp(),
                };
                let p = if has_pi { pi_row[j].to_f64() } else { 0.0 };
                let ll = likelihood.eval(x, mu.to_f64(), th.to_f64(), p);
                rec_sum -= ll.value;
                let a = -ll.d_mu * mu.to_f64();
                sum_a += a;
                drho_row[j] = T::from_f64(a);
                if has_pi {
                    pi_row[j] = T::from_f64(-ll.d_pi * grad_scale);
                }
                r_row[j] = T::from_f64(-ll.d_theta * th.to_f64() * grad_scale);
            }
            *rec = rec_sum;
            let gs = T::from_f64(grad_scale);
            let sa = T::from_f64(sum_a);
            for (d, &s) in drho_row.iter_mut().zip(s_row.iter()) {
                *d = (*d - s * sa) * gs;
            }
            *dlib = T::from_f64(sum_a * grad_scale);
        });
}
