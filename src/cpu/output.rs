//! The decoder's output, fused: per cell, the softmax of the scale logits, the mean
//! `mu = exp(library) softmax(rho)`, the log-likelihood of the counts and its gradient with respect
//! to both heads' logits (`rho`, `pi`) and the dispersion, in a few passes over the cell's row of
//! genes while it sits in L1. With `a_g = -(dl_g/dmu_g) mu_g` the softmax's Jacobian gives
//! `dloss/drho_k = a_k - s_k sum_g a_g`. Shapes: B cells, G genes.
//!
//! CPU twin of kernels/output.cu (checked by tests/cuda_kernels.rs `output_*`): [`decoder_output`]
//! of `decoder_output_fwd` / `decoder_output_bwd`; `column_sum_bwd` of the bias sums
//! (`gemm::add_column_sums`) and of [`dispersion_category_backward`].
//!
//! Per cell:
//! 0. add the heads' biases to the logits (the products arrive without them);
//! 1. `max rho`, then `e_g = exp(rho_g - max)` and their sum;
//! 2. gather the non-zero counts of the sparse row with their `e`, `pi`, `theta` (before `pi` is
//!    overwritten by its gradient);
//! 3. the bulk pass: every gene as if its count were zero (`math::likelihood::*_zero`; for ZINB the
//!    fast form, two exp, two ln and two divisions, when no `pi` of the cell is below -20), vectorised;
//! 4. the non-zeros (`*_nonzero`, with lgamma / digamma), vectorised over the gathered list, and
//!    scattered over the bulk values;
//! 5. the sums (`-sum_g ll_g + sum_nz lgamma(x+1)`, `sum_g a_g`), the softmax Jacobian, and the
//!    chunk's column sums: the heads' bias gradients and, for a per-gene dispersion, px_r's.
//!
//! The per-gene maths lives in `math::likelihood` and runs in the engine's precision: exact `std`
//! functions in f64, the branch-free approximations of `math::special` in f32. Cells are processed in
//! fixed chunks of `CELLS_PER_CHUNK` in parallel; each cell's result and the order of every sum are
//! independent of the number of threads.

use super::simd::{dispatch, exp_shift_sum, lane_max, lane_min, lane_sum_f64, Kernel};
use crate::batch::Minibatch;
use crate::float::Float;
use crate::math::likelihood::{
    nb_nonzero, nb_zero_fast, poisson_nonzero, poisson_zero, zinb_nonzero, zinb_zero,
    zinb_zero_fast, CountTables, GeneLikelihood, EPS,
};
use rayon::prelude::*;
use std::sync::Mutex;

/// Cells per parallel chunk. Fixed, so that the column sums (summed per chunk, then over chunks in
/// order) do not depend on the number of threads.
pub const CELLS_PER_CHUNK: usize = 8;

/// Per-gene dispersion tables of one step, category-major (`[n_cat, G]`): `theta = exp(px_r)`,
/// `1 / (theta + eps)`, `lgamma(theta)`, `digamma(theta)`.
#[derive(Default, Debug)]
pub struct ThetaTable<T> {
    pub n_cat: usize,
    pub theta: Vec<T>,
    pub inv_tpe: Vec<T>,
    pub lgamma: Vec<T>,
    pub digamma: Vec<T>,
}

impl<T: Float> ThetaTable<T> {
    /// From `px_r` `[G, n_cat]` (gene-major, as torch stores it; `n_cat = 1` for `gene`).
    pub fn fill(&mut self, px_r: &[T], g: usize, n_cat: usize) {
        self.n_cat = n_cat;
        for v in [
            &mut self.theta,
            &mut self.inv_tpe,
            &mut self.lgamma,
            &mut self.digamma,
        ] {
            v.resize(g * n_cat, T::ZERO);
        }
        for c in 0..n_cat {
            let k = c * g..(c + 1) * g;
            // theta = exp(px_r) for category c, contiguous first.
            for (j, t) in self.theta[k.clone()].iter_mut().enumerate() {
                *t = px_r[j * n_cat + c];
            }
            dispatch(FillTheta {
                theta: &mut self.theta[k.clone()],
                inv_tpe: &mut self.inv_tpe[k.clone()],
                lgamma: &mut self.lgamma[k.clone()],
                digamma: &mut self.digamma[k],
            });
        }
    }
}

struct FillTheta<'a, T> {
    theta: &'a mut [T],
    inv_tpe: &'a mut [T],
    lgamma: &'a mut [T],
    digamma: &'a mut [T],
}

impl<T: Float> Kernel for FillTheta<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let n = self.theta.len();
        let (it, lg, dg) = (
            &mut self.inv_tpe[..n],
            &mut self.lgamma[..n],
            &mut self.digamma[..n],
        );
        for j in 0..n {
            let th = self.theta[j].vexp();
            let (l, d) = th.lgamma_digamma();
            self.theta[j] = th;
            it[j] = T::ONE / (th + T::from_f64(EPS));
            lg[j] = l;
            dg[j] = d;
        }
    }
}

/// The heads' biases, added to the logits as the kernel reads them (the products arrive without).
#[derive(Clone, Copy)]
pub struct HeadBiases<'a, T> {
    pub rho: &'a [T],
    pub pi: Option<&'a [T]>,
    pub r: Option<&'a [T]>,
}

/// Where a cell's `theta` comes from.
#[derive(Clone, Copy)]
pub enum ThetaSource<'a, T> {
    /// No dispersion (Poisson).
    None,
    /// Per gene (`codes` None) or per gene and category (the cell's batch or label code).
    Table {
        table: &'a ThetaTable<T>,
        codes: Option<&'a [u32]>,
    },
    /// Per cell and gene: `theta = exp(r)` from the `r` plane (the `px_r_decoder` head's output).
    Cell,
}

/// The `[B, G]` planes of the output and their gradients.
#[derive(Default, Debug)]
pub struct OutputPlanes<T> {
    /// In: the scale logits `rho` without the bias. Out: `px_scale = softmax(rho + bias)`.
    pub scale: Vec<T>,
    /// Out: `dloss/drho` (already divided by B).
    pub d_rho: Vec<T>,
    /// In: zero-inflation logits `pi` without the bias. Out: the logits (with the bias), or with
    /// gradients `dloss/dpi`.
    pub pi: Vec<T>,
    /// In (gene-cell): dispersion logits `r` without the bias. Out (with gradients, unless the
    /// dispersion is per gene): `dloss/dr` per cell and gene.
    pub r: Vec<T>,
    /// Per cell: `-sum_g log p(x_g)`.
    pub reconstruction: Vec<f64>,
    /// Per cell: `dloss/dlibrary` (already divided by B).
    pub d_library: Vec<T>,
    /// With gradients: `sum_b dloss/drho`, `sum_b dloss/dpi` (the heads' bias gradients) and, for a
    /// per-gene dispersion, `sum_b dloss/dr` (px_r's gradient), each `[G]`.
    pub sum_d_rho: Vec<T>,
    pub sum_d_pi: Vec<T>,
    pub sum_d_r: Vec<T>,
    /// Per-chunk partial column sums `[chunks, 3, G]`.
    partial: Vec<T>,
    /// Per-thread scratch.
    scratch: Vec<Mutex<Scratch<T>>>,
}

impl<T: Float> OutputPlanes<T> {
    pub fn resize(&mut self, b: usize, g: usize) {
        for v in [&mut self.scale, &mut self.d_rho, &mut self.pi, &mut self.r] {
            v.resize(b * g, T::ZERO);
        }
        self.reconstruction.resize(b, 0.0);
        self.d_library.resize(b, T::ZERO);
        for v in [&mut self.sum_d_rho, &mut self.sum_d_pi, &mut self.sum_d_r] {
            v.resize(g, T::ZERO);
        }
        self.partial
            .resize(b.div_ceil(CELLS_PER_CHUNK) * 3 * g, T::ZERO);
    }
}

/// One thread's working rows: the per-gene log-likelihood, the gene-cell dispersion, and the
/// gathered non-zeros (inputs and results).
#[derive(Default, Debug)]
struct Scratch<T> {
    ll: Vec<T>,
    /// `dloss/dr` of the cell when it goes to the column sums only.
    r_row: Vec<T>,
    theta: Vec<T>,
    inv_tpe: Vec<T>,
    nz_j: Vec<u32>,
    nz: [Vec<T>; 7],
    out: [Vec<T>; 4],
}

impl<T: Float> Scratch<T> {
    fn reserve(&mut self, g: usize) {
        for v in [
            &mut self.ll,
            &mut self.r_row,
            &mut self.theta,
            &mut self.inv_tpe,
        ] {
            if v.len() < g {
                v.resize(g, T::ZERO);
            }
        }
    }
}

/// Forward and, with `grads`, backward of the output for every cell of `batch`. `library[b]` is the
/// log library size; `grad_scale` is `1/B` for the mean over cells.
#[allow(clippy::too_many_arguments)]
pub fn decoder_output<T: Float>(
    planes: &mut OutputPlanes<T>,
    batch: &Minibatch,
    likelihood: GeneLikelihood,
    theta: ThetaSource<T>,
    biases: HeadBiases<T>,
    library: &[T],
    grads: bool,
    grad_scale: f64,
) {
    let g = batch.n_genes;
    let nb = batch.len();
    let per = CELLS_PER_CHUNK;
    let n_chunks = nb.div_ceil(per);
    let threads = rayon::current_num_threads();
    let OutputPlanes {
        scale,
        d_rho,
        pi,
        r,
        reconstruction,
        d_library,
        sum_d_rho,
        sum_d_pi,
        sum_d_r,
        partial,
        scratch,
    } = planes;
    if scratch.len() < threads {
        scratch.resize_with(threads, Default::default);
    }
    // Column sums in the kernel: the heads' biases always, px_r's gradient for a per-gene
    // dispersion (then the r plane is not written at all).
    let gene_sums = matches!(theta, ThetaSource::Table { codes: None, .. });
    let gs = T::from_f64(grad_scale);
    let scratch = &scratch[..];
    scale[..nb * g]
        .par_chunks_mut(per * g)
        .zip(d_rho[..nb * g].par_chunks_mut(per * g))
        .zip(pi[..nb * g].par_chunks_mut(per * g))
        .zip(r[..nb * g].par_chunks_mut(per * g))
        .zip(reconstruction[..nb].par_chunks_mut(per))
        .zip(d_library[..nb].par_chunks_mut(per))
        .zip(partial[..n_chunks * 3 * g].par_chunks_mut(3 * g))
        .enumerate()
        .for_each(|(c, ((((((s, dr), p), rr), rec), dlib), part))| {
            let t = rayon::current_thread_index().unwrap_or(0) % scratch.len();
            let mut sc = scratch[t].lock().unwrap_or_else(|e| e.into_inner());
            sc.reserve(g);
            if grads {
                part.iter_mut().for_each(|v| *v = T::ZERO);
            }
            let (p_rho, rest) = part.split_at_mut(g);
            let (p_pi, p_r) = rest.split_at_mut(g);
            for (i, (((((s, dr), p), rr), rec), dlib)) in s
                .chunks_mut(g)
                .zip(dr.chunks_mut(g))
                .zip(p.chunks_mut(g))
                .zip(rr.chunks_mut(g))
                .zip(rec.iter_mut())
                .zip(dlib.iter_mut())
                .enumerate()
            {
                let b = c * per + i;
                let (idx, val) = batch.row(b);
                let (th, itpe, lg, dg) = match theta {
                    ThetaSource::Table { table, codes } => {
                        let k = codes.map_or(0, |cs| cs[b] as usize) * g;
                        (
                            &table.theta[k..k + g],
                            &table.inv_tpe[k..k + g],
                            &table.lgamma[k..k + g],
                            &table.digamma[k..k + g],
                        )
                    }
                    _ => (&[][..], &[][..], &[][..], &[][..]),
                };
                let cell = Cell {
                    biases,
                    likelihood,
                    gene_cell: matches!(theta, ThetaSource::Cell),
                    grads,
                    grad_scale,
                    gs,
                    lib: library[b].exp(),
                    rho: s,
                    d_rho: dr,
                    pi: p,
                    r: rr,
                    theta: th,
                    inv_tpe: itpe,
                    lg_theta: lg,
                    dg_theta: dg,
                    idx,
                    val,
                    sc: &mut sc,
                    sums: grads.then_some((&mut *p_rho, &mut *p_pi, &mut *p_r)),
                    gene_sums,
                };
                let (rc, dl) = dispatch(cell);
                *rec = rc;
                *dlib = dl;
            }
        });
    if grads {
        // Chunks in order: the same sums on any number of threads.
        for v in [&mut *sum_d_rho, &mut *sum_d_pi, &mut *sum_d_r] {
            v[..g].iter_mut().for_each(|x| *x = T::ZERO);
        }
        for part in partial[..n_chunks * 3 * g].chunks(3 * g) {
            for (k, out) in [&mut *sum_d_rho, &mut *sum_d_pi, &mut *sum_d_r]
                .into_iter()
                .enumerate()
            {
                for (o, &v) in out[..g].iter_mut().zip(&part[k * g..(k + 1) * g]) {
                    *o += v;
                }
            }
        }
    }
}

/// The gradient of a per-category dispersion (gene-batch, gene-label): `dpx_r[j, c_b] += dr[b, j]`
/// over the cells in order, `dpx_r` `[G, n_cat]` gene-major, `dr` `[B, G]`, `codes` `[B]`. (For a
/// per-gene dispersion `decoder_output` sums `dr` itself, into `sum_d_r`.)
pub fn dispersion_category_backward<T: Float>(
    dpx_r: &mut [T],
    dr: &[T],
    codes: &[u32],
    g: usize,
    n_cat: usize,
) {
    for (row, &c) in dr.chunks(g).zip(codes) {
        for (j, &v) in row.iter().enumerate() {
            dpx_r[j * n_cat + c as usize] += v;
        }
    }
}

#[inline(always)]
fn add_in_place<T: Float>(x: &mut [T], b: &[T]) {
    let b = &b[..x.len()];
    for (v, &w) in x.iter_mut().zip(b) {
        *v += w;
    }
}

/// One cell's output (see the module's comment).
struct Cell<'a, T> {
    biases: HeadBiases<'a, T>,
    likelihood: GeneLikelihood,
    gene_cell: bool,
    grads: bool,
    grad_scale: f64,
    gs: T,
    /// `exp(library)`.
    lib: T,
    rho: &'a mut [T],
    d_rho: &'a mut [T],
    pi: &'a mut [T],
    r: &'a mut [T],
    theta: &'a [T],
    inv_tpe: &'a [T],
    lg_theta: &'a [T],
    dg_theta: &'a [T],
    idx: &'a [u32],
    val: &'a [f32],
    sc: &'a mut Scratch<T>,
    /// The chunk's column sums of `d_rho`, `d_pi`, `d_r` (with gradients).
    sums: Option<(&'a mut [T], &'a mut [T], &'a mut [T])>,
    /// Whether `d_r` goes to the column sums instead of the `r` plane (per-gene dispersion).
    gene_sums: bool,
}

impl<T: Float> Kernel for Cell<'_, T> {
    /// The reconstruction loss and `dloss/dlibrary`.
    type Output = (f64, T);

    #[inline(always)]
    fn run(self) -> (f64, T) {
        let Cell {
            biases,
            likelihood,
            gene_cell,
            grads,
            grad_scale,
            gs,
            lib,
            rho,
            d_rho,
            pi,
            r,
            theta,
            inv_tpe,
            lg_theta,
            dg_theta,
            idx,
            val,
            sc,
            sums,
            gene_sums,
        } = self;
        let g = rho.len();
        // 0. The heads' biases.
        add_in_place(rho, biases.rho);
        if let Some(bp) = biases.pi {
            add_in_place(pi, bp);
        }
        if let Some(br) = biases.r {
            add_in_place(r, br);
        }
        // 1. Softmax numerators, as torch does it: exp(rho - max) / sum.
        let mx = lane_max(rho);
        let inv = T::ONE / exp_shift_sum(rho, mx);
        let e = rho;

        // The dispersion row: tables, or exp(r) per gene for gene-cell.
        let (theta, inv_tpe): (&[T], &[T]) = if gene_cell {
            let (th, it) = (&mut sc.theta[..g], &mut sc.inv_tpe[..g]);
            let rr = &r[..g];
            let eps = T::from_f64(EPS);
            for j in 0..g {
                let t = rr[j].vexp();
                th[j] = t;
                it[j] = T::ONE / (t + eps);
            }
            (&sc.theta[..g], &sc.inv_tpe[..g])
        } else {
            (theta, inv_tpe)
        };
        let has_theta = likelihood != GeneLikelihood::Poisson;

        // 2. Gather the non-zeros. `lfact` collects sum lgamma(x + 1).
        let [nz_x, nz_e, nz_pi, nz_th, nz_it, nz_lg, nz_dg] = &mut sc.nz;
        let nz_j = &mut sc.nz_j;
        for v in [&mut *nz_x, nz_e, nz_pi, nz_th, nz_it, nz_lg, nz_dg] {
            v.clear();
        }
        nz_j.clear();
        let mut lfact = 0.0f64;
        let tables = CountTables::get();
        // Counts equal to eps exactly (ZINB only): neither of scvi-tools' masks holds.
        let mut eps_exact = 0usize;
        for (&j, &x) in idx.iter().zip(val) {
            let xf = x as f64;
            let zero = match likelihood {
                GeneLikelihood::Zinb => xf < EPS,
                _ => xf == 0.0,
            };
            if zero {
                continue;
            }
            if likelihood == GeneLikelihood::Zinb && xf == EPS {
                eps_exact += 1;
                continue;
            }
            let j = j as usize;
            lfact += tables.log_factorial(xf);
            nz_j.push(j as u32);
            nz_x.push(T::from_f64(xf));
            nz_e.push(e[j]);
            if likelihood == GeneLikelihood::Zinb {
                nz_pi.push(pi[j]);
            }
            if has_theta {
                let th = theta[j];
                nz_th.push(th);
                nz_it.push(inv_tpe[j]);
                if gene_cell {
                    let (lg, dg) = th.lgamma_digamma();
                    nz_lg.push(lg);
                    nz_dg.push(dg);
                } else {
                    nz_lg.push(lg_theta[j]);
                    nz_dg.push(dg_theta[j]);
                }
            }
        }
        let n = nz_j.len();

        // 3. The bulk: every gene as a zero count. ZINB takes the fast form when no pi of the cell
        //    is below -20 (torch's softplus threshold is then never reached).
        let ll = &mut sc.ll[..g];
        let (pi, d_rho) = (&mut pi[..g], &mut d_rho[..g]);
        let r = if gene_sums {
            &mut sc.r_row[..g]
        } else {
            &mut r[..g]
        };
        let fast = likelihood == GeneLikelihood::Zinb && lane_min(pi) >= T::from_f64(-20.0);
        match (likelihood, grads) {
            (GeneLikelihood::Zinb, true) if fast => {
                let (theta, inv_tpe) = (&theta[..g], &inv_tpe[..g]);
                for j in 0..g {
                    let s = e[j] * inv;
                    e[j] = s;
                    let mu = lib * s;
                    let t = zinb_zero_fast(mu, theta[j], inv_tpe[j], pi[j]);
                    ll[j] = t.ll;
                    d_rho[j] = -t.d_mu * mu;
                    pi[j] = -t.d_pi * gs;
                    r[j] = -t.d_theta * theta[j] * gs;
                }
            }
            (GeneLikelihood::Zinb, false) if fast => {
                let (theta, inv_tpe) = (&theta[..g], &inv_tpe[..g]);
                for j in 0..g {
                    let s = e[j] * inv;
                    e[j] = s;
                    ll[j] = zinb_zero_fast(lib * s, theta[j], inv_tpe[j], pi[j]).ll;
                }
            }
            (GeneLikelihood::Zinb, true) => {
                let (theta, inv_tpe) = (&theta[..g], &inv_tpe[..g]);
                for j in 0..g {
                    let s = e[j] * inv;
                    e[j] = s;
                    let mu = lib * s;
                    let t = zinb_zero(mu, theta[j], inv_tpe[j], pi[j]);
                    ll[j] = t.ll;
                    d_rho[j] = -t.d_mu * mu;
                    pi[j] = -t.d_pi * gs;
                    r[j] = -t.d_theta * theta[j] * gs;
                }
            }
            (GeneLikelihood::Zinb, false) => {
                let (theta, inv_tpe) = (&theta[..g], &inv_tpe[..g]);
                for j in 0..g {
                    let s = e[j] * inv;
                    e[j] = s;
                    ll[j] = zinb_zero(lib * s, theta[j], inv_tpe[j], pi[j]).ll;
                }
            }
            (GeneLikelihood::Nb, true) => {
                let (theta, inv_tpe) = (&theta[..g], &inv_tpe[..g]);
                for j in 0..g {
                    let s = e[j] * inv;
                    e[j] = s;
                    let mu = lib * s;
                    let t = nb_zero_fast(mu, theta[j], inv_tpe[j]);
                    ll[j] = t.ll;
                    d_rho[j] = -t.d_mu * mu;
                    r[j] = -t.d_theta * theta[j] * gs;
                }
            }
            (GeneLikelihood::Nb, false) => {
                let (theta, inv_tpe) = (&theta[..g], &inv_tpe[..g]);
                for j in 0..g {
                    let s = e[j] * inv;
                    e[j] = s;
                    ll[j] = nb_zero_fast(lib * s, theta[j], inv_tpe[j]).ll;
                }
            }
            (GeneLikelihood::Poisson, grad) => {
                for j in 0..g {
                    let s = e[j] * inv;
                    e[j] = s;
                    let mu = lib * s;
                    let t = poisson_zero(mu);
                    ll[j] = t.ll;
                    if grad {
                        d_rho[j] = -t.d_mu * mu;
                    }
                }
            }
        }

        // 4. The non-zeros, over the gathered list, then scattered.
        let [o_ll, o_a, o_pi, o_r] = &mut sc.out;
        for v in [&mut *o_ll, o_a, o_pi, o_r] {
            v.resize(n, T::ZERO);
        }
        let (o_ll, o_a, o_pi, o_r) = (&mut o_ll[..n], &mut o_a[..n], &mut o_pi[..n], &mut o_r[..n]);
        let (nz_x, nz_e) = (&nz_x[..n], &nz_e[..n]);
        match likelihood {
            GeneLikelihood::Zinb => {
                let (nz_pi, nz_th, nz_it, nz_lg, nz_dg) = (
                    &nz_pi[..n],
                    &nz_th[..n],
                    &nz_it[..n],
                    &nz_lg[..n],
                    &nz_dg[..n],
                );
                for k in 0..n {
                    let mu = lib * (nz_e[k] * inv);
                    let t = zinb_nonzero(
                        nz_x[k], mu, nz_th[k], nz_it[k], nz_pi[k], nz_lg[k], nz_dg[k],
                    );
                    o_ll[k] = t.ll;
                    o_a[k] = -t.d_mu * mu;
                    o_pi[k] = -t.d_pi * gs;
                    o_r[k] = -t.d_theta * nz_th[k] * gs;
                }
            }
            GeneLikelihood::Nb => {
                let (nz_th, nz_it, nz_lg, nz_dg) =
                    (&nz_th[..n], &nz_it[..n], &nz_lg[..n], &nz_dg[..n]);
                for k in 0..n {
                    let mu = lib * (nz_e[k] * inv);
                    let t = nb_nonzero(nz_x[k], mu, nz_th[k], nz_it[k], nz_lg[k], nz_dg[k]);
                    o_ll[k] = t.ll;
                    o_a[k] = -t.d_mu * mu;
                    o_r[k] = -t.d_theta * nz_th[k] * gs;
                }
            }
            GeneLikelihood::Poisson => {
                for k in 0..n {
                    let mu = lib * (nz_e[k] * inv);
                    let t = poisson_nonzero(nz_x[k], mu);
                    o_ll[k] = t.ll;
                    o_a[k] = -t.d_mu * mu;
                }
            }
        }
        for (k, &j) in nz_j.iter().enumerate() {
            let j = j as usize;
            ll[j] = o_ll[k];
            if grads {
                d_rho[j] = o_a[k];
                if likelihood == GeneLikelihood::Zinb {
                    pi[j] = o_pi[k];
                }
                if has_theta {
                    r[j] = o_r[k];
                }
            }
        }
        if eps_exact > 0 {
            for (&j, &x) in idx.iter().zip(val) {
                if x as f64 == EPS {
                    let j = j as usize;
                    ll[j] = T::ZERO;
                    if grads {
                        d_rho[j] = T::ZERO;
                        pi[j] = T::ZERO;
                        r[j] = T::ZERO;
                    }
                }
            }
        }

        // 5. Sums and the softmax's Jacobian.
        let rec = lfact - lane_sum_f64(ll);
        if !grads {
            return (rec, T::ZERO);
        }
        let sum_a = lane_sum_f64(d_rho);
        let sa = T::from_f64(sum_a);
        let s = &e[..g];
        for j in 0..g {
            d_rho[j] = (d_rho[j] - s[j] * sa) * gs;
        }
        if let Some((s_rho, s_pi, s_r)) = sums {
            let (s_rho, s_pi, s_r) = (&mut s_rho[..g], &mut s_pi[..g], &mut s_r[..g]);
            for j in 0..g {
                s_rho[j] += d_rho[j];
            }
            if likelihood == GeneLikelihood::Zinb {
                for j in 0..g {
                    s_pi[j] += pi[j];
                }
            }
            if gene_sums && has_theta {
                for j in 0..g {
                    s_r[j] += r[j];
                }
            }
        }
        (rec, T::from_f64(sum_a * grad_scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused kernel against the scalar per-element reference (`GeneLikelihood::eval`, f64),
    /// for every likelihood and each kind of dispersion, with rows that take ZINB's fast form and
    /// rows with `pi < -20` (the reference form), on 1 and 3 threads.
    #[test]
    fn matches_the_scalar_reference() {
        let (nb, g, n_cat) = (11, 37, 3);
        let u = |i: usize, k: usize| (((i * 7919 + k * 104_729) % 10_007) as f64) / 10_007.0;
        let mut dense = vec![0.0f64; nb * g];
        let mut mb = Minibatch {
            n_genes: g,
            indptr: vec![0],
            ..Default::default()
        };
        for b in 0..nb {
            for j in 0..g {
                let v = if u(b * g + j, 1) < 0.6 {
                    0.0
                } else {
                    (u(b * g + j, 2) * 30.0).floor() + 1.0
                };
                if v > 0.0 {
                    dense[b * g + j] = v;
                    mb.indices.push(j as u32);
                    mb.values.push(v as f32);
                }
            }
            mb.indptr.push(mb.indices.len());
            mb.cells.push(b);
            mb.batch.push((b % n_cat) as u32);
            mb.labels.push(0);
        }
        let rho: Vec<f64> = (0..nb * g).map(|i| u(i, 3) * 6.0 - 3.0).collect();
        // Cell 2 has a pi below -20: its row takes the reference form.
        let pi: Vec<f64> = (0..nb * g)
            .map(|i| {
                if i == 2 * g + 5 {
                    -25.0
                } else {
                    u(i, 4) * 8.0 - 5.0
                }
            })
            .collect();
        let r: Vec<f64> = (0..nb * g).map(|i| u(i, 5) * 3.0 - 1.0).collect();
        let px_r: Vec<f64> = (0..g * n_cat).map(|i| u(i, 6) * 3.0 - 1.0).collect();
        let b_rho: Vec<f64> = (0..g).map(|j| u(j, 7) - 0.5).collect();
        let b_pi: Vec<f64> = (0..g).map(|j| u(j, 8) - 0.5).collect();
        let b_r: Vec<f64> = (0..g).map(|j| u(j, 9) - 0.5).collect();
        let library: Vec<f64> = (0..nb).map(|b| 5.0 + u(b, 10) * 3.0).collect();
        let gs = 1.0 / nb as f64;
        for lik in [
            GeneLikelihood::Zinb,
            GeneLikelihood::Nb,
            GeneLikelihood::Poisson,
        ] {
            for disp in 0..3 {
                // 0: per gene, 1: per gene and batch, 2: per cell and gene.
                let n = if disp == 1 { n_cat } else { 1 };
                let mut table = ThetaTable::default();
                table.fill(&px_r[..g * n], g, n);
                let theta_of = |b: usize, j: usize| match disp {
                    0 => px_r[j].exp(),
                    1 => px_r[j * n_cat + mb.batch[b] as usize].exp(),
                    _ => (r[b * g + j] + b_r[j]).exp(),
                };
                for threads in [1, 3] {
                    let mut planes = OutputPlanes::<f64>::default();
                    planes.resize(nb, g);
                    planes.scale.copy_from_slice(&rho);
                    planes.pi.copy_from_slice(&pi);
                    planes.r.copy_from_slice(&r);
                    let source = match disp {
                        0 => ThetaSource::Table {
                            table: &table,
                            codes: None,
                        },
                        1 => ThetaSource::Table {
                            table: &table,
                            codes: Some(&mb.batch),
                        },
                        _ => ThetaSource::Cell,
                    };
                    let biases = HeadBiases {
                        rho: &b_rho,
                        pi: Some(&b_pi),
                        r: (disp == 2).then_some(&b_r[..]),
                    };
                    let source = if lik == GeneLikelihood::Poisson {
                        ThetaSource::None
                    } else {
                        source
                    };
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    pool.install(|| {
                        decoder_output(&mut planes, &mb, lik, source, biases, &library, true, gs)
                    });
                    let close = |a: f64, b: f64, what: &str| {
                        assert!(
                            (a - b).abs() <= 1e-11 * b.abs().max(1.0),
                            "{lik:?} disp {disp}: {what}: {a} vs {b}"
                        )
                    };
                    let mut sum_r = vec![0.0; g];
                    for b in 0..nb {
                        let logits: Vec<f64> = (0..g).map(|j| rho[b * g + j] + b_rho[j]).collect();
                        let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
                        let e: Vec<f64> = logits.iter().map(|v| (v - mx).exp()).collect();
                        let se: f64 = e.iter().sum();
                        let lib = library[b].exp();
                        let (mut rec, mut sa) = (0.0, 0.0);
                        let mut a = vec![0.0; g];
                        for j in 0..g {
                            let s = e[j] / se;
                            close(planes.scale[b * g + j], s, "scale");
                            let mu = lib * s;
                            let th = theta_of(b, j);
                            let p = pi[b * g + j] + b_pi[j];
                            let ll = lik.eval(dense[b * g + j], mu, th, p);
                            rec -= ll.value;
                            a[j] = -ll.d_mu * mu;
                            sa += a[j];
                            if lik == GeneLikelihood::Zinb {
                                close(planes.pi[b * g + j], -ll.d_pi * gs, "d_pi");
                            }
                            let dr = -ll.d_theta * th * gs;
                            if lik != GeneLikelihood::Poisson {
                                if disp == 0 {
                                    sum_r[j] += dr;
                                } else {
                                    close(planes.r[b * g + j], dr, "d_r");
                                }
                            }
                        }
                        close(planes.reconstruction[b], rec, "reconstruction");
                        close(planes.d_library[b], sa * gs, "d_library");
                        for j in 0..g {
                            let s = e[j] / se;
                            close(planes.d_rho[b * g + j], (a[j] - s * sa) * gs, "d_rho");
                        }
                    }
                    if disp == 0 && lik != GeneLikelihood::Poisson {
                        for (&got, &want) in planes.sum_d_r.iter().zip(&sum_r) {
                            close(got, want, "sum d_r");
                        }
                    }
                }
            }
        }
    }
}
