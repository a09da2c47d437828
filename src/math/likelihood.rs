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

use super::special::{digamma, lgamma, softplus, softplus_grad};

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

/// ZINB log-likelihood and its gradient.
#[inline]
pub fn zinb(x: f64, mu: f64, theta: f64, pi: f64) -> LogLik {
    let log_theta_eps = (theta + EPS).ln();
    let tme = theta + mu + EPS;
    let log_tme = tme.ln();
    let pt = -pi + theta * (log_theta_eps - log_tme);
    let sp_neg_pi = softplus(-pi);
    let dpt_dtheta = log_theta_eps - log_tme + theta * (1.0 / (theta + EPS) - 1.0 / tme);
    let dpt_dmu = -theta / tme;
    let mut out = LogLik::default();
    if x < EPS {
        let s = softplus_grad(pt);
        out.value = softplus(pt) - sp_neg_pi;
        // d/dpi [softplus(pt) - softplus(-pi)] = -s + sigma(-pi)
        out.d_pi = -s + softplus_grad(-pi);
        out.d_mu = s * dpt_dmu;
        out.d_theta = s * dpt_dtheta;
    }
    if x > EPS {
        let log_mu = (mu + EPS).ln();
        out.value = -sp_neg_pi + pt + x * (log_mu - log_tme) + lgamma(x + theta)
            - lgamma(theta)
            - lgamma(x + 1.0);
        out.d_pi = softplus_grad(-pi) - 1.0;
        out.d_mu = dpt_dmu + x * (1.0 / (mu + EPS) - 1.0 / tme);
        out.d_theta = dpt_dtheta - x / tme + digamma(x + theta) - digamma(theta);
    }
    out
}

/// NB log-likelihood and its gradient (`d_pi` is zero).
#[inline]
pub fn nb(x: f64, mu: f64, theta: f64) -> LogLik {
    let log_theta_eps = (theta + EPS).ln();
    let tme = theta + mu + EPS;
    let log_tme = tme.ln();
    let log_mu = (mu + EPS).ln();
    let (lg, dg) = if x == 0.0 {
        // lgamma(theta) - lgamma(theta) and lgamma(1) are exactly zero; skip the calls.
        (0.0, 0.0)
    } else {
        (
            lgamma(x + theta) - lgamma(theta) - lgamma(x + 1.0),
            digamma(x + theta) - digamma(theta),
        )
    };
    LogLik {
        value: theta * (log_theta_eps - log_tme) + x * (log_mu - log_tme) + lg,
        d_mu: -theta / tme + x * (1.0 / (mu + EPS) - 1.0 / tme),
        d_theta: log_theta_eps - log_tme + theta * (1.0 / (theta + EPS) - 1.0 / tme) - x / tme + dg,
        d_pi: 0.0,
    }
}

/// Poisson log-likelihood (`x log mu` read as 0 when `x = 0`, as `torch.xlogy` does).
#[inline]
pub fn poisson(x: f64, mu: f64) -> LogLik {
    let (xlogmu, d) = if x == 0.0 {
        (0.0, 0.0)
    } else {
        (x * mu.ln(), x / mu)
    };
    LogLik {
        value: xlogmu - mu - lgamma(x + 1.0),
        d_mu: d - 1.0,
        d_theta: 0.0,
        d_pi: 0.0,
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
