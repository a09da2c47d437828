//! The softmax as torch computes it, in place: `exp(v - max) / sum`.

use crate::float::Float;

/// `v <- softmax(v)`. The logistic-normal latent uses it in the step (`cpu::latent`) and in
/// `Scvi::latent_representation`.
pub fn softmax_in_place<T: Float>(v: &mut [T]) {
    let mx = v
        .iter()
        .fold(T::from_f64(f64::NEG_INFINITY), |m, &x| m.max(x));
    let mut s = T::ZERO;
    for x in v.iter_mut() {
        *x = (*x - mx).exp();
        s += *x;
    }
    v.iter_mut().for_each(|x| *x /= s);
}
