//! scanpy's `highly_variable_genes(flavor="seurat_v3")` in streaming passes over row chunks (the
//! algorithm is in the parent module's documentation).

use super::{argsort_numpy_avx512, loess_fit};
use crate::data::{CsrMatrix, SparseRows};
use crate::error::{Error, Result};

/// What [`SeuratV3::select`] returns, per gene (scanpy's `var` columns of the same names).
#[derive(Clone, Debug, Default)]
pub struct HvgResult {
    pub highly_variable: Vec<bool>,
    pub means: Vec<f64>,
    pub variances: Vec<f64>,
    /// Normalised variance, averaged over batches.
    pub variances_norm: Vec<f64>,
    /// Median rank over the batches where the gene is among the top; NaN where it never is.
    pub highly_variable_rank: Vec<f64>,
    pub highly_variable_nbatches: Vec<u32>,
}

/// The seurat_v3 computation in passes over row chunks: [`add_stats`](Self::add_stats) over all
/// rows, [`fit`](Self::fit), [`add_clipped`](Self::add_clipped) over all rows (in the same order),
/// then [`select`](Self::select). Memory: a few arrays of `n_batches x n_genes` f64.
pub struct SeuratV3 {
    n_genes: usize,
    /// Batch code of every cell; empty for a single batch.
    codes: Vec<u32>,
    n_batches: usize,
    span: f64,
    n_cells: Vec<u64>,
    sum: Vec<f64>,
    sumsq: Vec<f64>,
    mean: Vec<f64>,
    reg_std: Vec<f64>,
    clip: Vec<f64>,
    csum: Vec<f64>,
    csumsq: Vec<f64>,
    fitted: bool,
}

impl SeuratV3 {
    /// `batch`: the batch code of every cell and the number of categories (None: one batch).
    pub fn new(n_genes: usize, batch: Option<(Vec<u32>, usize)>) -> Result<SeuratV3> {
        let (codes, n_batches) = batch.unwrap_or((Vec::new(), 1));
        if codes.iter().any(|&c| c as usize >= n_batches) {
            return Err(Error::Data("hvg: a batch code is out of range".into()));
        }
        let bg = n_batches.max(1) * n_genes;
        Ok(SeuratV3 {
            n_genes,
            codes,
            n_batches: n_batches.max(1),
            span: 0.3,
            n_cells: vec![0; n_batches.max(1)],
            sum: vec![0.0; bg],
            sumsq: vec![0.0; bg],
            mean: Vec::new(),
            reg_std: Vec::new(),
            clip: Vec::new(),
            csum: vec![0.0; bg],
            csumsq: vec![0.0; bg],
            fitted: false,
        })
    }

    /// The loess span (scanpy's `span`, 0.3 by default).
    pub fn with_span(mut self, span: f64) -> Self {
        self.span = span;
        self
    }

    fn batch_of(&self, row: usize) -> usize {
        if self.codes.is_empty() {
            0
        } else {
            self.codes.get(row).copied().unwrap_or(0) as usize
        }
    }

    /// First pass: sums and sums of squares per batch and gene.
    pub fn add_stats(&mut self, first_row: usize, chunk: &CsrMatrix) {
        let g_n = self.n_genes;
        for i in 0..chunk.n_rows {
            let b = self.batch_of(first_row + i);
            self.n_cells[b] += 1;
            let (a, e) = (chunk.indptr[i] as usize, chunk.indptr[i + 1] as usize);
            for k in a..e {
                let j = chunk.indices[k] as usize;
                let v = chunk.data[k] as f64;
                self.sum[b * g_n + j] += v;
                self.sumsq[b * g_n + j] += v * v;
            }
        }
    }

    /// Fit the mean-variance trend of every batch; sets the clipping values for the second pass.
    pub fn fit(&mut self) -> Result<()> {
        let g_n = self.n_genes;
        self.mean = vec![0.0; self.n_batches * g_n];
        self.reg_std = vec![1.0; self.n_batches * g_n];
        self.clip = vec![0.0; self.n_batches * g_n];
        for b in 0..self.n_batches {
            let n = self.n_cells[b];
            if n == 0 {
                continue;
            }
            if n < 2 {
                return Err(Error::Data(format!(
                    "highly variable genes: batch {b} has a single cell; seurat_v3 needs at least 2"
                )));
            }
            let nf = n as f64;
            let corr = nf / (nf - 1.0);
            let mut xs = Vec::new();
            let mut ys = Vec::new();
            let mut idx = Vec::new();
            for g in 0..g_n {
                let s = self.sum[b * g_n + g];
                let mean = s / nf;
                let var = (self.sumsq[b * g_n + g] / nf - mean * mean) * corr;
                self.mean[b * g_n + g] = mean;
                if var > 0.0 {
                    xs.push(mean.log10());
                    ys.push(var.log10());
                    idx.push(g);
                }
            }
            if !xs.is_empty() {
                let fitted = loess_fit(&xs, &ys, self.span)?;
                for (&g, &f) in idx.iter().zip(&fitted) {
                    self.reg_std[b * g_n + g] = 10f64.powf(f).sqrt();
                }
            }
            let vmax = nf.sqrt();
            for g in 0..g_n {
                self.clip[b * g_n + g] = self.reg_std[b * g_n + g] * vmax + self.mean[b * g_n + g];
            }
        }
        self.fitted = true;
        Ok(())
    }

    /// Second pass (after [`fit`](Self::fit)): sums of the clipped counts, in row order.
    pub fn add_clipped(&mut self, first_row: usize, chunk: &CsrMatrix) {
        let g_n = self.n_genes;
        for i in 0..chunk.n_rows {
            let b = self.batch_of(first_row + i);
            let (a, e) = (chunk.indptr[i] as usize, chunk.indptr[i + 1] as usize);
            for k in a..e {
                let j = b * g_n + chunk.indices[k] as usize;
                let v = (chunk.data[k] as f64).min(self.clip[j]);
                self.csumsq[j] += v * v;
                self.csum[j] += v;
            }
        }
    }

    /// Rank and choose `n_top` genes.
    pub fn select(&self, n_top: usize) -> Result<HvgResult> {
        if !self.fitted {
            return Err(Error::Config("hvg: select called before fit".into()));
        }
        let g_n = self.n_genes;
        if n_top == 0 || n_top > g_n {
            return Err(Error::Config(format!(
                "n_top_genes {n_top} with {g_n} genes"
            )));
        }
        let present: Vec<usize> = (0..self.n_batches)
            .filter(|&b| self.n_cells[b] > 0)
            .collect();
        if present.is_empty() {
            return Err(Error::Data("highly variable genes: no cells".into()));
        }
        let mut norm = vec![vec![0.0f64; g_n]; present.len()];
        for (nv, &b) in norm.iter_mut().zip(&present) {
            let n = self.n_cells[b] as f64;
            for (g, out) in nv.iter_mut().enumerate() {
                let j = b * g_n + g;
                let (mean, rs) = (self.mean[j], self.reg_std[j]);
                *out = (1.0 / ((n - 1.0) * (rs * rs)))
                    * ((n * (mean * mean)) + self.csumsq[j] - 2.0 * self.csum[j] * mean);
            }
        }
        // Ranks within each batch (0 = most variable): `argsort(argsort(-norm))`, with numpy's
        // order among exactly equal values (see `argsort_numpy_avx512`).
        let mut nb = vec![0u32; g_n];
        let mut ranks: Vec<Vec<f64>> = vec![Vec::new(); g_n];
        for nv in &norm {
            let neg: Vec<f64> = nv.iter().map(|&v| -v).collect();
            let order = if neg.iter().any(|v| v.is_nan()) {
                // numpy sorts NaN last; x86-simd-sort hands such arrays to std::sort.
                let mut o: Vec<usize> = (0..g_n).collect();
                o.sort_by(|&a, &b| match (neg[a].is_nan(), neg[b].is_nan()) {
                    (false, false) => neg[a].partial_cmp(&neg[b]).unwrap(),
                    (x, y) => x.cmp(&y),
                });
                o
            } else {
                argsort_numpy_avx512(&neg)
            };
            for (r, &g) in order.iter().enumerate() {
                if r < n_top {
                    nb[g] += 1;
                    ranks[g].push(r as f64);
                }
            }
        }
        let median: Vec<f64> = ranks
            .iter_mut()
            .map(|r| {
                if r.is_empty() {
                    return f64::NAN;
                }
                r.sort_by(|a, b| a.total_cmp(b));
                let k = r.len();
                if k % 2 == 1 {
                    r[k / 2]
                } else {
                    // np.ma.median on float32 ranks: the mean of the two middle values (exact).
                    ((r[k / 2 - 1] as f32 + r[k / 2] as f32) / 2.0) as f64
                }
            })
            .collect();
        let mut order: Vec<usize> = (0..g_n).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (median[a], median[b]);
            let by_rank = match (x.is_nan(), y.is_nan()) {
                (false, false) => x.partial_cmp(&y).unwrap(),
                (a, b) => a.cmp(&b),
            };
            by_rank.then(nb[b].cmp(&nb[a]))
        });
        let mut hv = vec![false; g_n];
        for &g in &order[..n_top] {
            hv[g] = true;
        }
        // Whole-data mean and variance (scanpy's `means`, `variances`).
        let n_all: f64 = self.n_cells.iter().sum::<u64>() as f64;
        let mut means = vec![0.0; g_n];
        let mut variances = vec![0.0; g_n];
        for g in 0..g_n {
            let s: f64 = (0..self.n_batches).map(|b| self.sum[b * g_n + g]).sum();
            let sq: f64 = (0..self.n_batches).map(|b| self.sumsq[b * g_n + g]).sum();
            let m = s / n_all;
            means[g] = m;
            variances[g] = if n_all > 1.0 {
                (sq / n_all - m * m) * (n_all / (n_all - 1.0))
            } else {
                0.0
            };
        }
        let variances_norm = (0..g_n)
            .map(|g| norm.iter().map(|v| v[g]).sum::<f64>() / norm.len() as f64)
            .collect();
        Ok(HvgResult {
            highly_variable: hv,
            means,
            variances,
            variances_norm,
            highly_variable_rank: median,
            highly_variable_nbatches: nb,
        })
    }
}

/// seurat_v3 on a whole matrix in memory (or mapped): both passes over its rows.
pub fn highly_variable_genes_seurat_v3(
    counts: &dyn SparseRows,
    batch: Option<(Vec<u32>, usize)>,
    n_top: usize,
) -> Result<HvgResult> {
    let mut h = SeuratV3::new(counts.n_cols(), batch)?;
    let n = counts.n_rows();
    let step = 1 << 14;
    let chunk = |r0: usize| CsrMatrix::from_rows(counts, r0, (r0 + step).min(n));
    for r0 in (0..n).step_by(step) {
        h.add_stats(r0, &chunk(r0));
    }
    h.fit()?;
    for r0 in (0..n).step_by(step) {
        h.add_clipped(r0, &chunk(r0));
    }
    h.select(n_top)
}
