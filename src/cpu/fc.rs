//! One `FCLayers` layer on the CPU: `Linear([x, onehot]) -> BatchNorm1d -> LayerNorm -> ReLU ->
//! Dropout`, forward and backward. Shapes: B rows (cells), `n_in` input features plus an optional
//! one-hot of width `n_cat`, `n_out` outputs.
//!
//! BatchNorm (momentum 0.01, eps 1e-3): training mode normalises with the batch mean and the biased
//! variance and moves the running statistics towards the mean and the *unbiased* variance; eval mode
//! normalises with the running statistics. LayerNorm: no affine, eps 1e-5. Dropout: keep with
//! probability 1 - p and scale by 1/(1 - p); the mask comes from the Philox generator.
//!
//! Backward of a normalisation `y = (x - mean) r` over a set of `D` values:
//! `dx = r / D (D dy - sum dy - y sum(dy y))`.
//!
//! CPU twin of kernels/fc.cu (checked by tests/cuda_kernels.rs `fc_*`): `fc_post_fwd` is the bias
//! and one-hot part of [`linear_forward`] ([`add_onehot_columns`]) then [`fc_post_forward`];
//! `fc_post_bwd` is [`fc_post_backward`] then the bias and one-hot part of [`linear_backward`];
//! `layer_norm_fwd` / `layer_norm_bwd` are the LayerNorm, ReLU and dropout steps of those two.

use super::gemm::{add_column_sums, linear_dgrad, linear_fwd, linear_wgrad};
use crate::engine::Mode;
use crate::float::Float;
use crate::model::config::{BN_EPS, BN_MOMENTUM, LN_EPS};
use crate::model::layout::{FcLayerIds, LinearShape};
use crate::rng::{Philox, Stream};

/// What a layer keeps from its forward pass for the backward pass.
#[derive(Default, Debug)]
pub struct FcCache<T> {
    pub n_out: usize,
    /// BatchNorm's normalised input `[B, out]` and `1/sqrt(var + eps)` per column.
    pub bn_xhat: Vec<T>,
    pub bn_inv_std: Vec<T>,
    /// LayerNorm's `1/sqrt(var + eps)` per row.
    pub ln_inv_std: Vec<T>,
    /// The input of the ReLU `[B, out]` (LayerNorm's output when there is one).
    pub pre_act: Vec<T>,
    /// Dropout scale per element: 0 or 1/(1-p) (empty when dropout is off).
    pub mask: Vec<T>,
    /// The layer's output `[B, out]`.
    pub out: Vec<T>,
    /// Scratch: batch statistics (f64), the mean in T, BatchNorm's parameter gradients, dropout
    /// uniforms. Kept here so that a step allocates nothing.
    stat_mean: Vec<f64>,
    stat_var: Vec<f64>,
    mean_t: Vec<T>,
    dgamma: Vec<T>,
    dbeta: Vec<T>,
    uniforms: Vec<f64>,
}

impl<T: Float> FcCache<T> {
    pub fn resize(&mut self, b: usize, n_out: usize) {
        self.n_out = n_out;
        for v in [
            &mut self.bn_xhat,
            &mut self.pre_act,
            &mut self.mask,
            &mut self.out,
        ] {
            v.resize(b * n_out, T::ZERO);
        }
        self.bn_inv_std.resize(n_out, T::ZERO);
        self.ln_inv_std.resize(b, T::ZERO);
        for v in [&mut self.stat_mean, &mut self.stat_var] {
            v.resize(n_out, 0.0);
        }
        for v in [&mut self.mean_t, &mut self.dgamma, &mut self.dbeta] {
            v.resize(n_out, T::ZERO);
        }
        self.uniforms.resize(b * n_out, 0.0);
    }
}

/// The parameters of one layer, as slices of the flat buffers.
pub struct FcParams<'a, T> {
    pub weight: &'a [T],
    pub bias: &'a [T],
    pub bn_weight: Option<&'a [T]>,
    pub bn_bias: Option<&'a [T]>,
}

/// Their gradients (accumulated).
pub struct FcGrads<'a, T> {
    pub weight: &'a mut [T],
    pub bias: &'a mut [T],
    pub bn_weight: Option<&'a mut [T]>,
    pub bn_bias: Option<&'a mut [T]>,
}

/// Running statistics, updated in training mode.
pub struct BnStats<'a, T> {
    pub mean: &'a mut [T],
    pub var: &'a mut [T],
}

/// Dropout randomness for one layer in one step.
#[derive(Clone, Copy)]
pub struct DropoutKey {
    pub rng: Philox,
    pub stream: Stream,
    pub index: u64,
}

/// `y[b, :] = x[b, :] W[:, :n_in]^T + W[:, n_in + cat_b] + bias`.
#[allow(clippy::too_many_arguments)]
pub fn linear_forward<T: Float>(
    y: &mut [T],
    x: &[T],
    cats: &[u32],
    weight: &[T],
    bias: &[T],
    b: usize,
    n_in: usize,
    n_cat: usize,
    n_out: usize,
) {
    let ldw = n_in + n_cat;
    for row in y[..b * n_out].chunks_mut(n_out) {
        row.copy_from_slice(bias);
    }
    let s = LinearShape {
        b,
        n_in,
        ldw,
        n_out,
    };
    linear_fwd(y, x, weight, s, T::ONE);
    if n_cat > 0 {
        add_onehot_columns(y, cats, weight, n_in, ldw, n_out);
    }
}

/// `y[b, o] += W[o, n_in + cat_b]`: the one-hot covariate's contribution.
pub fn add_onehot_columns<T: Float>(
    y: &mut [T],
    cats: &[u32],
    weight: &[T],
    n_in: usize,
    ldw: usize,
    n_out: usize,
) {
    for (row, &c) in y.chunks_mut(n_out).zip(cats) {
        for (o, v) in row.iter_mut().enumerate() {
            *v += weight[o * ldw + n_in + c as usize];
        }
    }
}

/// Everything after the Linear: normalisations, ReLU, dropout. `lin` holds the Linear output and is
/// consumed (overwritten).
#[allow(clippy::too_many_arguments)]
pub fn fc_post_forward<T: Float>(
    cache: &mut FcCache<T>,
    lin: &mut [T],
    ids: &FcLayerIds,
    params: &FcParams<T>,
    stats: Option<BnStats<T>>,
    mode: Mode,
    dropout: Option<DropoutKey>,
    b: usize,
) {
    let n = ids.linear.n_out;
    let lin = &mut lin[..b * n];
    if ids.batch_norm.is_some() {
        let gamma = &params.bn_weight.expect("batch norm weight")[..n];
        let beta = &params.bn_bias.expect("batch norm bias")[..n];
        let stats = stats.expect("batch norm statistics");
        let (mean, var) = (&mut cache.stat_mean[..n], &mut cache.stat_var[..n]);
        match mode {
            Mode::Train => {
                mean.iter_mut().for_each(|m| *m = 0.0);
                var.iter_mut().for_each(|v| *v = 0.0);
                for row in lin.chunks(n) {
                    for (m, &v) in mean.iter_mut().zip(row) {
                        *m += v.to_f64();
                    }
                }
                mean.iter_mut().for_each(|m| *m /= b as f64);
                for row in lin.chunks(n) {
                    for ((s, &v), &m) in var.iter_mut().zip(row).zip(mean.iter()) {
                        let d = v.to_f64() - m;
                        *s += d * d;
                    }
                }
                var.iter_mut().for_each(|s| *s /= b as f64);
                let unbias = if b > 1 {
                    b as f64 / (b as f64 - 1.0)
                } else {
                    1.0
                };
                for j in 0..n {
                    let (rm, rv) = (stats.mean[j].to_f64(), stats.var[j].to_f64());
                    stats.mean[j] = T::from_f64((1.0 - BN_MOMENTUM) * rm + BN_MOMENTUM * mean[j]);
                    stats.var[j] =
                        T::from_f64((1.0 - BN_MOMENTUM) * rv + BN_MOMENTUM * var[j] * unbias);
                }
            }
            Mode::Eval => {
                mean.iter_mut()
                    .zip(stats.mean.iter())
                    .for_each(|(m, s)| *m = s.to_f64());
                var.iter_mut()
                    .zip(stats.var.iter())
                    .for_each(|(v, s)| *v = s.to_f64());
            }
        }
        let inv_std = &mut cache.bn_inv_std[..n];
        for (inv, v) in inv_std.iter_mut().zip(var.iter()) {
            *inv = T::from_f64(1.0 / (v + BN_EPS).sqrt());
        }
        let mean_t = &mut cache.mean_t[..n];
        mean_t
            .iter_mut()
            .zip(mean.iter())
            .for_each(|(t, &m)| *t = T::from_f64(m));
        for (row, xh) in lin.chunks_mut(n).zip(cache.bn_xhat.chunks_mut(n)) {
            for j in 0..n {
                let v = (row[j] - mean_t[j]) * inv_std[j];
                xh[j] = v;
                row[j] = gamma[j] * v + beta[j];
            }
        }
    }
    if ids.layer_norm {
        for (row, inv) in lin.chunks_mut(n).zip(cache.ln_inv_std.iter_mut()) {
            let mean = row.iter().map(|v| v.to_f64()).sum::<f64>() / n as f64;
            let var = row.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / n as f64;
            let r = 1.0 / (var + LN_EPS).sqrt();
            *inv = T::from_f64(r);
            let (mean, r) = (T::from_f64(mean), T::from_f64(r));
            row.iter_mut().for_each(|v| *v = (*v - mean) * r);
        }
    }
    cache.pre_act[..b * n].copy_from_slice(lin);
    let use_dropout = mode == Mode::Train && ids.dropout > 0.0;
    let out = &mut cache.out[..b * n];
    if use_dropout {
        // Element i of the layer's stream, as `Philox::uniform_at` numbers them; four per block.
        let key = dropout.expect("dropout key");
        let p = ids.dropout;
        let scale = T::from_f64(1.0 / (1.0 - p));
        let u = &mut cache.uniforms[..b * n];
        key.rng.fill_uniform(key.stream, key.index, u);
        let mask = &mut cache.mask[..b * n];
        for (((m, o), &u), &v) in mask
            .iter_mut()
            .zip(out.iter_mut())
            .zip(u.iter())
            .zip(lin.iter())
        {
            *m = if u >= p { scale } else { T::ZERO };
            let r = if v > T::ZERO { v } else { T::ZERO };
            *o = r * *m;
        }
    } else {
        for (o, &v) in out.iter_mut().zip(lin.iter()) {
            *o = if v > T::ZERO { v } else { T::ZERO };
        }
    }
}

/// Backward through dropout, ReLU and the normalisations. `d` holds the gradient of the layer's
/// output on entry and the gradient of the Linear output on exit.
pub fn fc_post_backward<T: Float>(
    d: &mut [T],
    cache: &mut FcCache<T>,
    ids: &FcLayerIds,
    params: &FcParams<T>,
    grads: &mut FcGrads<T>,
    mode: Mode,
    b: usize,
) {
    let n = ids.linear.n_out;
    let d = &mut d[..b * n];
    let use_dropout = mode == Mode::Train && ids.dropout > 0.0;
    let pre = &cache.pre_act[..b * n];
    if use_dropout {
        for ((v, &m), &p) in d.iter_mut().zip(&cache.mask[..b * n]).zip(pre) {
            *v = if p <= T::ZERO { T::ZERO } else { *v * m };
        }
    } else {
        for (v, &p) in d.iter_mut().zip(pre) {
            if p <= T::ZERO {
                *v = T::ZERO;
            }
        }
    }
    if ids.layer_norm {
        for ((dr, y), &r) in d.chunks_mut(n).zip(pre.chunks(n)).zip(&cache.ln_inv_std) {
            normalisation_backward_row(dr, y, r);
        }
    }
    if ids.batch_norm.is_some() {
        let gamma = &params.bn_weight.expect("batch norm weight")[..n];
        let inv_std = &cache.bn_inv_std[..n];
        // dgamma = sum_b d xhat, dbeta = sum_b d; then d <- d * gamma.
        let (dgamma, dbeta) = (&mut cache.dgamma[..n], &mut cache.dbeta[..n]);
        dgamma.iter_mut().for_each(|v| *v = T::ZERO);
        dbeta.iter_mut().for_each(|v| *v = T::ZERO);
        for (dr, xr) in d.chunks(n).zip(cache.bn_xhat.chunks(n)) {
            for j in 0..n {
                dgamma[j] += dr[j] * xr[j];
                dbeta[j] += dr[j];
            }
        }
        if let Some(g) = grads.bn_weight.as_deref_mut() {
            g.iter_mut().zip(dgamma.iter()).for_each(|(g, v)| *g += *v);
        }
        if let Some(g) = grads.bn_bias.as_deref_mut() {
            g.iter_mut().zip(dbeta.iter()).for_each(|(g, v)| *g += *v);
        }
        match mode {
            Mode::Train => {
                // With dxhat = d gamma: sum dxhat = gamma dbeta, sum dxhat xhat = gamma dgamma.
                let inv_b = T::ONE / T::from_usize(b);
                let bt = T::from_usize(b);
                for (dr, xr) in d.chunks_mut(n).zip(cache.bn_xhat.chunks(n)) {
                    for j in 0..n {
                        let dx = dr[j] * gamma[j];
                        dr[j] = inv_std[j]
                            * inv_b
                            * (bt * dx - gamma[j] * dbeta[j] - xr[j] * gamma[j] * dgamma[j]);
                    }
                }
            }
            Mode::Eval => {
                for dr in d.chunks_mut(n) {
                    for j in 0..n {
                        dr[j] *= gamma[j] * inv_std[j];
                    }
                }
            }
        }
    }
}

/// `dx = r / D (D dy - sum dy - y sum(dy y))` for one row normalised over its `D` values.
fn normalisation_backward_row<T: Float>(dy: &mut [T], y: &[T], r: T) {
    let dn = T::from_usize(dy.len());
    let mut s = T::ZERO;
    let mut sy = T::ZERO;
    for (&g, &v) in dy.iter().zip(y) {
        s += g;
        sy += g * v;
    }
    for (g, &v) in dy.iter_mut().zip(y) {
        *g = r / dn * (dn * *g - s - v * sy);
    }
}

/// Linear backward: `dW[:, :n_in] += d^T x`, `dW[:, n_in + cat] += d`, `db += sum_b d` (or
/// `db += bias_sums` when the caller has these column sums already), and `dx = d W[:, :n_in]` (or
/// `dx += ...` with `accumulate_dx`) when `dx` is given.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<T: Float>(
    dx: Option<&mut [T]>,
    accumulate_dx: bool,
    dweight: &mut [T],
    dbias: &mut [T],
    bias_sums: Option<&[T]>,
    d: &[T],
    x: &[T],
    cats: &[u32],
    weight: &[T],
    b: usize,
    n_in: usize,
    n_cat: usize,
    n_out: usize,
) {
    let ldw = n_in + n_cat;
    let s = LinearShape {
        b,
        n_in,
        ldw,
        n_out,
    };
    linear_wgrad(dweight, d, x, s);
    if n_cat > 0 {
        for (row, &c) in d.chunks(n_out).zip(cats).take(b) {
            for (o, &v) in row.iter().enumerate() {
                dweight[o * ldw + n_in + c as usize] += v;
            }
        }
    }
    bias_backward(dbias, d, bias_sums, b, n_out);
    if let Some(dx) = dx {
        let beta = if accumulate_dx { T::ONE } else { T::ZERO };
        linear_dgrad(dx, d, weight, s, beta);
    }
}

/// A linear layer's bias gradient: `db += column sums of d` (`d` `[b, n_out]`), or
/// `db += bias_sums` when the caller has these sums already.
pub fn bias_backward<T: Float>(
    dbias: &mut [T],
    d: &[T],
    bias_sums: Option<&[T]>,
    b: usize,
    n_out: usize,
) {
    match bias_sums {
        Some(sums) => dbias[..n_out]
            .iter_mut()
            .zip(&sums[..n_out])
            .for_each(|(o, &v)| *o += v),
        None => add_column_sums(dbias, d, b, n_out, n_out),
    }
}
