//! Count log-likelihoods, written exactly as scvi-tools writes them (`log_zinb_positive`,
//! `log_nb_positive`, torch's `Poisson.log_prob`), with their derivatives.
//!
//! Per cell and gene: mean `mu`, inverse dispersion `theta`, zero-inflation logit `pi`, count `x`.
//! `eps = 1e-8` as in scvi-tools; it changes the numbers, so it stays.
//!
//! ```text
//! NB:   theta (log(theta+eps) - log(theta+mu+eps)) + x (log(mu+eps) - log(theta+mu+eps))
//!       + lgamma(x+theta) - lgamma(theta) - lgamma(x+1)
//! ZINB: pt = -pi + theta (log(theta+eps) - log(theta+mu+eps))
//!       x < eps: softplus(pt) - softplus(-pi)
//!       x > eps: -softplus(-pi) + pt + x (log(mu+eps) - log(theta+mu+eps))
//!                + lgamma(x+theta) - lgamma(theta) - lgamma(x+1)
//! Poisson: x log(mu) - mu - lgamma(x+1)
//! ```
//! The derivatives are in DESIGN.md's appendix; the finite-difference tests below are the authority.

use super::special::lgamma;
use crate::float::Float;
use std::sync::OnceLock;

pub const EPS: f64 = 1e-8;

/// The likelihood family of the decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneLikelihood {
    Zinb,
    Nb,
    Poisson,
}

/// A log-likelihood value and its partial derivatives.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LogLik {
    pub value: f64,
    pub d_mu: f64,
    pub d_theta: f64,
    pub d_pi: f64,
}

/// One gene's log-likelihood and its partial derivatives, in the engine's precision. The fused
/// output kernel (`cpu::output`) evaluates these per element; the `*_nonzero` forms leave out
/// `-lgamma(x + 1)`, which depends on the count alone and is summed per cell.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Terms<T> {
    pub ll: T,
    pub d_mu: T,
    pub d_theta: T,
    pub d_pi: T,
}

/// `(softplus(x), sigmoid(x))` from one exponential, with torch's threshold: above 20 softplus is
/// `x` itself and its derivative 1.
#[inline(always)]
pub fn softplus_pair<T: Float>(x: T) -> (T, T) {
    let th = T::from_f64(20.0);
    // At most 20: the bounded exponential (below e^-87.3 it reads 1.2e-38; absolute error only).
    let e = (if x > th { th } else { x }).vexp_fast();
    let sp = e.vln_1p();
    let sg = e / (T::ONE + e);
    if x > th {
        (x, T::ONE)
    } else {
        (sp, sg)
    }
}

// The shared pieces, with `tpe = theta + eps`, `tme = theta + mu + eps`:
//   lt       = log(tpe) - log(tme) = -log1p(mu / tpe)
//   dpt/dth  = lt + theta (1/tpe - 1/tme) = lt + theta mu / (tpe tme)
//   lmu      = log(mu + eps) - log(tme) = -log1p(theta / (mu + eps))
// Written with log1p and the product instead of differences of logs and of reciprocals: the same
// numbers up to rounding (1e-16 in f64), and no cancellation in f32.

/// ZINB at `x = 0` (`x < eps`): `softplus(pt) - softplus(-pi)`, `pt = -pi + theta lt`.
/// `inv_tpe = 1 / (theta + eps)`.
#[inline(always)]
pub fn zinb_zero<T: Float>(mu: T, theta: T, inv_tpe: T, pi: T) -> Terms<T> {
    let tme = theta + mu + T::from_f64(EPS);
    let inv_tme = T::ONE / tme;
    let lt = -(mu * inv_tpe).vln_1p();
    let pt = -pi + theta * lt;
    let (sp_pt, sg_pt) = softplus_pair(pt);
    let (sp_npi, sg_npi) = softplus_pair(-pi);
    Terms {
        ll: sp_pt - sp_npi,
        d_mu: -(sg_pt * theta * inv_tme),
        d_theta: sg_pt * (lt + theta * mu * inv_tpe * inv_tme),
        d_pi: sg_npi - sg_pt,
    }
}

/// ZINB at `x > eps`, without `-lgamma(x+1)`: `-softplus(-pi) + pt + x lmu + lgamma(x+theta) -
/// lgamma(theta)`. `lg_theta`, `dg_theta`: lgamma and digamma of theta.
#[inline(always)]
pub fn zinb_nonzero<T: Float>(
    x: T,
    mu: T,
    theta: T,
    inv_tpe: T,
    pi: T,
    lg_theta: T,
    dg_theta: T,
) -> Terms<T> {
    // pt + x lmu + ... = -pi + (the NB terms); the mu and theta derivatives are NB's.
    let (sp_npi, sg_npi) = softplus_pair(-pi);
    let nb = nb_nonzero(x, mu, theta, inv_tpe, lg_theta, dg_theta);
    Terms {
        ll: -sp_npi - pi + nb.ll,
        d_pi: sg_npi - T::ONE,
        ..nb
    }
}

/// `ln(1 + u)` given `w ~ 1 + u` computed by another route (to a few ulp) and `inv_w ~ 1/w`:
/// `ln(w) + (u - (w - 1)) inv_w`, the first-order correction of `ln(w)` for the rounding of `w`,
/// which keeps the relative accuracy for tiny `u` with no division. Valid while the error of `u` is
/// small against `w`, so for `u >= -1/2`; below, `ln(w)` alone (`w` carries the accuracy there).
#[inline(always)]
fn ln_1p_from<T: Float>(w: T, u: T, inv_w: T) -> T {
    let corr = (u - (w - T::ONE)) * inv_w;
    // w >= 2e-9 where it is used (a ratio of 1 + exponentials clamped at e^20): normal.
    w.vln_fast() + if u < T::from_f64(-0.5) { T::ZERO } else { corr }
}

/// [`zinb_zero`] for `pi >= -20`, the only case in which neither softplus reaches torch's threshold
/// (`pt <= -pi` because `theta lt <= 0`). Then
/// `softplus(pt) - softplus(-pi) = ln((1 + e^pt) / (1 + e^-pi))`: two exponentials, two logarithms
/// and two divisions instead of three, three and six. The same value and derivatives up to
/// rounding; the caller checks the precondition (per cell, `min_g pi_g >= -20`).
#[inline(always)]
pub fn zinb_zero_fast<T: Float>(mu: T, theta: T, inv_tpe: T, pi: T) -> Terms<T> {
    let tpe = theta + T::from_f64(EPS);
    let tme = theta + mu + T::from_f64(EPS);
    let inv_tme = T::ONE / tme;
    // lt = -ln(tme / tpe) = -ln(1 + mu / tpe); 1 / (tme / tpe) = tpe / tme.
    let r = mu * inv_tpe;
    let lt = -ln_1p_from(tme * inv_tpe, r, tpe * inv_tme);
    let pt = -pi + theta * lt;
    // pt <= -pi <= 20: the bounded exponential.
    let e1 = pt.vexp_fast();
    let e2 = (-pi).vexp_fast();
    let (a1, a2) = (T::ONE + e1, T::ONE + e2);
    let d = T::ONE / (a1 * a2);
    let (i1, i2) = (a2 * d, a1 * d);
    let (sg1, sg2) = (e1 * i1, e2 * i2);
    // ll = ln(a1 / a2) = ln(1 + (e1 - e2) / a2).
    let ll = ln_1p_from(a1 * i2, (e1 - e2) * i2, a2 * i1);
    Terms {
        ll,
        d_mu: -(sg1 * theta * inv_tme),
        d_theta: sg1 * (lt + theta * r * inv_tme),
        d_pi: sg2 - sg1,
    }
}

/// [`nb_zero`] with the log1p written as in [`zinb_zero_fast`]: one logarithm, one division.
#[inline(always)]
pub fn nb_zero_fast<T: Float>(mu: T, theta: T, inv_tpe: T) -> Terms<T> {
    let tpe = theta + T::from_f64(EPS);
    let tme = theta + mu + T::from_f64(EPS);
    let inv_tme = T::ONE / tme;
    let r = mu * inv_tpe;
    let lt = -ln_1p_from(tme * inv_tpe, r, tpe * inv_tme);
    Terms {
        ll: theta * lt,
        d_mu: -(theta * inv_tme),
        d_theta: lt + theta * r * inv_tme,
        d_pi: T::ZERO,
    }
}

/// NB at `x = 0`: `theta lt` (the lgamma terms cancel exactly).
#[inline(always)]
pub fn nb_zero<T: Float>(mu: T, theta: T, inv_tpe: T) -> Terms<T> {
    let tme = theta + mu + T::from_f64(EPS);
    let inv_tme = T::ONE / tme;
    let lt = -(mu * inv_tpe).vln_1p();
    Terms {
        ll: theta * lt,
        d_mu: -(theta * inv_tme),
        d_theta: lt + theta * mu * inv_tpe * inv_tme,
        d_pi: T::ZERO,
    }
}

/// NB at `x != 0`, without `-lgamma(x+1)`: `theta lt + x lmu + lgamma(x+theta) - lgamma(theta)`.
#[inline(always)]
pub fn nb_nonzero<T: Float>(
    x: T,
    mu: T,
    theta: T,
    inv_tpe: T,
    lg_theta: T,
    dg_theta: T,
) -> Terms<T> {
    let eps = T::from_f64(EPS);
    let tme = theta + mu + eps;
    let inv_tme = T::ONE / tme;
    let mpe = mu + eps;
    let lt = -(mu * inv_tpe).vln_1p();
    let lmu = -(theta / mpe).vln_1p();
    let (lg_xt, dg_xt) = (x + theta).lgamma_digamma();
    Terms {
        ll: theta * lt + x * lmu + (lg_xt - lg_theta),
        // -theta/tme + x (1/(mu+eps) - 1/tme) = theta/tme (x/(mu+eps) - 1)
        d_mu: theta * inv_tme * (x / mpe - T::ONE),
        d_theta: lt + theta * mu * inv_tpe * inv_tme - x * inv_tme + (dg_xt - dg_theta),
        d_pi: T::ZERO,
    }
}

/// Poisson at `x = 0`: `-mu`.
#[inline(always)]
pub fn poisson_zero<T: Float>(mu: T) -> Terms<T> {
    Terms {
        ll: -mu,
        d_mu: -T::ONE,
        d_theta: T::ZERO,
        d_pi: T::ZERO,
    }
}

/// Poisson at `x != 0`, without `-lgamma(x+1)`: `x log(mu) - mu`.
#[inline(always)]
pub fn poisson_nonzero<T: Float>(x: T, mu: T) -> Terms<T> {
    Terms {
        ll: x * mu.vln() - mu,
        d_mu: x / mu - T::ONE,
        d_theta: T::ZERO,
        d_pi: T::ZERO,
    }
}

const TABLE_LEN: usize = 4096;

fn log_factorial_table() -> &'static [f64] {
    static T: OnceLock<Vec<f64>> = OnceLock::new();
    T.get_or_init(|| (0..TABLE_LEN).map(|k| lgamma(k as f64 + 1.0)).collect())
}

fn log1p_table() -> &'static [f64] {
    static T: OnceLock<Vec<f64>> = OnceLock::new();
    T.get_or_init(|| (0..TABLE_LEN).map(|k| (k as f64).ln_1p()).collect())
}

/// The tables of [`log_factorial`] and [`log1p_count`], fetched once for a loop.
#[derive(Clone, Copy)]
pub struct CountTables {
    log_factorial: &'static [f64],
    log1p: &'static [f64],
}

impl CountTables {
    pub fn get() -> CountTables {
        CountTables {
            log_factorial: log_factorial_table(),
            log1p: log1p_table(),
        }
    }

    /// `lgamma(x + 1)` of a count: the table for whole numbers below 4096, libm's lgamma otherwise.
    #[inline(always)]
    pub fn log_factorial(&self, x: f64) -> f64 {
        // `x == (x as usize) as f64` tests for a whole number without a call to `trunc` (which
        // the baseline x86-64 target has no instruction for).
        if x >= 0.0 && x < TABLE_LEN as f64 && x == (x as usize) as f64 {
            self.log_factorial[x as usize]
        } else {
            lgamma(x + 1.0)
        }
    }

    /// `log1p(x)` of a count in precision T: the table (correctly rounded from f64) for whole
    /// numbers below 4096, `ln_1p` in T otherwise.
    #[inline(always)]
    pub fn log1p<T: Float>(&self, x: f32) -> T {
        if x >= 0.0 && x < TABLE_LEN as f32 && x == (x as usize) as f32 {
            T::from_f64(self.log1p[x as usize])
        } else {
            T::from_f64(x as f64).ln_1p()
        }
    }
}

/// `lgamma(x + 1)` of a count (see [`CountTables::log_factorial`]).
pub fn log_factorial(x: f64) -> f64 {
    CountTables::get().log_factorial(x)
}

/// `log1p(x)` of a count in precision T (see [`CountTables::log1p`]).
pub fn log1p_count<T: Float>(x: f32) -> T {
    CountTables::get().log1p(x)
}

impl From<Terms<f64>> for LogLik {
    fn from(t: Terms<f64>) -> LogLik {
        LogLik {
            value: t.ll,
            d_mu: t.d_mu,
            d_theta: t.d_theta,
            d_pi: t.d_pi,
        }
    }
}

/// ZINB log-likelihood and its gradient (f64, one element: the formulas of the fused kernel).
#[inline]
pub fn zinb(x: f64, mu: f64, theta: f64, pi: f64) -> LogLik {
    let inv_tpe = 1.0 / (theta + EPS);
    if x < EPS {
        zinb_zero(mu, theta, inv_tpe, pi).into()
    } else if x > EPS {
        let (lg, dg) = theta.lgamma_digamma();
        let mut t = zinb_nonzero(x, mu, theta, inv_tpe, pi, lg, dg);
        t.ll -= log_factorial(x);
        t.into()
    } else {
        // x == eps: neither of scvi-tools' masks holds.
        LogLik::default()
    }
}

/// NB log-likelihood and its gradient (`d_pi` is zero).
#[inline]
pub fn nb(x: f64, mu: f64, theta: f64) -> LogLik {
    let inv_tpe = 1.0 / (theta + EPS);
    if x == 0.0 {
        nb_zero(mu, theta, inv_tpe).into()
    } else {
        let (lg, dg) = theta.lgamma_digamma();
        let mut t = nb_nonzero(x, mu, theta, inv_tpe, lg, dg);
        t.ll -= log_factorial(x);
        t.into()
    }
}

/// Poisson log-likelihood (`x log mu` read as 0 when `x = 0`, as `torch.xlogy` does).
#[inline]
pub fn poisson(x: f64, mu: f64) -> LogLik {
    if x == 0.0 {
        poisson_zero(mu).into()
    } else {
        let mut t = poisson_nonzero(x, mu);
        t.ll -= log_factorial(x);
        t.into()
    }
}

impl GeneLikelihood {
    #[inline]
    pub fn eval(self, x: f64, mu: f64, theta: f64, pi: f64) -> LogLik {
        match self {
            GeneLikelihood::Zinb => zinb(x, mu, theta, pi),
            GeneLikelihood::Nb => nb(x, mu, theta),
            GeneLikelihood::Poisson => poisson(x, mu),
        }
    }

    /// Whether the likelihood has a dispersion (theta).
    pub fn has_theta(self) -> bool {
        !matches!(self, GeneLikelihood::Poisson)
    }

    /// Whether the likelihood has zero-inflation logits.
    pub fn has_pi(self) -> bool {
        matches!(self, GeneLikelihood::Zinb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::special::softplus;

    fn check(lik: GeneLikelihood, x: f64, mu: f64, theta: f64, pi: f64) {
        let g = lik.eval(x, mu, theta, pi);
        let fd = |f: &dyn Fn(f64) -> f64, v: f64| {
            let h = 1e-6 * v.abs().max(1e-2);
            (f(v + h) - f(v - h)) / (2.0 * h)
        };
        let dmu = fd(&|m| lik.eval(x, m, theta, pi).value, mu);
        let dth = fd(&|t| lik.eval(x, mu, t, pi).value, theta);
        let dpi = fd(&|p| lik.eval(x, mu, theta, p).value, pi);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
        assert!(
            close(g.d_mu, dmu),
            "{lik:?} x={x} mu={mu}: d_mu {} vs {dmu}",
            g.d_mu
        );
        if lik.has_theta() {
            assert!(
                close(g.d_theta, dth),
                "{lik:?} x={x}: d_theta {} vs {dth}",
                g.d_theta
            );
        }
        if lik.has_pi() {
            assert!(
                close(g.d_pi, dpi),
                "{lik:?} x={x}: d_pi {} vs {dpi}",
                g.d_pi
            );
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        for lik in [
            GeneLikelihood::Zinb,
            GeneLikelihood::Nb,
            GeneLikelihood::Poisson,
        ] {
            for &x in &[0.0, 1.0, 3.0, 250.0] {
                for &mu in &[0.01, 0.8, 40.0] {
                    for &theta in &[0.05, 1.3, 30.0] {
                        for &pi in &[-3.0, 0.2, 4.0] {
                            check(lik, x, mu, theta, pi);
                        }
                    }
                }
            }
        }
    }

    /// The fast zero-count forms against the reference ones: f64 to rounding, f32 (with the
    /// vectorisable special functions) against the f64 reference within a few ulp of the terms.
    #[test]
    fn fast_zero_forms_match_the_reference() {
        let mut worst = [0.0f64; 4];
        for &mu in &[1e-9, 1e-4, 0.01, 0.8, 3.0, 40.0, 1e4] {
            for &theta in &[1e-3, 0.05, 1.3, 30.0, 1e3] {
                for &pi in &[-20.0, -7.0, -3.0, 0.0, 0.2, 4.0, 15.0, 60.0] {
                    let it = 1.0 / (theta + EPS);
                    let r = zinb_zero(mu, theta, it, pi);
                    let f = zinb_zero_fast(mu, theta, it, pi);
                    // The reference takes a difference of two softplus terms of size |pi|: its own
                    // rounding is ~1e-16 |pi| absolute.
                    let close = |a: f64, b: f64| {
                        (a - b).abs() <= 1e-13 * b.abs().max(1e-2) + 1e-15 * (1.0 + pi.abs())
                    };
                    assert!(close(f.ll, r.ll), "ll {mu} {theta} {pi}: {} {}", f.ll, r.ll);
                    assert!(close(f.d_mu, r.d_mu), "d_mu {mu} {theta} {pi}");
                    assert!(close(f.d_theta, r.d_theta), "d_theta {mu} {theta} {pi}");
                    assert!(close(f.d_pi, r.d_pi), "d_pi {mu} {theta} {pi}");
                    let (n, nf) = (nb_zero(mu, theta, it), nb_zero_fast(mu, theta, it));
                    assert!(close(nf.ll, n.ll) && close(nf.d_mu, n.d_mu));
                    assert!(close(nf.d_theta, n.d_theta), "nb d_theta {mu} {theta}");
                    // f32: error relative to the natural scale of each term (ll is a difference of
                    // softplus terms of size softplus(-pi); d_pi one of sigmoids, at most 1).
                    let g = zinb_zero_fast(mu as f32, theta as f32, it as f32, pi as f32);
                    let e = [
                        (g.ll as f64 - r.ll).abs() / (r.ll.abs() + softplus(-pi)),
                        (g.d_mu as f64 - r.d_mu).abs() / r.d_mu.abs().max(1e-2),
                        (g.d_theta as f64 - r.d_theta).abs() / r.d_theta.abs().max(1e-2),
                        (g.d_pi as f64 - r.d_pi).abs() / (r.d_pi.abs() + 1.0),
                    ];
                    for (w, v) in worst.iter_mut().zip(e) {
                        *w = w.max(v);
                    }
                }
            }
        }
        println!(
            "zinb_zero_fast f32 vs f64, max error over the natural scale (ll, d_mu, d_theta, d_pi): \
             {worst:?}"
        );
        assert!(worst.iter().all(|&w| w < 2e-6), "{worst:?}");
    }

    #[test]
    fn nb_sums_to_one_over_counts() {
        // sum_x NB(x; mu, theta) = 1 (eps is negligible at these values).
        let (mu, theta) = (3.5, 2.0);
        let total: f64 = (0..400).map(|x| nb(x as f64, mu, theta).value.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        let total: f64 = (0..400)
            .map(|x| zinb(x as f64, mu, theta, 0.3).value.exp())
            .sum::<f64>();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
    }
}
