//! `get_marginal_ll`: the marginal log-likelihood of each cell by importance sampling with the
//! encoder's posterior as the proposal (scvi-tools' `VAE.marginal_ll`):
//!
//! ```text
//! log p(x) ~= logsumexp_s w_s - log S,   z_s ~ q(z | x) (l_s ~ q(l | x)), s = 1..S
//! w_s = log N(z_s; 0, I) + log p(x | z_s, l_s) - log N(z_s; m, v)
//!       (+ log N(l_s; mu_b, sigma2_b) - log N(l_s; m_l, v_l) for a latent library, b the batch)
//! log N(y; m, v) = sum_k -(y_k - m_k)^2 / (2 v_k) - log(sqrt v_k) - log(sqrt(2 pi))
//! ```
//!
//! The S draws of a chunk of cells go through the decoder as the rows of a few large passes
//! ([`super::posterior`]); the log weights of one cell are kept until its logsumexp, so memory is
//! S numbers per cell of the chunk.

use super::posterior::{chunking, for_each_chunk, for_each_pass, Sampler, Transform};
use crate::data::SparseRows;
use crate::engine::GenerativeOutputs;
use crate::error::{Error, Result};
use crate::train::Covariates;

const HALF_LN_2PI: f64 = 0.918_938_533_204_672_8;

/// The latent library's prior per batch (`library_log_means`, `library_log_vars`).
#[derive(Clone, Copy, Debug)]
pub struct LibraryPrior<'a> {
    pub means: &'a [f32],
    pub vars: &'a [f32],
}

/// `log N(y; m, v)` summed over the elements, in f64.
fn log_normal(y: &[f32], m: &[f32], v: &[f32]) -> f64 {
    y.iter()
        .zip(m)
        .zip(v)
        .map(|((&y, &m), &v)| {
            let (y, m, v) = (y as f64, m as f64, v as f64);
            -(y - m) * (y - m) / (2.0 * v) - 0.5 * v.ln() - HALF_LN_2PI
        })
        .sum()
}

/// `logsumexp(w) - log(len)`.
fn log_mean_exp(w: &[f64]) -> f64 {
    let mx = w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !mx.is_finite() {
        return mx;
    }
    let s: f64 = w.iter().map(|&x| (x - mx).exp()).sum();
    mx + s.ln() - (w.len() as f64).ln()
}

/// The marginal log-likelihood of each of `cells` (in their order) from `n_mc_samples` draws;
/// `progress(done)` after each chunk of cells.
pub fn marginal_ll(
    sampler: &mut Sampler,
    x: &dyn SparseRows,
    cov: &Covariates,
    cells: &[usize],
    n_mc_samples: usize,
    prior: Option<LibraryPrior>,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<f64>> {
    if n_mc_samples == 0 {
        return Err(Error::Config("--n-mc-samples must be at least 1".into()));
    }
    let cfg = sampler.config().clone();
    let latent_library = !cfg.use_observed_lib_size;
    if latent_library && prior.is_none() {
        return Err(Error::Config(
            "marginal_ll: a latent library needs its prior".into(),
        ));
    }
    let l = cfg.n_latent;
    let mut out = Vec::with_capacity(cells.len());
    let mut weights: Vec<f64> = Vec::new();
    let per_chunk = chunking(n_mc_samples);
    for_each_chunk(x, cov, cells, per_chunk, !latent_library, |chunk| {
        sampler.encode(chunk)?;
        let n = chunk.len();
        weights.clear();
        weights.resize(n * n_mc_samples, 0.0);
        for_each_pass(n, n_mc_samples, |draws| {
            crate::interrupt::check()?;
            sampler.decode(
                chunk,
                draws,
                Transform::OBSERVED,
                GenerativeOutputs::Likelihood,
            )?;
            let post = sampler.posteriors();
            let (z, lib) = (sampler.z(), sampler.library());
            let zeros = vec![0f32; l];
            let ones = vec![1f32; l];
            for (r, d) in draws.iter().enumerate() {
                let zr = &z[r * l..(r + 1) * l];
                let (m, v) = (
                    &post.z_mean[d.cell * l..(d.cell + 1) * l],
                    &post.z_var[d.cell * l..(d.cell + 1) * l],
                );
                let mut w = log_normal(zr, &zeros, &ones)
                    - sampler.out.reconstruction[r]
                    - log_normal(zr, m, v);
                if let Some(p) = prior {
                    let b = chunk.batch[d.cell] as usize;
                    let y = &lib[r..r + 1];
                    w += log_normal(y, &p.means[b..b + 1], &p.vars[b..b + 1])
                        - log_normal(
                            y,
                            &post.library_mean[d.cell..d.cell + 1],
                            &post.library_var[d.cell..d.cell + 1],
                        );
                }
                weights[d.cell * n_mc_samples + d.sample as usize] = w;
            }
            Ok(())
        })?;
        out.extend(weights.chunks(n_mc_samples).map(log_mean_exp));
        progress(out.len());
        Ok(())
    })?;
    Ok(out)
}

/// `get_marginal_ll(return_mean=True)`'s average: the mean over minibatches of `batch_size`
/// consecutive cells of each minibatch's mean (scvi-tools' data loader, `scvi.settings.batch_size`
/// = 128), not the mean over cells when the last minibatch is short.
pub fn scvi_tools_mean(values: &[f64], batch_size: usize) -> f64 {
    let means: Vec<f64> = values
        .chunks(batch_size.max(1))
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    means.iter().sum::<f64>() / means.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_mean_exp_is_stable_and_exact() {
        let w = [-1000.0, -1000.0 + 2f64.ln()];
        // log((e^-1000 + 2 e^-1000) / 2) = -1000 + log(1.5)
        assert!((log_mean_exp(&w) - (-1000.0 + 1.5f64.ln())).abs() < 1e-12);
    }

    #[test]
    fn minibatch_means_weigh_a_short_last_minibatch_more() {
        let v: Vec<f64> = (0..5).map(|i| i as f64).collect();
        // minibatches [0,1,2,3] and [4]: (1.5 + 4) / 2
        assert_eq!(scvi_tools_mean(&v, 4), 2.75);
        assert_eq!(scvi_tools_mean(&v, 128), 2.0);
    }

    #[test]
    fn log_normal_matches_the_density() {
        let (y, m, v) = ([0.3f32], [0.1f32], [0.25f32]);
        let want = (-(0.2f64 * 0.2) / 0.5).exp() / (2.0 * std::f64::consts::PI * 0.25).sqrt();
        assert!((log_normal(&y, &m, &v) - want.ln()).abs() < 1e-6);
    }
}
