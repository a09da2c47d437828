//! `posterior_predictive_sample`: counts drawn from the model's likelihood at posterior draws of z
//! (and l), as torch's distributions draw them in scvi-tools:
//!
//! ```text
//! Poisson:  x ~ Poisson(min(px_rate, 1e8))
//! NB:       w ~ Gamma(shape theta, rate theta / px_rate),  x ~ Poisson(min(w, 1e8))
//! ZINB:     the NB draw, then x = 0 with probability sigmoid(pi)
//! ```
//!
//! The gamma draws by Marsaglia and Tsang's method (boosted by `U^(1/a)` for a shape below 1), the
//! Poisson by inversion of products of uniforms below a mean of 10 and by Hörmann's transformed
//! rejection (PTRS, as numpy) above. Each (cell, sample) row reads its own Philox stream
//! sequentially, so the counts do not depend on the chunking or the thread count.

use super::posterior::{chunking, for_each_chunk, for_each_pass, Sampler, Transform};
use crate::data::{CsrMatrix, SparseRows};
use crate::engine::GenerativeOutputs;
use crate::error::{Error, Result};
use crate::math::likelihood::GeneLikelihood;
use crate::rng::{box_muller, uniform_open, Philox, Stream};
use crate::train::Covariates;
use rayon::prelude::*;

/// The largest rate torch's sampler is given (`max_poisson_rate`, and the NB's gamma clamp).
const MAX_RATE: f64 = 1e8;

/// Uniforms read in order from one Philox stream index, four per block.
struct Uniforms {
    rng: Philox,
    key: u64,
    block: u64,
    words: [u32; 4],
    used: usize,
}

impl Uniforms {
    fn new(rng: Philox, key: u64, first_block: u64) -> Self {
        Uniforms {
            rng,
            key,
            block: first_block,
            words: [0; 4],
            used: 4,
        }
    }

    fn word(&mut self) -> u32 {
        if self.used == 4 {
            self.words = self.rng.block(Stream::Predictive, self.key, self.block);
            self.block += 1;
            self.used = 0;
        }
        self.used += 1;
        self.words[self.used - 1]
    }

    fn uniform(&mut self) -> f64 {
        uniform_open(self.word())
    }

    fn normal(&mut self) -> f64 {
        let (a, b) = (self.word(), self.word());
        box_muller(a, b).0
    }
}

/// Gamma(shape `a`, rate 1) by Marsaglia and Tsang (2000).
fn gamma(u: &mut Uniforms, a: f64) -> f64 {
    if a < 1.0 {
        // Gamma(a) = Gamma(a + 1) U^(1/a).
        let g = gamma(u, a + 1.0);
        return g * u.uniform().powf(1.0 / a);
    }
    let d = a - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = u.normal();
        let v = 1.0 + c * x;
        if v <= 0.0 {
            continue;
        }
        let v = v * v * v;
        let w = u.uniform();
        if w < 1.0 - 0.0331 * x * x * x * x || w.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
}

/// Poisson(`lam`): products of uniforms below 10, PTRS (Hörmann 1993, numpy's) from 10.
fn poisson(u: &mut Uniforms, lam: f64) -> f64 {
    if lam <= 0.0 || lam.is_nan() {
        return 0.0;
    }
    if lam < 10.0 {
        let limit = (-lam).exp();
        let mut k = 0.0;
        let mut p = u.uniform();
        while p > limit {
            k += 1.0;
            p *= u.uniform();
        }
        return k;
    }
    let slam = lam.sqrt();
    let loglam = lam.ln();
    let b = 0.931 + 2.53 * slam;
    let a = -0.059 + 0.02483 * b;
    let invalpha = 1.1239 + 1.1328 / (b - 3.4);
    let vr = 0.9277 - 3.6224 / (b - 2.0);
    loop {
        let uu = u.uniform() - 0.5;
        let v = u.uniform();
        let us = 0.5 - uu.abs();
        let k = ((2.0 * a / us + b) * uu + lam + 0.43).floor();
        if us >= 0.07 && v <= vr {
            return k;
        }
        if k < 0.0 || (us < 0.013 && v > us) {
            continue;
        }
        if v.ln() + invalpha.ln() - (a / (us * us) + b).ln()
            <= -lam + k * loglam - libm::lgamma(k + 1.0)
        {
            return k;
        }
    }
}

/// One count from the likelihood with mean `mu`, dispersion `theta` and zero-inflation logit `pi`.
fn draw_count(u: &mut Uniforms, lik: GeneLikelihood, mu: f64, theta: f64, pi: f64) -> f64 {
    match lik {
        GeneLikelihood::Poisson => poisson(u, mu.min(MAX_RATE)),
        GeneLikelihood::Nb | GeneLikelihood::Zinb => {
            if lik == GeneLikelihood::Zinb {
                // is_zero = U <= sigmoid(pi); torch draws the NB count whatever the outcome, but
                // the outcome is independent of it, so deciding first gives the same distribution
                // and skips the gamma and Poisson draws of the zeroed entries.
                let p = 1.0 / (1.0 + (-pi).exp());
                if u.uniform() <= p {
                    return 0.0;
                }
            }
            // torch: Gamma(concentration theta, rate theta / mu); a zero mean draws zero.
            let w = if mu > 0.0 {
                gamma(u, theta) * mu / theta
            } else {
                0.0
            };
            poisson(u, w.min(MAX_RATE))
        }
    }
}

/// Posterior predictive counts of `cells`: `sink(sample, first, rows)` receives, for each draw
/// `sample` in `0..n_samples`, the sampled counts of the cells `first..first + n` of `cells` as CSR
/// rows over the model's genes. A chunk of cells gives all its samples before the next chunk.
#[allow(clippy::too_many_arguments)]
pub fn posterior_predictive(
    sampler: &mut Sampler,
    x: &dyn SparseRows,
    cov: &Covariates,
    cells: &[usize],
    n_samples: usize,
    likelihood: GeneLikelihood,
    seed: u64,
    sink: &mut dyn FnMut(usize, usize, CsrMatrix) -> Result<()>,
) -> Result<()> {
    if n_samples == 0 {
        return Err(Error::Config("--n-samples must be at least 1".into()));
    }
    let cfg = sampler.config().clone();
    let g = cfg.n_input;
    let rng = Philox::new(seed);
    let per_chunk = chunking(n_samples);
    let mut first = 0usize;
    for_each_chunk(
        x,
        cov,
        cells,
        per_chunk,
        cfg.use_observed_lib_size,
        |chunk| {
            sampler.encode(chunk)?;
            let n = chunk.len();
            // Dense rows of counts per (cell, sample), cell-major.
            let mut counts = vec![0f32; n * n_samples * g];
            for_each_pass(n, n_samples, |draws| {
                sampler.decode(
                    chunk,
                    draws,
                    Transform::OBSERVED,
                    GenerativeOutputs::Parameters,
                )?;
                let out = &sampler.out;
                let lib = sampler.library();
                let rows: Vec<(usize, Vec<f32>)> = draws
                    .par_iter()
                    .enumerate()
                    .map(|(r, d)| {
                        let key = chunk.cells[d.cell] as u64;
                        let mut u = Uniforms::new(rng, key, d.sample << 40);
                        let e = lib[r].exp();
                        let row: Vec<f32> = (0..g)
                            .map(|j| {
                                let mu = (e * out.px_scale[r * g + j]) as f64;
                                let theta = out.theta.get(r * g + j).map_or(0.0, |&t| t as f64);
                                let pi = out.zi_logits.get(r * g + j).map_or(0.0, |&p| p as f64);
                                draw_count(&mut u, likelihood, mu, theta, pi) as f32
                            })
                            .collect();
                        (d.cell * n_samples + d.sample as usize, row)
                    })
                    .collect();
                for (at, row) in rows {
                    counts[at * g..(at + 1) * g].copy_from_slice(&row);
                }
                Ok(())
            })?;
            for s in 0..n_samples {
                let mut m = CsrMatrix::with_cols(g);
                for i in 0..n {
                    let row = &counts[(i * n_samples + s) * g..(i * n_samples + s + 1) * g];
                    m.push_row(
                        row.iter()
                            .enumerate()
                            .filter(|(_, &v)| v != 0.0)
                            .map(|(j, &v)| (j as u32, v)),
                    );
                }
                sink(s, first, m)?;
            }
            first += n;
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(f: impl Fn(&mut Uniforms) -> f64, n: usize) -> (f64, f64) {
        let mut u = Uniforms::new(Philox::new(11), 3, 0);
        let v: Vec<f64> = (0..n).map(|_| f(&mut u)).collect();
        let m = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n as f64;
        (m, var)
    }

    /// Sample means and variances within 5 standard errors of the distributions' own.
    #[test]
    fn samplers_have_the_right_moments() {
        let n = 200_000;
        for lam in [0.3, 4.0, 25.0, 1e4] {
            let (m, v) = moments(|u| poisson(u, lam), n);
            let se = (lam / n as f64).sqrt();
            assert!((m - lam).abs() < 5.0 * se, "poisson {lam}: mean {m}");
            assert!((v / lam - 1.0).abs() < 0.03, "poisson {lam}: var {v}");
        }
        for a in [0.2, 1.0, 3.5] {
            let (m, v) = moments(|u| gamma(u, a), n);
            let se = (a / n as f64).sqrt();
            assert!((m - a).abs() < 5.0 * se, "gamma {a}: mean {m}");
            assert!((v / a - 1.0).abs() < 0.05, "gamma {a}: var {v}");
        }
        // NB mean mu, variance mu + mu^2 / theta; ZINB mean (1 - p) mu.
        let (mu, theta) = (5.0, 2.0);
        let (m, v) = moments(|u| draw_count(u, GeneLikelihood::Nb, mu, theta, 0.0), n);
        assert!((m - mu).abs() < 5.0 * (mu + mu * mu / theta).sqrt() / (n as f64).sqrt());
        assert!(
            (v / (mu + mu * mu / theta) - 1.0).abs() < 0.05,
            "nb var {v}"
        );
        let pi = 0.5f64;
        let p0 = 1.0 / (1.0 + (-pi).exp());
        let (m, _) = moments(|u| draw_count(u, GeneLikelihood::Zinb, mu, theta, pi), n);
        assert!((m - (1.0 - p0) * mu).abs() < 0.05, "zinb mean {m}");
    }
}
