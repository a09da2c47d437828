//! The latent variables between the encoders and the decoder: the posterior variance, the
//! reparameterisation, the KL terms and their gradients, per cell. CPU twin of kernels/latent.cu,
//! function for function, checked by tests/cuda_kernels.rs (`latent_*`):
//!
//! - `reparam_kl_fwd`: the heads' biases (added by `fc::linear_forward` on the CPU),
//!   [`posterior_variance`], [`reparam_kl_forward`];
//! - `reparam_kl_bwd`: [`reparam_kl_backward`];
//! - `library_fwd`: [`library_observed_forward`], or [`posterior_variance`] and [`library_forward`];
//! - `library_bwd`: [`library_backward`].
//!
//! Shapes: B cells, L latent dimensions; z is `[B, L]`, the library `[B]` (a latent of one dimension).
//!
//! ```text
//! q_v = exp(u) + VAR_EPS        z = q_m + sqrt(q_v) eps        (ln: z = softmax of it)
//! KL_z = sum_k 0.5 (v + m^2 - 1 - log v),  v = sqrt(q_v)^2 (torch's Normal kl), in f64
//! KL_l = 0.5 (vr + ((m - pm) / ps)^2 - 1 - log vr),  vr = (sd / ps)^2, prior N(pm, ps^2) of the batch
//! backward, w = kl_weight / B:  dq_m = dz + w m,  du = (dz eps / (2 sd) + w (1 - 1/v) / 2) exp(u)
//! library, with 1/B:  dq_m = dlib + (m - pm) / pv / B,  du = (dlib eps / (2 sd) + (1/pv - 1/v) / (2 B)) exp(u)
//! ```

use crate::float::Float;
use crate::math::softmax::softmax_in_place;
use crate::model::config::VAR_EPS;

/// What an encoder's heads produced for one latent: the mean `q_m`, the variance head's output `u`
/// and `q_v = exp(u) + VAR_EPS`, each `[B, n]` and sliced to the minibatch.
#[derive(Clone, Copy)]
pub struct Posterior<'a, T> {
    pub q_m: &'a [T],
    pub u: &'a [T],
    pub q_v: &'a [T],
}

/// The gradients of the loss with respect to `q_m` and `u` (overwritten).
pub struct PosteriorGrads<'a, T> {
    pub d_q_m: &'a mut [T],
    pub d_u: &'a mut [T],
}

/// The latent library's per-batch log-normal prior: the cells' batch codes and the prior's means
/// and variances per batch (`library_log_means`, `library_log_vars`).
#[derive(Clone, Copy)]
pub struct LibraryPrior<'a, T> {
    pub codes: &'a [u32],
    pub means: &'a [T],
    pub vars: &'a [T],
}

/// `q_v = exp(u) + VAR_EPS` (scvi-tools' `Encoder.var_eps`).
pub fn posterior_variance<T: Float>(q_v: &mut [T], u: &[T]) {
    let eps = T::from_f64(VAR_EPS);
    for (v, &u) in q_v.iter_mut().zip(u) {
        *v = u.exp() + eps;
    }
}

/// `z = q_m + sqrt(q_v) eps` (the softmax of it for the logistic normal, `ln`) and each cell's
/// KL_z into `kl`; returns their sum. `z`, `eps` and the posterior are `[B, l]`.
pub fn reparam_kl_forward<T: Float>(
    z: &mut [T],
    kl: &mut [f64],
    post: Posterior<T>,
    eps: &[T],
    l: usize,
    ln: bool,
) -> f64 {
    let mut sum = 0.0;
    for (i, (zr, kl_i)) in z.chunks_mut(l).zip(kl.iter_mut()).enumerate() {
        let mut kl = 0.0;
        for (k, zv) in zr.iter_mut().enumerate() {
            let e = i * l + k;
            let (m, v) = (post.q_m[e], post.q_v[e]);
            let sd = v.sqrt();
            *zv = m + sd * eps[e];
            // torch's kl(Normal(m, sqrt v), Normal(0, 1)).
            let (m, vr) = (m.to_f64(), (sd * sd).to_f64());
            kl += 0.5 * (vr + m * m - 1.0 - vr.ln());
        }
        *kl_i = kl;
        sum += kl;
        if ln {
            softmax_in_place(zr);
        }
    }
    sum
}

/// Backward of [`reparam_kl_forward`] with the KL weighted by `kl_w = kl_weight / B`: from
/// `d_z` = dloss/dz (`[B, l]`; with `ln`, turned in place into the gradient before the softmax,
/// `z (dz - sum(dz z))`) to dloss/dq_m and dloss/du, the KL's own gradient included.
#[allow(clippy::too_many_arguments)]
pub fn reparam_kl_backward<T: Float>(
    grads: PosteriorGrads<T>,
    d_z: &mut [T],
    z: &[T],
    post: Posterior<T>,
    eps: &[T],
    kl_w: T,
    l: usize,
    ln: bool,
) {
    if ln {
        for (zr, dz) in z.chunks(l).zip(d_z.chunks_mut(l)) {
            let dot: T = zr.iter().zip(dz.iter()).map(|(&a, &d)| a * d).sum();
            for (d, &zv) in dz.iter_mut().zip(zr) {
                *d = zv * (*d - dot);
            }
        }
    }
    let half = T::from_f64(0.5);
    for (i, &dz) in d_z.iter().enumerate() {
        let (m, v, u) = (post.q_m[i], post.q_v[i], post.u[i]);
        let sd = v.sqrt();
        grads.d_q_m[i] = dz + kl_w * m;
        grads.d_u[i] = (dz * eps[i] * half / sd + kl_w * half * (T::ONE - T::ONE / v)) * u.exp();
    }
}

/// The observed library: `library = log(sum_g x_g)` as given, no KL.
pub fn library_observed_forward<T: Float>(library: &mut [T], kl: &mut [f64], log_library: &[f64]) {
    for ((lib, kl), &v) in library.iter_mut().zip(kl.iter_mut()).zip(log_library) {
        *lib = T::from_f64(v);
        *kl = 0.0;
    }
}

/// The latent library: `library = q_m + sqrt(q_v) eps` (`[B]`) and each cell's KL_l against its
/// batch's prior into `kl`; returns their sum.
pub fn library_forward<T: Float>(
    library: &mut [T],
    kl: &mut [f64],
    post: Posterior<T>,
    eps: &[T],
    prior: LibraryPrior<T>,
) -> f64 {
    let mut sum = 0.0;
    for (i, (lib, kl)) in library.iter_mut().zip(kl.iter_mut()).enumerate() {
        let (m, v) = (post.q_m[i], post.q_v[i]);
        let sd = v.sqrt();
        *lib = m + sd * eps[i];
        let s = prior.codes[i] as usize;
        let (pm, ps) = (prior.means[s].to_f64(), prior.vars[s].to_f64().sqrt());
        let vr = (sd.to_f64() / ps).powi(2);
        let t1 = ((m.to_f64() - pm) / ps).powi(2);
        *kl = 0.5 * (vr + t1 - 1.0 - vr.ln());
        sum += *kl;
    }
    sum
}

/// Backward of [`library_forward`]: from `d_library` = dloss/dlibrary (`[B]`) to dloss/dq_m and
/// dloss/du, with the KL_l's own gradient weighted by `inv_b = 1 / B`.
pub fn library_backward<T: Float>(
    grads: PosteriorGrads<T>,
    d_library: &[T],
    post: Posterior<T>,
    eps: &[T],
    prior: LibraryPrior<T>,
    inv_b: T,
) {
    let half = T::from_f64(0.5);
    for (i, &dlib) in d_library.iter().enumerate() {
        let (m, v, u) = (post.q_m[i], post.q_v[i], post.u[i]);
        let s = prior.codes[i] as usize;
        let (pm, pv) = (prior.means[s], prior.vars[s]);
        grads.d_q_m[i] = dlib + (m - pm) / pv * inv_b;
        let dv = dlib * eps[i] * half / v.sqrt() + half * (T::ONE / pv - T::ONE / v) * inv_b;
        grads.d_u[i] = dv * u.exp();
    }
}
