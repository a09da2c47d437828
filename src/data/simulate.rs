//! Simulated single-cell counts: a realistic data set of any size, in constant memory.
//!
//! The generative model, per cell `i` and gene `g`:
//!
//! ```text
//! batch  b_i ~ Uniform{0..K}                      (K = n_batches)
//! type   t_i ~ Categorical(w_b)                   (a per-batch composition around global weights)
//! lib    l_i = median * f_b * exp(sdlog * N(0,1))  (log-normal library size, batch depth factor f_b)
//! q_btg  = exp(base_g + type_tg + batch_bg) / sum_g(...)      (expression profile, sums to 1)
//! mu_ig  = l_i * q_{b_i t_i g}
//! x_ig   ~ ZINB(mu_ig, theta_g, pi_g): 0 with probability pi_g, else NB(mean mu, inverse dispersion theta)
//! ```
//!
//! `base_g ~ N(0, 1.5)` gives the heavy-tailed gene means of real data; `type_tg` is a small
//! `N(0, 0.2)` jitter plus, for a few marker genes per type (`marker_fraction` of the genes), a
//! strong up-regulation (`marker_log_fc` on average, log scale), so cell types are separable;
//! `batch_bg ~ N(0, batch_effect)` is a modest gene-wise multiplicative batch effect; gene-wise
//! `theta_g` is log-normal around 3, `pi_g` uniform in `[0, 2 * zero_inflation]`.
//!
//! Determinism: the global parameters come from `seed`, and every cell from its own generator keyed
//! by `(seed, cell index)`, so the output does not depend on the number of threads or the chunk size.
//!
//! Speed: one uniform per gene-cell pair. `P(x > 0) <= E[x] = mu` (Markov), so `u < 1 - mu` is a zero
//! with no logarithm; otherwise the NB is sampled by inversion from `P(0) = (theta/(theta+mu))^theta`
//! with the ratio `P(k+1)/P(k) = (k+theta)/(k+1) * mu/(theta+mu)`; large means (`mu > 30`) use
//! gamma-Poisson.

use rayon::prelude::*;

use super::{CsrMatrix, Dataset, ObsColumn};
use crate::error::{Error, Result};

/// What to simulate. `Default` is a small data set for tests and the demo.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub n_cells: usize,
    pub n_genes: usize,
    pub n_batches: usize,
    pub n_cell_types: usize,
    pub seed: u64,
    /// Median library size (UMIs per cell); `None` is `1.5 * n_genes` (3,000 for 2,000 genes).
    pub library_median: Option<f64>,
    /// Standard deviation of the log library size.
    pub library_sdlog: f64,
    /// Standard deviation of the gene-wise log batch effect.
    pub batch_effect: f64,
    /// Fraction of genes that are markers of each cell type (at least 3 genes per type).
    pub marker_fraction: f64,
    /// Mean log fold change of a marker gene in its type.
    pub marker_log_fc: f64,
    /// Mean zero-inflation probability over genes.
    pub zero_inflation: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            n_cells: 2000,
            n_genes: 500,
            n_batches: 2,
            n_cell_types: 5,
            seed: 0,
            library_median: None,
            library_sdlog: 0.4,
            batch_effect: 0.25,
            marker_fraction: 0.03,
            marker_log_fc: 2.0,
            zero_inflation: 0.05,
        }
    }
}

impl SimConfig {
    /// Check that the configuration describes a data set that can be made.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.n_cells == 0 {
            return bad("simulate: --cells must be at least 1".into());
        }
        if self.n_genes == 0 || self.n_genes > u32::MAX as usize {
            return bad(format!("simulate: --genes must be in 1..={}", u32::MAX));
        }
        if self.n_batches == 0 || self.n_cell_types == 0 {
            return bad("simulate: --batches and --cell-types must be at least 1".into());
        }
        let finite_nonneg = |x: f64| x.is_finite() && x >= 0.0;
        if !(finite_nonneg(self.library_sdlog)
            && finite_nonneg(self.batch_effect)
            && finite_nonneg(self.marker_log_fc)
            && (0.0..=1.0).contains(&self.marker_fraction)
            && (0.0..=0.5).contains(&self.zero_inflation)
            && self.library_median.is_none_or(|m| m.is_finite() && m > 0.0))
        {
            return bad("simulate: a distribution parameter is out of range".into());
        }
        Ok(())
    }

    /// Bytes of memory a simulation holds at once, at least: the per-gene model (base level,
    /// dispersion, zero inflation, and a level per cell type and per batch, f64), the gene names,
    /// and the cell names and obs codes kept for the end (about 64 bytes a cell).
    pub fn memory_bytes(&self) -> u64 {
        let g = self.n_genes as u64;
        let per_gene = (self.n_cell_types as u64)
            .saturating_add(self.n_batches as u64)
            .saturating_add(8)
            .saturating_mul(8);
        g.saturating_mul(per_gene)
            .saturating_add((self.n_cell_types as u64).saturating_mul(self.n_batches as u64) * 16)
            .saturating_add((self.n_cells as u64).saturating_mul(64))
    }

    fn library_median(&self) -> f64 {
        self.library_median.unwrap_or(1.5 * self.n_genes as f64)
    }
}

// ---------------------------------------------------------------------------------------------
// Random numbers: splitmix64 for seeding, xoshiro256** for streams, and the samplers on top.

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** (Blackman and Vigna), seeded through splitmix64. Small, fast, and good enough for
/// simulation; public so that tests and other simulators can share it.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Rng { s }
    }

    /// An independent stream for item `index` of stream family `stream` under `seed`.
    pub fn keyed(seed: u64, stream: u64, index: u64) -> Self {
        let mut k = seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let a = splitmix64(&mut k);
        Rng::new(a ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ index)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (`n >= 1`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal (Box-Muller; one of the pair is discarded for simplicity).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Gamma and Poisson draws from any source of uniforms and normals: the simulator's [`Rng`] and
/// the posterior predictive sampler (`crate::infer::predictive`, on Philox streams) share them.
pub trait Samplers {
    /// Uniform in `[0, 1)` (or in `(0, 1)`).
    fn uniform(&mut self) -> f64;
    /// Standard normal.
    fn normal(&mut self) -> f64;

    /// Gamma(shape, scale 1), Marsaglia and Tsang (2000); shape < 1 by the `U^(1/a)` boost.
    fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = 1.0 - self.uniform();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let (mut x, mut v);
            loop {
                x = self.normal();
                v = 1.0 + c * x;
                if v > 0.0 {
                    break;
                }
            }
            v = v * v * v;
            let u = self.uniform();
            if u < 1.0 - 0.0331 * x * x * x * x {
                return d * v;
            }
            if u > 0.0 && u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
                return d * v;
            }
        }
    }

    /// Poisson(lambda): multiplication for small lambda, Hörmann's PTRS (1993) otherwise.
    fn poisson(&mut self, lam: f64) -> u64 {
        if lam <= 0.0 || !lam.is_finite() {
            return 0;
        }
        if lam < 10.0 {
            let enlam = (-lam).exp();
            let mut k = 0u64;
            let mut prod = 1.0;
            loop {
                prod *= self.uniform();
                if prod <= enlam {
                    return k;
                }
                k += 1;
            }
        }
        let slam = lam.sqrt();
        let loglam = lam.ln();
        let b = 0.931 + 2.53 * slam;
        let a = -0.059 + 0.02483 * b;
        let invalpha = 1.1239 + 1.1328 / (b - 3.4);
        let vr = 0.9277 - 3.6224 / (b - 2.0);
        loop {
            let u = self.uniform() - 0.5;
            let v = self.uniform();
            let us = 0.5 - u.abs();
            let k = ((2.0 * a / us + b) * u + lam + 0.43).floor();
            if us >= 0.07 && v <= vr {
                return k as u64;
            }
            if k < 0.0 || (us < 0.013 && v > us) {
                continue;
            }
            if v > 0.0
                && v.ln() + invalpha.ln() - (a / (us * us) + b).ln()
                    <= -lam + k * loglam - libm::lgamma(k + 1.0)
            {
                return k as u64;
            }
        }
    }
}

impl Samplers for Rng {
    fn uniform(&mut self) -> f64 {
        Rng::uniform(self)
    }
    fn normal(&mut self) -> f64 {
        Rng::normal(self)
    }
}

// ---------------------------------------------------------------------------------------------
// The model's global parameters.

const STREAM_GLOBAL: u64 = 1;
const STREAM_CELL: u64 = 2;

/// The global parameters drawn from the seed: O((types + batches) * genes) memory.
struct SimModel {
    n_genes: usize,
    n_types: usize,
    /// `exp(base_g + type_tg)`, `[T, G]`.
    type_expr: Vec<f64>,
    /// `exp(batch_bg)`, `[B, G]`.
    batch_expr: Vec<f64>,
    /// `1 / sum_g type_expr[t, g] * batch_expr[b, g]`, `[B, T]`.
    inv_norm: Vec<f64>,
    /// Cumulative type composition per batch, `[B, T]`.
    type_cdf: Vec<f64>,
    /// Sequencing depth factor per batch.
    batch_depth: Vec<f64>,
    theta: Vec<f64>,
    pi: Vec<f64>,
    inv_one_minus_pi: Vec<f64>,
    median: f64,
    sdlog: f64,
}

impl SimModel {
    fn new(cfg: &SimConfig) -> Self {
        let g_n = cfg.n_genes;
        let t_n = cfg.n_cell_types.max(1);
        let b_n = cfg.n_batches.max(1);
        let mut rng = Rng::keyed(cfg.seed, STREAM_GLOBAL, 0);
        let base: Vec<f64> = (0..g_n).map(|_| 1.5 * rng.normal()).collect();
        let theta: Vec<f64> = (0..g_n)
            .map(|_| (3f64.ln() + 0.8 * rng.normal()).exp())
            .collect();
        let pi: Vec<f64> = (0..g_n)
            .map(|_| 2.0 * cfg.zero_inflation * rng.uniform())
            .collect();

        let n_markers = ((cfg.marker_fraction * g_n as f64).round() as usize)
            .max(3)
            .min(g_n);
        let mut type_expr = vec![0.0; t_n * g_n];
        for t in 0..t_n {
            let row = &mut type_expr[t * g_n..(t + 1) * g_n];
            for (g, r) in row.iter_mut().enumerate() {
                *r = base[g] + 0.2 * rng.normal();
            }
            // Markers: distinct genes for this type, strongly up. Genes whose base level is very low
            // would stay invisible, so markers are lifted to at least the median base level.
            for _ in 0..n_markers {
                let g = rng.below(g_n);
                let fc = cfg.marker_log_fc * (0.5 + rng.uniform());
                row[g] = row[g].max(0.0) + fc;
            }
            for r in row.iter_mut() {
                *r = r.exp();
            }
        }
        let mut batch_expr = vec![0.0; b_n * g_n];
        for v in batch_expr.iter_mut() {
            *v = (cfg.batch_effect * rng.normal()).exp();
        }
        let batch_depth: Vec<f64> = (0..b_n).map(|_| (0.2 * rng.normal()).exp()).collect();
        let base_w: Vec<f64> = (0..t_n).map(|_| (0.5 * rng.normal()).exp()).collect();
        let mut type_cdf = vec![0.0; b_n * t_n];
        for b in 0..b_n {
            let w: Vec<f64> = base_w
                .iter()
                .map(|&w| w * (0.3 * rng.normal()).exp())
                .collect();
            let total: f64 = w.iter().sum();
            let mut acc = 0.0;
            for t in 0..t_n {
                acc += w[t] / total;
                type_cdf[b * t_n + t] = acc;
            }
            type_cdf[b * t_n + t_n - 1] = 1.0;
        }
        let mut inv_norm = vec![0.0; b_n * t_n];
        for b in 0..b_n {
            for t in 0..t_n {
                let s: f64 = (0..g_n)
                    .map(|g| type_expr[t * g_n + g] * batch_expr[b * g_n + g])
                    .sum();
                inv_norm[b * t_n + t] = if s > 0.0 { 1.0 / s } else { 0.0 };
            }
        }
        SimModel {
            n_genes: g_n,
            n_types: t_n,
            type_expr,
            batch_expr,
            inv_norm,
            type_cdf,
            batch_depth,
            inv_one_minus_pi: pi.iter().map(|&p| 1.0 / (1.0 - p)).collect(),
            theta,
            pi,
            median: cfg.library_median(),
            sdlog: cfg.library_sdlog,
        }
    }

    /// The batch, the cell type and the library size of cell `i`, and its generator for the counts.
    fn cell_header(&self, seed: u64, i: usize) -> (usize, usize, f64, Rng) {
        let mut rng = Rng::keyed(seed, STREAM_CELL, i as u64);
        let b_n = self.batch_depth.len();
        let b = rng.below(b_n);
        let u = rng.uniform();
        let cdf = &self.type_cdf[b * self.n_types..(b + 1) * self.n_types];
        let t = cdf.iter().position(|&c| u < c).unwrap_or(self.n_types - 1);
        let lib = self.median * self.batch_depth[b] * (self.sdlog * rng.normal()).exp();
        (b, t, lib, rng)
    }

    /// The counts of cell `i` as (gene, count) pairs, genes increasing.
    fn cell_row(&self, seed: u64, i: usize, out: &mut Vec<(u32, f32)>) {
        out.clear();
        let (b, t, lib, mut rng) = self.cell_header(seed, i);
        let g_n = self.n_genes;
        let scale = lib * self.inv_norm[b * self.n_types + t];
        let te = &self.type_expr[t * g_n..(t + 1) * g_n];
        let be = &self.batch_expr[b * g_n..(b + 1) * g_n];
        for g in 0..g_n {
            let mu = scale * te[g] * be[g];
            let u = rng.uniform();
            // Markov: P(NB > 0) <= mu, so below 1 - mu (after the zero-inflation mass, which comes
            // first in [0, 1)) the draw is a zero whatever the dispersion, with no logarithm.
            // (Tighter bounds cost as much as they save: the time goes to mispredicted branches.)
            let pi = self.pi[g];
            if u < pi + (1.0 - pi) * (1.0 - mu) {
                continue;
            }
            let u = (u - pi) * self.inv_one_minus_pi[g];
            let x = if mu <= 30.0 {
                nb_inverse(u, mu, self.theta[g])
            } else {
                let theta = self.theta[g];
                let lam = rng.gamma(theta) * (mu / theta);
                rng.poisson(lam)
            };
            if x > 0 {
                out.push((g as u32, x as f32));
            }
        }
    }
}

/// The NB(mean mu, inverse dispersion theta) quantile of `u`, by summing the pmf from 0.
#[inline]
fn nb_inverse(u: f64, mu: f64, theta: f64) -> u64 {
    let q = theta / (theta + mu);
    let r = 1.0 - q;
    let mut p = (theta * q.ln()).exp();
    let mut cdf = p;
    let mut k = 0u64;
    while u >= cdf {
        p *= (k as f64 + theta) / (k as f64 + 1.0) * r;
        k += 1;
        cdf += p;
        // Rounding can leave the sum a hair below u; the tail there is negligible.
        if p < 1e-300 || k > 100_000 {
            break;
        }
    }
    k
}

// ---------------------------------------------------------------------------------------------
// Public API.

/// Rows generated per chunk by [`simulate_rows`] (memory: about `CHUNK_ROWS * nnz_per_row * 8` bytes).
pub const CHUNK_ROWS: usize = 4096;

/// Generate the counts in chunks of rows, calling `f(first_row, chunk)` in order. Memory is one
/// chunk plus the global parameters, whatever `n_cells`. Rows within a chunk are made in parallel;
/// the result does not depend on the number of threads.
pub fn simulate_rows(
    cfg: &SimConfig,
    mut f: impl FnMut(usize, CsrMatrix) -> Result<()>,
) -> Result<()> {
    cfg.validate()?;
    let model = SimModel::new(cfg);
    let mut first = 0;
    while first < cfg.n_cells {
        let end = (first + CHUNK_ROWS).min(cfg.n_cells);
        let rows: Vec<Vec<(u32, f32)>> = (first..end)
            .into_par_iter()
            .map_init(Vec::new, |buf, i| {
                model.cell_row(cfg.seed, i, buf);
                buf.clone()
            })
            .collect();
        let nnz: usize = rows.iter().map(|r| r.len()).sum();
        let mut m = CsrMatrix::with_cols(cfg.n_genes);
        m.indptr.reserve(rows.len());
        m.indices.reserve(nnz);
        m.data.reserve(nnz);
        for r in rows {
            m.push_row(r);
        }
        f(first, m)?;
        first = end;
    }
    Ok(())
}

/// The mean number of stored values a cell of this simulation has, from its first (up to) 256
/// cells, drawn exactly as the whole simulation draws them: what the output will weigh, per cell.
pub fn mean_nnz_per_cell(cfg: &SimConfig) -> Result<f64> {
    cfg.validate()?;
    let model = SimModel::new(cfg);
    let n = cfg.n_cells.min(256);
    let mut buf = Vec::new();
    let total: usize = (0..n)
        .map(|i| {
            model.cell_row(cfg.seed, i, &mut buf);
            buf.len()
        })
        .sum();
    Ok(total as f64 / n.max(1) as f64)
}

/// The batch and cell-type code of every cell (cheap: no counts are drawn).
pub fn simulate_labels(cfg: &SimConfig) -> (Vec<i32>, Vec<i32>) {
    let model = SimModel::new(cfg);
    (0..cfg.n_cells)
        .into_par_iter()
        .map(|i| {
            let (b, t, _, _) = model.cell_header(cfg.seed, i);
            (b as i32, t as i32)
        })
        .unzip()
}

/// Gene names: `gene0001`, ... (zero-padded to the width of `n_genes`).
pub fn sim_gene_names(cfg: &SimConfig) -> Vec<String> {
    let w = cfg.n_genes.to_string().len();
    (1..=cfg.n_genes).map(|g| format!("gene{g:0w$}")).collect()
}

/// Cell names: `cell0000001`, ...
pub fn sim_cell_names(cfg: &SimConfig) -> Vec<String> {
    let w = cfg.n_cells.to_string().len();
    (1..=cfg.n_cells).map(|i| format!("cell{i:0w$}")).collect()
}

/// The obs columns: `batch` (`batch0`, ...) and `cell_type` (`type0`, ...), both categorical.
pub fn sim_obs(cfg: &SimConfig) -> Vec<(String, ObsColumn)> {
    let (batch, ctype) = simulate_labels(cfg);
    let column = |name: &str, codes: Vec<i32>, n: usize, prefix: &str| {
        let categories = (0..n.max(1)).map(|k| format!("{prefix}{k}")).collect();
        (
            name.to_string(),
            ObsColumn::Categorical { codes, categories },
        )
    };
    vec![
        column("batch", batch, cfg.n_batches, "batch"),
        column("cell_type", ctype, cfg.n_cell_types, "type"),
    ]
}

/// A whole simulated data set in memory. An invalid configuration (zero cells, genes, batches or
/// types, a parameter out of range) gives an empty data set with the requested gene count; call
/// [`SimConfig::validate`] first to get the reason.
pub fn simulate(cfg: &SimConfig) -> Dataset {
    let mut counts = CsrMatrix::with_cols(cfg.n_genes);
    let ok = simulate_rows(cfg, |_, chunk| {
        counts.append_rows(&chunk);
        Ok(())
    });
    if ok.is_err() {
        return Dataset {
            counts: Box::new(CsrMatrix::with_cols(cfg.n_genes)),
            gene_names: sim_gene_names(cfg),
            cell_names: Vec::new(),
            obs: Vec::new(),
            source: "simulated (invalid configuration)".to_string(),
        };
    }
    Dataset {
        counts: Box::new(counts),
        gene_names: sim_gene_names(cfg),
        cell_names: sim_cell_names(cfg),
        obs: sim_obs(cfg),
        source: format!(
            "simulated (cells {}, genes {}, batches {}, cell types {}, seed {})",
            cfg.n_cells, cfg.n_genes, cfg.n_batches, cfg.n_cell_types, cfg.seed
        ),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn nb_inverse_matches_the_mean() {
        let mut rng = Rng::new(7);
        for &(mu, theta) in &[(0.3, 0.5), (2.0, 3.0), (20.0, 10.0)] {
            let n = 200_000;
            let mut s = 0.0;
            let mut s2 = 0.0;
            for _ in 0..n {
                let x = nb_inverse(rng.uniform(), mu, theta) as f64;
                s += x;
                s2 += x * x;
            }
            let m = s / n as f64;
            let var = s2 / n as f64 - m * m;
            assert!((m - mu).abs() < 0.02 * mu + 0.01, "mean {m} vs {mu}");
            let v = mu + mu * mu / theta;
            assert!((var - v).abs() < 0.05 * v, "var {var} vs {v}");
        }
    }

    #[test]
    fn gamma_and_poisson_moments() {
        let mut rng = Rng::new(11);
        let n = 200_000;
        for &a in &[0.5, 3.0] {
            let m: f64 = (0..n).map(|_| rng.gamma(a)).sum::<f64>() / n as f64;
            assert!((m - a).abs() < 0.02 * a, "gamma mean {m} vs {a}");
        }
        for &l in &[4.0, 50.0, 1000.0] {
            let m: f64 = (0..n).map(|_| rng.poisson(l) as f64).sum::<f64>() / n as f64;
            assert!((m - l).abs() < 0.01 * l, "poisson mean {m} vs {l}");
        }
    }
}
