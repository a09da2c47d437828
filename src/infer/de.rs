//! `differential_expression`: scvi-tools 1.4.2's `DifferentialComputation.get_bayes_factors` and
//! `_de_core`, for one group against another or against the rest.
//!
//! Scale sampling (`scale_sampler` with `get_normalized_expression(n_samples=1,
//! n_samples_overall=n)`), per group and per batch `b` of the policy:
//! - the batches: each cell's own (`batch_correction = false`, `use_observed_batches`), one slot;
//!   or every batch category of the model, each cell decoded under each (`batch_correction`);
//! - `n = int(n_samples_overall / n_batches)` rows (2 when that is 0); each of the group's `c` cells
//!   is drawn `k = n // c + 1` times (draw `s` of cell `i` is pool row `s c + i`), and `n` rows are
//!   taken from the `k c` of the pool uniformly with replacement. We draw the pool indices first and
//!   decode only the pool rows drawn: the same distribution for less work.
//!
//! The two groups' samples are paired row by row (batch by batch with batch correction), then:
//! - vanilla: `proba_m1 = mean(scale1 > scale2)`, `proba_m2 = 1 - proba_m1`,
//!   `bayes_factor = log(proba_m1 + 1e-8) - log(proba_m2 + 1e-8)`;
//! - change: `lfc = log2(scale1 + pc) - log2(scale2 + pc)`, `proba_m1 = mean(lfc >= delta)`,
//!   `proba_m2 = mean(lfc < -delta)`, `proba_de = max(proba_m1, proba_m2)`, `proba_not_de =
//!   1 - proba_de`, `bayes_factor = log(proba_de + 1e-8) - log(1 - proba_de + 1e-8)`; `lfc_mean`,
//!   `lfc_median`, `lfc_std` (population), `lfc_min`, `lfc_max` of the lfc recomputed with
//!   `1e-3 pc`. The pseudocount `pc` (unless given): for each group, the 0.9 quantile (linear) of the
//!   per-gene maxima of its sampled scales over the genes whose mean raw count in the group is
//!   below `threshold_counts` = 0.01 (1e-10 when there are none); `pc = max(1e-10, max of the two /
//!   n_genes)`.
//! - `scale1`, `scale2`: the mean sampled scale of each group; `raw_mean*`, `non_zeros_proportion*`,
//!   `raw_normalized_mean*` (counts scaled by `1e4 / library` per cell) from the counts.
//!
//! The table (one row per gene) is sorted by `bayes_factor` (vanilla) or `proba_de` (change),
//! descending; ties keep the genes' order (pandas sorts with an unstable quicksort, so its order
//! among exact ties is not reproducible; a stable sort is its deterministic equivalent). The change
//! mode then adds `is_de_fdr_<target>`: with `proba_de` sorted descending, the genes before the
//! first whose running mean of `1 - proba_de` exceeds the target (posterior expected FDR).

use super::output::csv_field as field;
use super::posterior::{for_each_chunk, Draw, Sampler, Transform, ROWS_PER_PASS};
use crate::data::SparseRows;
use crate::engine::GenerativeOutputs;
use crate::error::{Error, Result};
use crate::rng::{Philox, Stream};
use crate::train::Covariates;
use rayon::prelude::*;
use std::fmt::Write as _;

/// `differential_expression`'s `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeMode {
    Vanilla,
    Change,
}

impl std::str::FromStr for DeMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vanilla" => Ok(DeMode::Vanilla),
            "change" => Ok(DeMode::Change),
            _ => Err(Error::Config(format!(
                "--mode must be vanilla or change, not '{s}'"
            ))),
        }
    }
}

/// `differential_expression`'s options, with scvi-tools' defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct DeOptions {
    pub mode: DeMode,
    /// The lfc region `|lfc| >= delta` of the change mode.
    pub delta: f64,
    /// The posterior expected FDR of `is_de_fdr_<target>` (change mode).
    pub fdr_target: f64,
    /// Decode every cell under every batch category (scvi-tools' `batch_correction`).
    pub batch_correction: bool,
    /// Scale samples per group (`n_samples_overall`).
    pub n_samples_overall: usize,
    /// The change mode's pseudocount; None: estimated from the genes without counts.
    pub pseudocounts: Option<f64>,
    /// Mean count below which a gene counts as not expressed in a group (pseudocount estimate).
    pub threshold_counts: f64,
}

impl Default for DeOptions {
    fn default() -> Self {
        DeOptions {
            mode: DeMode::Vanilla,
            delta: 0.25,
            fdr_target: 0.05,
            batch_correction: false,
            n_samples_overall: 5000,
            pseudocounts: None,
            threshold_counts: 0.01,
        }
    }
}

impl DeOptions {
    pub fn validate(&self) -> Result<()> {
        if self.n_samples_overall == 0 {
            return Err(Error::Config("--n-samples must be at least 1".into()));
        }
        if !(self.delta.is_finite() && self.delta >= 0.0) {
            return Err(Error::Config(format!(
                "--delta must be a non-negative number, not {}",
                self.delta
            )));
        }
        if !(self.fdr_target > 0.0 && self.fdr_target < 1.0) {
            return Err(Error::Config(format!(
                "--fdr-target must be in (0, 1), not {}",
                self.fdr_target
            )));
        }
        if let Some(p) = self.pseudocounts {
            if !(p.is_finite() && p >= 0.0) {
                return Err(Error::Config(format!("pseudocounts must be >= 0, not {p}")));
            }
        }
        Ok(())
    }
}

/// One comparison: the cells of group 1 against those of group 2 (another group, or the rest).
#[derive(Clone, Debug)]
pub struct Comparison {
    pub group1: String,
    /// "Rest" when group 2 is every other cell.
    pub group2: String,
    pub cells1: Vec<usize>,
    pub cells2: Vec<usize>,
}

/// A column of the table, per gene in the model's order (or a constant).
#[derive(Clone, Debug, PartialEq)]
pub enum DeColumn {
    Numbers(Vec<f64>),
    Flags(Vec<bool>),
    Text(String),
}

/// One comparison's table, as scvi-tools returns it: `columns` in its order, each per gene in the
/// model's order; `order` the rows' order (gene indices, sorted as scvi-tools sorts).
#[derive(Clone, Debug)]
pub struct DeResult {
    pub order: Vec<usize>,
    pub columns: Vec<(String, DeColumn)>,
}

impl DeResult {
    /// A numeric column per gene in the model's order.
    pub fn numbers(&self, name: &str) -> Option<&[f64]> {
        self.columns.iter().find_map(|(n, c)| match c {
            DeColumn::Numbers(v) if n == name => Some(&v[..]),
            _ => None,
        })
    }
    /// A flag column per gene in the model's order.
    pub fn flags(&self, name: &str) -> Option<&[bool]> {
        self.columns.iter().find_map(|(n, c)| match c {
            DeColumn::Flags(v) if n == name => Some(&v[..]),
            _ => None,
        })
    }
}

/// The counts statistics of two groups (`scrna_raw_counts_properties`), per gene.
struct RawStats {
    mean: [Vec<f64>; 2],
    nonzero: [Vec<f64>; 2],
    normalized: [Vec<f64>; 2],
}

fn raw_stats(x: &dyn SparseRows, groups: [&[usize]; 2]) -> RawStats {
    let g = x.n_cols();
    let mut st = RawStats {
        mean: [vec![0.0; g], vec![0.0; g]],
        nonzero: [vec![0.0; g], vec![0.0; g]],
        normalized: [vec![0.0; g], vec![0.0; g]],
    };
    for (k, cells) in groups.iter().enumerate() {
        for (n, &c) in cells.iter().enumerate() {
            if n % 16384 == 16383 {
                x.release();
            }
            let (idx, val) = x.row(c);
            let total: f64 = val.iter().map(|&v| v as f64).sum();
            // scvi-tools: 1e4 / library per cell (inf for an empty cell, whose values are all 0;
            // numpy's 0 * inf is NaN, but a sparse matrix never multiplies its absent zeros).
            let f = 1e4 / total;
            for (&j, &v) in idx.iter().zip(val) {
                let (j, v) = (j as usize, v as f64);
                st.mean[k][j] += v;
                if v != 0.0 {
                    st.nonzero[k][j] += 1.0;
                }
                st.normalized[k][j] += v * f;
            }
        }
        let n = cells.len().max(1) as f64;
        for v in [&mut st.mean[k], &mut st.nonzero[k], &mut st.normalized[k]] {
            v.iter_mut().for_each(|a| *a /= n);
        }
    }
    x.release();
    st
}

/// An integer uniform in `0..bound` from draw `i` of a stream (Lemire's method, 64 bits, retried
/// on the rare rejection with the following words).
fn uniform_below(rng: &Philox, key: u64, counter: &mut u64, bound: u64) -> u64 {
    loop {
        let r = ((rng.u32_at(Stream::Resample, key, *counter) as u64) << 32)
            | rng.u32_at(Stream::Resample, key, *counter + 1) as u64;
        *counter += 2;
        let m = (r as u128) * (bound as u128);
        if (m as u64) >= (u64::MAX - bound + 1) % bound {
            return (m >> 64) as u64;
        }
    }
}

/// What both groups' scale samples share: the batch slots, the rows per group, the seed.
struct ScalePolicy<'a> {
    transforms: &'a [Transform],
    n_overall: usize,
    seed: u64,
}

/// The scale samples of one group (`scale_sampler`): `[n_rows, G]` row-major, batch slot by batch
/// slot (`n` rows each). `resample_key` keys which pool rows are drawn.
fn sample_scales(
    sampler: &mut Sampler,
    x: &dyn SparseRows,
    cov: &Covariates,
    cells: &[usize],
    policy: &ScalePolicy,
    resample_key: u64,
) -> Result<(Vec<f32>, usize)> {
    let (transforms, n_overall, seed) = (policy.transforms, policy.n_overall, policy.seed);
    let g = sampler.config().n_input;
    let c = cells.len();
    let n = match n_overall / transforms.len() {
        0 => 2,
        n => n,
    };
    let k = n / c + 1;
    let pool = (k * c) as u64;
    let rng = Philox::new(seed);
    let mut scales = vec![0f32; transforms.len() * n * g];
    for (ti, t) in transforms.iter().enumerate() {
        // (cell position in the group, sample, output row), sorted by cell then sample.
        let key = (resample_key << 8) | ti as u64;
        let mut counter = 0u64;
        let mut want: Vec<(usize, u64, usize)> = (0..n)
            .map(|row| {
                let p = uniform_below(&rng, key, &mut counter, pool);
                ((p % c as u64) as usize, p / c as u64, ti * n + row)
            })
            .collect();
        want.sort_unstable();
        let mut needed: Vec<usize> = want.iter().map(|w| w.0).collect();
        needed.dedup();
        let chunk_cells: Vec<usize> = needed.iter().map(|&i| cells[i]).collect();
        let mut at = 0usize; // position in `want`
        let mut first = 0usize; // position in `needed` of the chunk's first cell
        for_each_chunk(
            x,
            cov,
            &chunk_cells,
            ROWS_PER_PASS.min(256),
            sampler.config().use_observed_lib_size,
            |chunk| {
                sampler.encode(chunk)?;
                let end_cell = first + chunk.len();
                // The distinct (cell, sample) pairs of this chunk's cells.
                let mut draws: Vec<Draw> = Vec::new();
                let mut outs: Vec<Vec<usize>> = Vec::new();
                while at < want.len() && want[at].0 < needed[end_cell - 1] + 1 {
                    let (ci, s, row) = want[at];
                    let pos = needed[first..end_cell]
                        .binary_search(&ci)
                        .expect("drawn cell in its chunk");
                    let d = Draw {
                        cell: pos,
                        sample: s,
                    };
                    if draws.last() == Some(&d) {
                        outs.last_mut().unwrap().push(row);
                    } else {
                        draws.push(d);
                        outs.push(vec![row]);
                    }
                    at += 1;
                }
                for (dr, os) in draws.chunks(ROWS_PER_PASS).zip(outs.chunks(ROWS_PER_PASS)) {
                    sampler.decode(chunk, dr, *t, GenerativeOutputs::Scale)?;
                    let sc = &sampler.out.px_scale;
                    for (r, rows) in os.iter().enumerate() {
                        for &row in rows {
                            scales[row * g..(row + 1) * g].copy_from_slice(&sc[r * g..(r + 1) * g]);
                        }
                    }
                }
                first = end_cell;
                Ok(())
            },
        )?;
    }
    Ok((scales, transforms.len() * n))
}

/// Column means of a `[rows, g]` matrix.
fn column_means(m: &[f32], rows: usize, g: usize) -> Vec<f64> {
    let mut out = vec![0f64; g];
    for r in m.chunks(g).take(rows) {
        for (o, &v) in out.iter_mut().zip(r) {
            *o += v as f64;
        }
    }
    out.iter_mut().for_each(|o| *o /= rows.max(1) as f64);
    out
}

/// numpy's `quantile(v, q)` (linear interpolation).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let h = (v.len() - 1) as f64 * q;
    let (lo, frac) = (h.floor() as usize, h - h.floor());
    if lo + 1 < v.len() {
        v[lo] + frac * (v[lo + 1] - v[lo])
    } else {
        v[lo]
    }
}

/// `estimate_pseudocounts_offset`: see the module's comment.
fn estimate_pseudocounts(
    scales: [&[f32]; 2],
    rows: usize,
    g: usize,
    where_zero: [Vec<bool>; 2],
) -> f64 {
    let mut eps = [1e-10f64; 2];
    for k in 0..2 {
        let mut mx = vec![f64::NEG_INFINITY; g];
        for r in scales[k].chunks(g).take(rows) {
            for (m, &v) in mx.iter_mut().zip(r) {
                *m = m.max(v as f64);
            }
        }
        let mut sel: Vec<f64> = (0..g)
            .filter(|&j| where_zero[k][j])
            .map(|j| mx[j])
            .collect();
        if !sel.is_empty() {
            eps[k] = quantile(&mut sel, 0.9);
        }
    }
    (eps[0].max(eps[1]) / g as f64).max(1e-10)
}

/// A `[rows, g]` row-major matrix as `[g, rows]`: each gene's samples contiguous. The per-gene
/// statistics below read a gene's samples in turn; read in place they are `g` floats apart, a cache
/// line and (at 2,000 genes) a page each, and that stride cost more than the arithmetic.
fn gene_major(m: &[f32], rows: usize, g: usize) -> Vec<f32> {
    const TILE: usize = 64;
    let mut t = vec![0f32; rows * g];
    for r0 in (0..rows).step_by(TILE) {
        for j0 in (0..g).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for j in j0..(j0 + TILE).min(g) {
                    t[j * rows + r] = m[r * g + j];
                }
            }
        }
    }
    t
}

/// Per gene (`s1`, `s2` gene-major, `rows` samples each): (proba_m1, proba_m2, lfc mean, median,
/// std, min, max) of the change mode.
fn change_stats(s1: &[f32], s2: &[f32], rows: usize, pc: f64, delta: f64) -> Vec<[f64; 7]> {
    s1.par_chunks(rows)
        .zip(s2.par_chunks(rows))
        .map(|(a, b)| {
            let (mut plus, mut minus) = (0usize, 0usize);
            let pc_small = 1e-3 * pc;
            // log2(a + pc) - log2(b + pc) >= delta  <=>  (a + pc) / (b + pc) >= 2^delta: the
            // region test needs no logarithm, and each lfc one (of the ratio) instead of two.
            let (up, down) = (delta.exp2(), (-delta).exp2());
            let mut lfc: Vec<f64> = Vec::with_capacity(rows);
            for (&a, &b) in a.iter().zip(b) {
                let (a, b) = (a as f64, b as f64);
                let ratio = (a + pc) / (b + pc);
                plus += (ratio >= up) as usize;
                minus += (ratio < down) as usize;
                lfc.push(((a + pc_small) / (b + pc_small)).log2());
            }
            let n = rows as f64;
            let mean = lfc.iter().sum::<f64>() / n;
            let var = lfc.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let (mn, mx) = lfc
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            // numpy's median: the middle order statistic, or the mean of the two middle ones.
            let (_, &mut hi, _) = lfc.select_nth_unstable_by(rows / 2, |a, b| a.total_cmp(b));
            let median = if rows % 2 == 1 {
                hi
            } else {
                let lo = lfc[..rows / 2]
                    .iter()
                    .fold(f64::NEG_INFINITY, |m, &v| m.max(v));
                0.5 * (lo + hi)
            };
            [
                plus as f64 / n,
                minus as f64 / n,
                mean,
                median,
                var.sqrt(),
                mn,
                mx,
            ]
        })
        .collect()
}

/// The rows' order: `key` descending, ties in gene order, NaN last (pandas' `sort_values(ascending
/// = False)` made stable).
fn descending_order(key: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..key.len()).collect();
    order.sort_by(|&a, &b| match (key[a].is_nan(), key[b].is_nan()) {
        (false, false) => key[b].total_cmp(&key[a]),
        (x, y) => x.cmp(&y),
    });
    order
}

/// `_fdr_de_prediction`: with `d` the number of positions (in `order`, proba descending) where the
/// running mean of `1 - proba` is at most `fdr`, the first `d` genes (the running mean only grows,
/// so these are the positions themselves).
fn fdr_flags(proba: &[f64], order: &[usize], fdr: f64) -> Vec<bool> {
    let mut flags = vec![false; proba.len()];
    let mut cum = 0.0;
    let mut d = 0;
    for (k, &j) in order.iter().enumerate() {
        cum += 1.0 - proba[j];
        d += (cum / (k + 1) as f64 <= fdr) as usize;
    }
    order[..d].iter().for_each(|&j| flags[j] = true);
    flags
}

/// Python's `repr` of a float: how scvi-tools names `is_de_fdr_{fdr}` and pandas writes numbers.
pub fn py_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Shortest digits with Python's exponent form: 1e-05, 1.5e+16.
        let s = format!("{v:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let s = format!("{v}");
    if s.contains('.') {
        s
    } else {
        s + ".0"
    }
}

/// One comparison, computed as scvi-tools' `get_bayes_factors` plus `_de_core`'s columns.
#[allow(clippy::too_many_arguments)]
pub fn compare(
    sampler: &mut Sampler,
    x: &dyn SparseRows,
    cov: &Covariates,
    cmp: &Comparison,
    opts: &DeOptions,
    n_batch: usize,
    comparison_index: u64,
    seed: u64,
) -> Result<DeResult> {
    opts.validate()?;
    for (name, cells) in [(&cmp.group1, &cmp.cells1), (&cmp.group2, &cmp.cells2)] {
        if cells.is_empty() {
            return Err(Error::Data(format!("group '{name}' has no cells")));
        }
    }
    let g = sampler.config().n_input;
    let transforms: Vec<Transform> = if opts.batch_correction {
        (0..n_batch as u32)
            .map(|b| Transform {
                code: Some(b),
                slot: b as u64 + 1,
            })
            .collect()
    } else {
        vec![Transform::OBSERVED]
    };
    let key = |side: u64| (comparison_index << 1) | side;
    let policy = ScalePolicy {
        transforms: &transforms,
        n_overall: opts.n_samples_overall,
        seed,
    };
    let (s1, rows) = sample_scales(sampler, x, cov, &cmp.cells1, &policy, key(0))?;
    let (s2, _) = sample_scales(sampler, x, cov, &cmp.cells2, &policy, key(1))?;
    let scale1 = column_means(&s1, rows, g);
    let scale2 = column_means(&s2, rows, g);
    let raw = raw_stats(x, [&cmp.cells1, &cmp.cells2]);
    let eps = 1e-8;
    let mut columns: Vec<(String, DeColumn)> = Vec::new();
    let num = |v: Vec<f64>| DeColumn::Numbers(v);
    let sort_key;
    match opts.mode {
        DeMode::Vanilla => {
            // Row by row (sequential reads) rather than gene by gene (strided).
            let mut wins = vec![0u32; g];
            for (a, b) in s1.chunks(g).zip(s2.chunks(g)).take(rows) {
                for ((w, x), y) in wins.iter_mut().zip(a).zip(b) {
                    *w += (x > y) as u32;
                }
            }
            let p1: Vec<f64> = wins.iter().map(|&w| w as f64 / rows as f64).collect();
            let p2: Vec<f64> = p1.iter().map(|p| 1.0 - p).collect();
            let bf: Vec<f64> = p1
                .iter()
                .zip(&p2)
                .map(|(a, b)| (a + eps).ln() - (b + eps).ln())
                .collect();
            sort_key = bf.clone();
            columns.push(("proba_m1".into(), num(p1)));
            columns.push(("proba_m2".into(), num(p2)));
            columns.push(("bayes_factor".into(), num(bf)));
            columns.push(("scale1".into(), num(scale1)));
            columns.push(("scale2".into(), num(scale2)));
        }
        DeMode::Change => {
            let pc = match opts.pseudocounts {
                Some(p) => p,
                None => {
                    let wz = |k: usize| {
                        raw.mean[k]
                            .iter()
                            .map(|&m| m < opts.threshold_counts)
                            .collect()
                    };
                    estimate_pseudocounts([&s1, &s2], rows, g, [wz(0), wz(1)])
                }
            };
            let (t1, t2) = (gene_major(&s1, rows, g), gene_major(&s2, rows, g));
            let st = change_stats(&t1, &t2, rows, pc, opts.delta);
            let col = |k: usize| -> Vec<f64> { st.iter().map(|s| s[k]).collect() };
            let pde: Vec<f64> = st.iter().map(|s| s[0].max(s[1])).collect();
            let bf: Vec<f64> = pde
                .iter()
                .map(|p| (p + eps).ln() - (1.0 - p + eps).ln())
                .collect();
            sort_key = pde.clone();
            columns.push(("proba_de".into(), num(pde.clone())));
            columns.push((
                "proba_not_de".into(),
                num(pde.iter().map(|p| 1.0 - p).collect()),
            ));
            columns.push(("bayes_factor".into(), num(bf)));
            columns.push(("scale1".into(), num(scale1)));
            columns.push(("scale2".into(), num(scale2)));
            columns.push(("pseudocounts".into(), num(vec![pc; g])));
            columns.push(("delta".into(), num(vec![opts.delta; g])));
            for (k, name) in ["lfc_mean", "lfc_median", "lfc_std", "lfc_min", "lfc_max"]
                .iter()
                .enumerate()
            {
                columns.push((name.to_string(), num(col(k + 2))));
            }
        }
    }
    let RawStats {
        mean: [m1, m2],
        nonzero: [n1, n2],
        normalized: [r1, r2],
    } = raw;
    for (name, v) in [
        ("raw_mean1", m1),
        ("raw_mean2", m2),
        ("non_zeros_proportion1", n1),
        ("non_zeros_proportion2", n2),
        ("raw_normalized_mean1", r1),
        ("raw_normalized_mean2", r2),
    ] {
        columns.push((name.into(), num(v)));
    }
    let order = descending_order(&sort_key);
    if opts.mode == DeMode::Change {
        let flags = fdr_flags(&sort_key, &order, opts.fdr_target);
        columns.push((
            format!("is_de_fdr_{}", py_float(opts.fdr_target)),
            DeColumn::Flags(flags),
        ));
    }
    columns.push((
        "comparison".into(),
        DeColumn::Text(format!("{} vs {}", cmp.group1, cmp.group2)),
    ));
    columns.push(("group1".into(), DeColumn::Text(cmp.group1.clone())));
    columns.push(("group2".into(), DeColumn::Text(cmp.group2.clone())));
    Ok(DeResult { order, columns })
}

/// The tables of several comparisons as one long CSV, as pandas writes `pd.concat(tables).to_csv()`:
/// the gene name first (an unnamed index column), then the columns, rows in each table's order.
pub fn to_csv(results: &[DeResult], genes: &[String]) -> String {
    let mut s = String::new();
    let Some(first) = results.first() else {
        return s;
    };
    for (name, _) in &first.columns {
        s.push(',');
        s.push_str(&field(name));
    }
    s.push('\n');
    for res in results {
        for &j in &res.order {
            s.push_str(&field(&genes[j]));
            for (_, c) in &res.columns {
                s.push(',');
                match c {
                    DeColumn::Numbers(v) => s.push_str(&py_float(v[j])),
                    DeColumn::Flags(v) => s.push_str(if v[j] { "True" } else { "False" }),
                    DeColumn::Text(t) => {
                        let _ = write!(s, "{}", field(t));
                    }
                }
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        assert_eq!(py_float(0.05), "0.05");
        assert_eq!(py_float(0.1), "0.1");
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(1e-5), "1e-05");
        assert_eq!(py_float(2.5e-10), "2.5e-10");
        assert_eq!(py_float(-18.420680743952367), "-18.420680743952367");
        assert_eq!(py_float(1e16), "1e+16");
    }

    #[test]
    fn numpy_quantile_interpolates() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        // h = 3 * 0.9 = 2.7: 3 + 0.7 (4 - 3)
        assert!((quantile(&mut v, 0.9) - 3.7).abs() < 1e-12);
    }

    #[test]
    fn fdr_keeps_the_prefix_under_the_target() {
        let p = [0.99, 0.5, 0.97, 0.9];
        let order = descending_order(&p);
        assert_eq!(order, vec![0, 2, 3, 1]);
        // running mean of 1 - p: 0.01, 0.02, 0.0467, 0.16
        assert_eq!(fdr_flags(&p, &order, 0.05), vec![true, false, true, true]);
        assert_eq!(
            fdr_flags(&p, &order, 0.015),
            vec![true, false, false, false]
        );
    }

    #[test]
    fn ties_keep_gene_order_and_nan_goes_last() {
        assert_eq!(
            descending_order(&[1.0, f64::NAN, 2.0, 1.0]),
            vec![2, 0, 3, 1]
        );
    }
}
