//! Highly variable genes, scanpy's `highly_variable_genes(flavor="seurat_v3")` on raw counts,
//! computed in streaming passes so that it runs on data larger than memory.
//!
//! The algorithm, as scanpy 1.11 computes it (`_highly_variable_genes_seurat_v3`), per batch `b`
//! (all cells when there is no batch key), with `N` the cells of the batch:
//!
//! ```text
//! mean_g = sum_g / N,   var_g = (sumsq_g / N - mean_g^2) * (N / (N - 1))
//! fit   = loess(log10 mean_g, log10 var_g; span 0.3, degree 2), over the genes with var_g > 0
//! reg_std_g = sqrt(10^fit_g)   (1 for genes with var_g = 0)
//! clip_g    = reg_std_g * sqrt(N) + mean_g
//! x'_cg     = min(x_cg, clip_g)                                  (second pass over the counts)
//! norm_g    = (N mean_g^2 + sum_c x'^2_cg - 2 mean_g sum_c x'_cg) / ((N - 1) reg_std_g^2)
//! ```
//!
//! Genes are ranked by `norm_g` (descending) within each batch; a gene's rank is the median of its
//! ranks over the batches where it is among the top `n_top_genes` (`highly_variable_rank`), and
//! `highly_variable_nbatches` counts those batches. The chosen genes are the first `n_top_genes`
//! after a stable sort by rank (ascending, genes with no rank last), then by number of batches
//! (descending).
//!
//! The loess is Cleveland's, as `skmisc.loess` (the netlib `dloess` code) computes it with
//! scanpy's arguments and the package defaults: family gaussian (no robustness iterations),
//! surface `interpolate` with `cell = 0.2`. That is not a local fit at every point: a k-d tree
//! (here, in one dimension, a binary split of the sorted x at medians until a cell holds at most
//! `floor(n * span * cell)` points) is built over a box slightly larger than the data; the local
//! quadratic fit (tricube weights over the `floor(n * span)` nearest points) is computed only at the
//! cell boundaries (the vertices), as a value and a slope; the curve at a point is the cubic Hermite
//! interpolant between the vertices of its cell. This module follows that code step for step
//! (`ehg126` box, `ehg124` splits with its tie rule, `ehg127` local fit with column equilibration
//! and a pseudo-inverse, `ehg128` interpolation), so that the fitted values agree with scanpy's to
//! rounding (measured: 2e-13 on Kang et al.'s 13k cells).
//!
//! Ties. Genes with identical counts in a batch (say, one UMI in one cell) get exactly equal
//! normalised variances, and scanpy ranks them with numpy's default `argsort`, which is not stable:
//! the order among equal values is whatever the sort leaves. Ties near rank `n_top_genes` change the
//! chosen genes, so this module reproduces numpy's argsort as it runs on x86-64 with AVX-512 (Intel's
//! x86-simd-sort, with its libstdc++ `std::sort` fallback; see [`argsort_numpy_avx512`]). With it
//! the selection equals scanpy's exactly (`tests/hvg.rs`: Kang et al. with and without a batch
//! key). scanpy's own answer depends on the CPU: numpy on an AVX2-only machine, or with SIMD
//! disabled, orders ties differently, and on the same data chooses 12 to 14 different genes.

use super::CsrMatrix;
use crate::error::{Error, Result};

// ------------------------------------------------------------------------------------------------
// loess (one predictor, degree 2, surface "interpolate")

/// Local regression at `q` (netlib `ehg127`, kernel tricube, degree 2): the fitted value and slope.
fn local_fit(
    x: &[f64],
    y: &[f64],
    q: f64,
    nf: usize,
    span: f64,
    scratch: &mut Vec<f64>,
) -> (f64, f64) {
    // Squared distances, and rho = the nf-th smallest (times max(1, span), i.e. 1 for span <= 1).
    scratch.clear();
    scratch.extend(x.iter().map(|&xi| (xi - q) * (xi - q)));
    let mut sel = scratch.clone();
    let (_, &mut nth, _) = sel.select_nth_unstable_by(nf - 1, |a, b| a.total_cmp(b));
    let rho = nth * span.max(1.0);
    // Points at distance rho or more get weight 0 (they are, or are tied with, the farthest of the
    // nf neighbours), so only d < rho enters. Rows: sqrt(w) * (1, t, t^2), with t = x - q.
    let mut rows: Vec<[f64; 3]> = Vec::with_capacity(nf);
    let mut rhs: Vec<f64> = Vec::with_capacity(nf);
    for (i, &d) in scratch.iter().enumerate() {
        if d < rho {
            let r = (d / rho).sqrt();
            let w = (1.0 - r * r * r).powi(3).sqrt();
            let t = x[i] - q;
            rows.push([w, w * t, w * t * t]);
            rhs.push(w * y[i]);
        }
    }
    if rows.is_empty() || rho <= 0.0 {
        // Zero-width neighbourhood (netlib error 120): every neighbour sits at q.
        return (y.iter().sum::<f64>() / y.len().max(1) as f64, 0.0);
    }
    // Equilibrate columns.
    let mut colnor = [1.0f64; 3];
    for (j, c) in colnor.iter_mut().enumerate() {
        let s: f64 = rows.iter().map(|r| r[j] * r[j]).sum::<f64>().sqrt();
        if s > 0.0 {
            *c = s;
            for r in rows.iter_mut() {
                r[j] /= s;
            }
        }
    }
    // Householder QR (LINPACK dqrdc without pivoting), Q^T rhs alongside.
    let m = rows.len();
    let k = 3.min(m);
    for j in 0..k {
        let nrmxl: f64 = rows[j..].iter().map(|r| r[j] * r[j]).sum::<f64>().sqrt();
        if nrmxl == 0.0 {
            continue;
        }
        let nrmxl = if rows[j][j] != 0.0 {
            nrmxl.copysign(rows[j][j])
        } else {
            nrmxl
        };
        for r in rows[j..].iter_mut() {
            r[j] /= nrmxl;
        }
        rows[j][j] += 1.0;
        let pivot = rows[j][j];
        for l in j + 1..3 {
            let t: f64 = -rows[j..].iter().map(|r| r[j] * r[l]).sum::<f64>() / pivot;
            for r in rows[j..].iter_mut() {
                r[l] += t * r[j];
            }
        }
        let t: f64 = -rows[j..]
            .iter()
            .zip(&rhs[j..])
            .map(|(r, b)| r[j] * b)
            .sum::<f64>()
            / pivot;
        for (r, b) in rows[j..].iter().zip(rhs[j..].iter_mut()) {
            *b += t * r[j];
        }
        rows[j][j] = -nrmxl;
    }
    // R (k x 3, upper triangular) and the pseudo-inverse solution through its SVD, with netlib's
    // tolerance sigma_1 * 100 * eps.
    let mut r = [[0.0f64; 3]; 3];
    for i in 0..k {
        for j in i..3 {
            r[i][j] = rows[i][j];
        }
    }
    let qty = [
        rhs[0],
        if m > 1 { rhs[1] } else { 0.0 },
        if m > 2 { rhs[2] } else { 0.0 },
    ];
    let coef = pinv_solve3(&r, &qty);
    (coef[0] / colnor[0], coef[1] / colnor[1])
}

/// Solve `R c = b` for a 3 x 3 `R` in the least-squares, minimum-norm sense (SVD pseudo-inverse
/// with singular values below `sigma_max * 100 * eps` dropped), by one-sided Jacobi.
fn pinv_solve3(r: &[[f64; 3]; 3], b: &[f64; 3]) -> [f64; 3] {
    // A = R; rotate columns of A (and of V) until they are orthogonal: A V = U S.
    let mut a = *r;
    let mut v = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _sweep in 0..60 {
        let mut off = 0.0f64;
        for p in 0..3 {
            for q in p + 1..3 {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for row in &a {
                    alpha += row[p] * row[p];
                    beta += row[q] * row[q];
                    gamma += row[p] * row[q];
                }
                if gamma == 0.0 {
                    continue;
                }
                off = off.max(gamma.abs() / (alpha * beta).sqrt());
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for row in a.iter_mut() {
                    let (x, y) = (row[p], row[q]);
                    row[p] = c * x - s * y;
                    row[q] = s * x + c * y;
                }
                for row in v.iter_mut() {
                    let (x, y) = (row[p], row[q]);
                    row[p] = c * x - s * y;
                    row[q] = s * x + c * y;
                }
            }
        }
        if off < 1e-300 || off <= f64::EPSILON * 1e-3 {
            break;
        }
    }
    let sig: Vec<f64> = (0..3)
        .map(|j| a.iter().map(|row| row[j] * row[j]).sum::<f64>().sqrt())
        .collect();
    let smax = sig.iter().copied().fold(0.0, f64::max);
    let tol = smax * (100.0 * f64::EPSILON);
    // c = V S^+ U^T b, with U_j = A_j / s_j.
    let mut c = [0.0f64; 3];
    for j in 0..3 {
        if sig[j] > tol && sig[j] > 0.0 {
            let ub: f64 = (0..3).map(|i| a[i][j] * b[i]).sum::<f64>() / sig[j];
            let g = ub / sig[j];
            for i in 0..3 {
                c[i] += v[i][j] * g;
            }
        }
    }
    c
}

/// A fitted loess curve in one predictor: the k-d tree cells and the vertex values and slopes.
struct LoessTree {
    /// Per node: split value, or None for a leaf; children; the cell's lower and upper vertex.
    nodes: Vec<Node>,
    vertex_x: Vec<f64>,
    vertex_val: Vec<f64>,
    vertex_slope: Vec<f64>,
}

#[derive(Clone, Copy)]
struct Node {
    split: Option<f64>,
    lo: usize,
    hi: usize,
    v_lo: usize,
    v_hi: usize,
}

/// `loess(x, y, span, degree=2)` with `skmisc.loess` defaults; returns the fitted values at `x`.
pub fn loess_fit(x: &[f64], y: &[f64], span: f64) -> Result<Vec<f64>> {
    let n = x.len();
    if n != y.len() {
        return Err(Error::Shape(format!(
            "loess: {n} x values but {} y values",
            y.len()
        )));
    }
    if x.iter().chain(y).any(|v| !v.is_finite()) {
        return Err(Error::Data("loess: non-finite input".into()));
    }
    let nf = (n as f64).min((n as f64 * span + 1e-5).floor()) as usize;
    if nf == 0 || 3 > nf.saturating_sub(1) {
        return Err(Error::Data(format!(
            "loess: span {span} too small for {n} points (fewer points than parameters)"
        )));
    }
    let tree = LoessTree::build(x, y, span, nf);
    Ok(x.iter().map(|&z| tree.eval(z)).collect())
}

impl LoessTree {
    fn build(x: &[f64], y: &[f64], span: f64, nf: usize) -> LoessTree {
        let n = x.len();
        let cell = span * 0.2;
        let fc = (n as f64 * cell).floor() as usize;
        // ehg126: the bounding box, widened by 0.5% of the range.
        let (mut alpha, mut beta) = (f64::MAX, -f64::MAX);
        for &t in x {
            alpha = alpha.min(t);
            beta = beta.max(t);
        }
        let mu = 0.005 * (beta - alpha).max(1e-10 * alpha.abs().max(beta.abs()) + 1e-30);
        let (lower, upper) = (alpha - mu, beta + mu);
        let mut s = x.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let nvmax = n.max(200);
        let mut vertex_x = vec![lower, upper];
        // ehg124: cells in creation order; positions are 1-based into the sorted values.
        struct Cell {
            l: usize,
            u: usize,
        }
        let mut cells = vec![Cell { l: 1, u: n }];
        let mut nodes = vec![Node {
            split: None,
            lo: 0,
            hi: 0,
            v_lo: 0,
            v_hi: 1,
        }];
        let at = |pos: usize| s[pos - 1];
        let mut p = 0;
        while p < cells.len() {
            let (l, u) = (cells[p].l, cells[p].u);
            let (vl, vu) = (vertex_x[nodes[p].v_lo], vertex_x[nodes[p].v_hi]);
            let diam = vu - vl;
            let mut leaf = (u + 1 - l) <= fc || diam <= 0.0;
            if !leaf {
                leaf = nvmax < cells.len() + 2 || (nvmax as f64) < vertex_x.len() as f64 + 1.0;
            }
            let mut m = (l + u) / 2;
            if !leaf {
                // All ties go with the high son: look for the nearest position (offsets 0, 1, -1,
                // 2, -2, ...) where two consecutive order statistics differ.
                let mut offset: i64 = 0;
                loop {
                    let mo = m as i64 + offset;
                    if mo >= u as i64 || mo < l as i64 {
                        break;
                    }
                    let mo = mo as usize;
                    if at(mo) == at(mo + 1) {
                        offset = -offset;
                        if offset >= 0 {
                            offset += 1;
                        }
                    } else {
                        m = mo;
                        break;
                    }
                }
                leaf = vl == at(m) || vu == at(m);
            }
            if !leaf {
                let xi = at(m);
                // ehg125: a vertex at xi, reusing an equal one.
                let v = match vertex_x.iter().position(|&w| w == xi) {
                    Some(i) => i,
                    None => {
                        vertex_x.push(xi);
                        vertex_x.len() - 1
                    }
                };
                let (v_lo, v_hi) = (nodes[p].v_lo, nodes[p].v_hi);
                let lo = cells.len();
                cells.push(Cell { l, u: m });
                nodes.push(Node {
                    split: None,
                    lo: 0,
                    hi: 0,
                    v_lo,
                    v_hi: v,
                });
                let hi = cells.len();
                cells.push(Cell { l: m + 1, u });
                nodes.push(Node {
                    split: None,
                    lo: 0,
                    hi: 0,
                    v_lo: v,
                    v_hi,
                });
                nodes[p].split = Some(xi);
                nodes[p].lo = lo;
                nodes[p].hi = hi;
            }
            p += 1;
        }
        // ehg139: the local fit at every vertex.
        let mut scratch = Vec::with_capacity(n);
        let mut vertex_val = Vec::with_capacity(vertex_x.len());
        let mut vertex_slope = Vec::with_capacity(vertex_x.len());
        for &q in &vertex_x {
            let (v, sl) = local_fit(x, y, q, nf, span, &mut scratch);
            vertex_val.push(v);
            vertex_slope.push(sl);
        }
        LoessTree {
            nodes,
            vertex_x,
            vertex_val,
            vertex_slope,
        }
    }

    /// ehg128 in one dimension: descend to the leaf, then cubic Hermite between its vertices.
    fn eval(&self, z: f64) -> f64 {
        let mut j = 0;
        while let Some(xi) = self.nodes[j].split {
            j = if z <= xi {
                self.nodes[j].lo
            } else {
                self.nodes[j].hi
            };
        }
        let (ll, ur) = (self.nodes[j].v_lo, self.nodes[j].v_hi);
        let (v0, v1) = (self.vertex_x[ll], self.vertex_x[ur]);
        let h = (z - v0) / (v1 - v0);
        let phi0 = (1.0 - h) * (1.0 - h) * (1.0 + 2.0 * h);
        let phi1 = h * h * (3.0 - 2.0 * h);
        let psi0 = h * (1.0 - h) * (1.0 - h);
        let psi1 = h * h * (h - 1.0);
        phi0 * self.vertex_val[ll]
            + phi1 * self.vertex_val[ur]
            + (psi0 * self.vertex_slope[ll] + psi1 * self.vertex_slope[ur]) * (v1 - v0)
    }
}

// ------------------------------------------------------------------------------------------------
// seurat_v3

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
    counts: &dyn super::SparseRows,
    batch: Option<(Vec<u32>, usize)>,
    n_top: usize,
) -> Result<HvgResult> {
    let mut h = SeuratV3::new(counts.n_cols(), batch)?;
    let chunk = |r0: usize, r1: usize| {
        let mut c = CsrMatrix::with_cols(counts.n_cols());
        for i in r0..r1 {
            let (j, v) = counts.row(i);
            c.indices.extend_from_slice(j);
            c.data.extend_from_slice(v);
            c.indptr.push(c.indices.len() as u64);
            c.n_rows += 1;
        }
        c
    };
    let n = counts.n_rows();
    let step = 1 << 14;
    for r0 in (0..n).step_by(step) {
        h.add_stats(r0, &chunk(r0, (r0 + step).min(n)));
    }
    h.fit()?;
    for r0 in (0..n).step_by(step) {
        h.add_clipped(r0, &chunk(r0, (r0 + step).min(n)));
    }
    h.select(n_top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loess_reproduces_a_quadratic() {
        // A quadratic is fitted exactly by local quadratics, and the Hermite interpolation of exact
        // values and slopes of a quadratic is exact too.
        let x: Vec<f64> = (0..700)
            .map(|i| (i as f64 * 0.37).sin() * 3.0 + i as f64 * 0.01)
            .collect();
        let y: Vec<f64> = x.iter().map(|&t| 1.0 - 0.5 * t + 0.25 * t * t).collect();
        let f = loess_fit(&x, &y, 0.3).unwrap();
        for (a, b) in f.iter().zip(&y) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }

    #[test]
    fn pinv_handles_singular() {
        let r = [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]];
        let c = pinv_solve3(&r, &[5.0, 0.0, 0.0]);
        // Minimum-norm solution of c0 + 2 c1 = 5: (1, 2, 0).
        assert!((c[0] - 1.0).abs() < 1e-12 && (c[1] - 2.0).abs() < 1e-12 && c[2].abs() < 1e-12);
    }
}

// ------------------------------------------------------------------------------------------------
// numpy's argsort, as it runs on x86-64 with AVX-512

/// `np.argsort(x)` (default kind) as numpy 2.x computes it on an x86-64 CPU with AVX-512: Intel's
/// x86-simd-sort `avx512_argsort<double>`, emulated lane for lane. Its quicksort is not stable, and
/// seurat_v3 ranks genes by such an argsort, so genes with exactly equal normalised variances (genes
/// with identical counts in a batch are common) are ordered the way this algorithm leaves them.
/// Reproducing that order is what makes the chosen genes identical to scanpy's on such a machine.
/// (numpy on a CPU without AVX-512 uses other sorts and orders ties otherwise, so scanpy's own
/// choice differs between machines by a few genes.) Inputs must not contain NaN.
pub fn argsort_numpy_avx512(arr: &[f64]) -> Vec<usize> {
    let n = arr.len();
    let mut arg: Vec<usize> = (0..n).collect();
    // std::is_sorted with `a < b`: no element smaller than its predecessor.
    let sorted = arr
        .windows(2)
        .all(|w| w[1] >= w[0] || w[1].is_nan() || w[0].is_nan());
    if n > 1 && !sorted {
        let max_iters = 2 * (n as f64).log2() as usize;
        xss::argsort(arr, &mut arg, 0, n - 1, max_iters);
    }
    arg
}

mod xss {
    //! A scalar emulation of x86-simd-sort's AVX-512 argsort for 64-bit keys (8 lanes): the
    //! quicksort with median-of-8 pivots and compress-store partitions, and the bitonic networks for
    //! the base case of at most 256 elements. Lane `i` of a register is element `i`.

    type K = [f64; 8];
    type I = [usize; 8];

    #[inline]
    fn min(a: f64, b: f64) -> f64 {
        // _mm512_min_pd(a, b): a < b ? a : b.
        if a < b {
            a
        } else {
            b
        }
    }
    #[inline]
    fn max(a: f64, b: f64) -> f64 {
        if a > b {
            a
        } else {
            b
        }
    }

    fn perm<T: Copy>(v: &[T; 8], x: usize) -> [T; 8] {
        std::array::from_fn(|i| v[i ^ x])
    }

    /// Key-value cmp_merge: lanes in `mask` take the max of (key, other), the rest the min; a lane
    /// keeps its index when its key is unchanged.
    fn cmp_merge(k: &mut K, ix: &mut I, x: usize, mask: u8) {
        let (k2, i2) = (perm(k, x), perm(ix, x));
        for l in 0..8 {
            let t = if mask >> l & 1 == 1 {
                max(k2[l], k[l])
            } else {
                min(k2[l], k[l])
            };
            if t != k[l] {
                ix[l] = i2[l];
            }
            k[l] = t;
        }
    }

    fn sort_reg(k: &mut K, ix: &mut I) {
        cmp_merge(k, ix, 1, 0xAA);
        cmp_merge(k, ix, 3, 0xCC);
        cmp_merge(k, ix, 1, 0xAA);
        cmp_merge(k, ix, 7, 0xF0);
        cmp_merge(k, ix, 2, 0xCC);
        cmp_merge(k, ix, 1, 0xAA);
    }

    fn bitonic_merge_reg(k: &mut K, ix: &mut I) {
        cmp_merge(k, ix, 4, 0xF0);
        cmp_merge(k, ix, 2, 0xCC);
        cmp_merge(k, ix, 1, 0xAA);
    }

    /// COEX of two registers: lane-wise min to the first, max to the second; indices follow, and
    /// stay put on equal keys.
    fn coex(ka: &mut K, kb: &mut K, ia: &mut I, ib: &mut I) {
        for l in 0..8 {
            let (t1, t2) = (min(ka[l], kb[l]), max(ka[l], kb[l]));
            if t1 != ka[l] {
                std::mem::swap(&mut ia[l], &mut ib[l]);
            }
            ka[l] = t1;
            kb[l] = t2;
        }
    }

    fn reverse<T: Copy>(v: &mut [T; 8]) {
        *v = perm(v, 7);
    }

    fn bitonic_merge_n(keys: &mut [K], idx: &mut [I]) {
        let n = keys.len();
        for i in 0..n / 2 {
            let j = n - i - 1;
            reverse(&mut keys[j]);
            reverse(&mut idx[j]);
            let (a, b) = keys.split_at_mut(j);
            let (c, d) = idx.split_at_mut(j);
            coex(&mut a[i], &mut b[0], &mut c[i], &mut d[0]);
            reverse(&mut keys[j]);
            reverse(&mut idx[j]);
        }
        let mut num = n / 2;
        while num >= 2 {
            for j in (0..n).step_by(num) {
                for i in 0..num / 2 {
                    let (p, q) = (i + j, i + j + num / 2);
                    let (a, b) = keys.split_at_mut(q);
                    let (c, d) = idx.split_at_mut(q);
                    coex(&mut a[p], &mut b[0], &mut c[p], &mut d[0]);
                }
            }
            num /= 2;
        }
        for (k, ix) in keys.iter_mut().zip(idx.iter_mut()) {
            bitonic_merge_reg(k, ix);
        }
    }

    /// argsort_n: sort `arg` (at most 256 entries) by key with bitonic networks.
    fn argsort_n(arr: &[f64], arg: &mut [usize]) {
        let n = arg.len();
        let mut nv = 32;
        while nv > 1 && n * 2 <= nv * 8 {
            nv /= 2;
        }
        let mut keys = vec![[f64::INFINITY; 8]; nv];
        let mut idx = vec![[usize::MAX; 8]; nv];
        for v in 0..nv {
            for l in 0..8 {
                let p = v * 8 + l;
                if p < n {
                    idx[v][l] = arg[p];
                    keys[v][l] = arr[arg[p]];
                }
            }
        }
        for (k, ix) in keys.iter_mut().zip(idx.iter_mut()) {
            sort_reg(k, ix);
        }
        let mut per = 2;
        while per <= nv {
            for i in 0..nv / per {
                bitonic_merge_n(
                    &mut keys[i * per..(i + 1) * per],
                    &mut idx[i * per..(i + 1) * per],
                );
            }
            per *= 2;
        }
        for p in 0..n {
            arg[p] = idx[p / 8][p % 8];
        }
    }

    /// partition_vec: lanes below the pivot are compress-stored at `left`, the others at
    /// `right - count`; returns the count of lanes at or above the pivot.
    #[allow(clippy::too_many_arguments)]
    fn partition_vec(
        arg: &mut [usize],
        left: usize,
        right: usize,
        av: &I,
        kv: &K,
        pivot: f64,
        mins: &mut K,
        maxs: &mut K,
    ) -> usize {
        let ge: Vec<bool> = kv.iter().map(|&k| k >= pivot).collect();
        let amount = ge.iter().filter(|&&g| g).count();
        let mut l = left;
        let mut r = right - amount;
        for lane in 0..8 {
            if ge[lane] {
                arg[r] = av[lane];
                r += 1;
            } else {
                arg[l] = av[lane];
                l += 1;
            }
        }
        for lane in 0..8 {
            mins[lane] = min(kv[lane], mins[lane]);
            maxs[lane] = max(kv[lane], maxs[lane]);
        }
        amount
    }

    fn load(arr: &[f64], arg: &[usize], at: usize) -> (I, K) {
        let a: I = std::array::from_fn(|l| arg[at + l]);
        let k: K = std::array::from_fn(|l| arr[a[l]]);
        (a, k)
    }

    /// argpartition_unrolled with 4 registers per step (only called on more than 256 entries);
    /// `right` is exclusive. Returns the first position of the `>= pivot` part.
    fn partition(
        arr: &[f64],
        arg: &mut [usize],
        mut left: usize,
        mut right: usize,
        pivot: f64,
        smallest: &mut f64,
        biggest: &mut f64,
    ) -> usize {
        const U: usize = 4;
        for _ in 0..(right - left) % (U * 8) {
            let v = arr[arg[left]];
            *smallest = if v < *smallest { v } else { *smallest };
            *biggest = if *biggest < v { v } else { *biggest };
            // !(v < pivot): v >= pivot for the NaN-free keys this takes.
            if v >= pivot {
                right -= 1;
                arg.swap(left, right);
            } else {
                left += 1;
            }
        }
        if left == right {
            return left;
        }
        let mut mins = [*smallest; 8];
        let mut maxs = [*biggest; 8];
        let vl: Vec<(I, K)> = (0..U).map(|ii| load(arr, arg, left + 8 * ii)).collect();
        let vr: Vec<(I, K)> = (0..U)
            .map(|ii| load(arr, arg, right - 8 * (U - ii)))
            .collect();
        let mut r_store = right - 8;
        let mut l_store = left;
        left += U * 8;
        right -= U * 8;
        while right != left {
            let cur: Vec<(I, K)> = if (r_store + 8) - right < left - l_store {
                right -= U * 8;
                (0..U).map(|ii| load(arr, arg, right + ii * 8)).collect()
            } else {
                let c = (0..U).map(|ii| load(arr, arg, left + ii * 8)).collect();
                left += U * 8;
                c
            };
            for (a, k) in &cur {
                let g = partition_vec(
                    arg,
                    l_store,
                    r_store.wrapping_add(8),
                    a,
                    k,
                    pivot,
                    &mut mins,
                    &mut maxs,
                );
                l_store += 8 - g;
                r_store = r_store.wrapping_sub(g);
            }
        }
        for (a, k) in vl.iter().chain(&vr) {
            // (size_t arithmetic: after the last store r_store may wrap; it is not used again.)
            let g = partition_vec(
                arg,
                l_store,
                r_store.wrapping_add(8),
                a,
                k,
                pivot,
                &mut mins,
                &mut maxs,
            );
            l_store += 8 - g;
            r_store = r_store.wrapping_sub(g);
        }
        // reducemin / reducemax: the values are what matter.
        *smallest = mins.iter().copied().fold(f64::INFINITY, min);
        *biggest = maxs.iter().copied().fold(f64::NEG_INFINITY, max);
        l_store
    }

    /// argsort_: `right` inclusive.
    pub(super) fn argsort(
        arr: &[f64],
        arg: &mut [usize],
        left: usize,
        right: usize,
        max_iters: usize,
    ) {
        if max_iters == 0 {
            // No progress (many equal keys): x86-simd-sort hands the range to std::sort.
            std_sort(&mut arg[left..=right], |a, b| arr[a] < arr[b]);
            return;
        }
        if right + 1 - left <= 256 {
            argsort_n(arr, &mut arg[left..=right]);
            return;
        }
        let size = (right - left) / 8;
        let mut s: Vec<f64> = (1..=8).map(|k| arr[arg[left + k * size]]).collect();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let pivot = s[4];
        let (mut smallest, mut biggest) = (f64::INFINITY, f64::NEG_INFINITY);
        let p = partition(
            arr,
            arg,
            left,
            right + 1,
            pivot,
            &mut smallest,
            &mut biggest,
        );
        if pivot != smallest {
            argsort(arr, arg, left, p - 1, max_iters - 1);
        }
        if pivot != biggest {
            argsort(arr, arg, p, right, max_iters - 1);
        }
    }

    /// libstdc++'s `std::sort` (introsort: median-of-three pivot, unguarded partition, heapsort
    /// past a depth of 2 floor(log2 n), final insertion sort with threshold 16), step for step, so
    /// that equal keys end in the same order as in the C++ code numpy runs.
    pub(super) fn std_sort(v: &mut [usize], less: impl Fn(usize, usize) -> bool + Copy) {
        let n = v.len();
        if n > 1 {
            let depth = 2 * (usize::BITS - 1 - n.leading_zeros()) as usize;
            introsort_loop(v, 0, n, depth, less);
            final_insertion_sort(v, 0, n, less);
        }
    }

    const THRESHOLD: usize = 16;

    fn introsort_loop(
        v: &mut [usize],
        first: usize,
        mut last: usize,
        mut depth: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        while last - first > THRESHOLD {
            if depth == 0 {
                make_heap(v, first, last, less);
                sort_heap(v, first, last, less);
                return;
            }
            depth -= 1;
            let cut = partition_pivot(v, first, last, less);
            introsort_loop(v, cut, last, depth, less);
            last = cut;
        }
    }

    fn partition_pivot(
        v: &mut [usize],
        first: usize,
        last: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) -> usize {
        let mid = first + (last - first) / 2;
        let (a, b, c) = (first + 1, mid, last - 1);
        let cmp = |x: usize, y: usize| less(v[x], v[y]);
        let pick = if cmp(a, b) {
            if cmp(b, c) {
                b
            } else if cmp(a, c) {
                c
            } else {
                a
            }
        } else if cmp(a, c) {
            a
        } else if cmp(b, c) {
            c
        } else {
            b
        };
        v.swap(first, pick);
        // __unguarded_partition(first + 1, last, pivot = first)
        let (mut lo, mut hi) = (first + 1, last);
        loop {
            while less(v[lo], v[first]) {
                lo += 1;
            }
            hi -= 1;
            while less(v[first], v[hi]) {
                hi -= 1;
            }
            if lo >= hi {
                return lo;
            }
            v.swap(lo, hi);
            lo += 1;
        }
    }

    fn final_insertion_sort(
        v: &mut [usize],
        first: usize,
        last: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        if last - first > THRESHOLD {
            insertion_sort(v, first, first + THRESHOLD, less);
            for i in first + THRESHOLD..last {
                unguarded_linear_insert(v, i, less);
            }
        } else {
            insertion_sort(v, first, last, less);
        }
    }

    fn insertion_sort(
        v: &mut [usize],
        first: usize,
        last: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        if first == last {
            return;
        }
        for i in first + 1..last {
            if less(v[i], v[first]) {
                let val = v[i];
                v.copy_within(first..i, first + 1);
                v[first] = val;
            } else {
                unguarded_linear_insert(v, i, less);
            }
        }
    }

    fn unguarded_linear_insert(
        v: &mut [usize],
        mut last: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        let val = v[last];
        let mut next = last - 1;
        while less(val, v[next]) {
            v[last] = v[next];
            last = next;
            next -= 1;
        }
        v[last] = val;
    }

    fn adjust_heap(
        v: &mut [usize],
        first: usize,
        mut hole: usize,
        len: usize,
        value: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        let top = hole;
        let mut second = hole;
        while second < (len - 1) / 2 {
            second = 2 * (second + 1);
            if less(v[first + second], v[first + second - 1]) {
                second -= 1;
            }
            v[first + hole] = v[first + second];
            hole = second;
        }
        if len & 1 == 0 && second == (len - 2) / 2 {
            second = 2 * (second + 1);
            v[first + hole] = v[first + second - 1];
            hole = second - 1;
        }
        // __push_heap
        let mut parent = if hole > 0 { (hole - 1) / 2 } else { 0 };
        while hole > top && less(v[first + parent], value) {
            v[first + hole] = v[first + parent];
            hole = parent;
            parent = if hole > 0 { (hole - 1) / 2 } else { 0 };
        }
        v[first + hole] = value;
    }

    fn make_heap(
        v: &mut [usize],
        first: usize,
        last: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        let len = last - first;
        if len < 2 {
            return;
        }
        let mut parent = (len - 2) / 2;
        loop {
            let value = v[first + parent];
            adjust_heap(v, first, parent, len, value, less);
            if parent == 0 {
                return;
            }
            parent -= 1;
        }
    }

    fn sort_heap(
        v: &mut [usize],
        first: usize,
        mut last: usize,
        less: impl Fn(usize, usize) -> bool + Copy,
    ) {
        while last - first > 1 {
            last -= 1;
            // __pop_heap(first, last, last)
            let value = v[last];
            v[last] = v[first];
            adjust_heap(v, first, 0, last - first, value, less);
        }
    }
}
