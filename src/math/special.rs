//! Special functions: `lgamma`, `digamma`, `softplus` (with PyTorch's threshold) and the sigmoid.
//!
//! `lgamma` is musl's (via `libm`), accurate to a few ulp in f64, which is what PyTorch's CPU
//! `torch.lgamma` calls too. `digamma` uses the recurrence up to x >= 10 and the asymptotic series,
//! as PyTorch's `calc_digamma` does; its error is below 1e-15 relative for x > 0.

/// log |Gamma(x)|.
#[inline]
pub fn lgamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// The digamma function psi(x) = d/dx log Gamma(x), for x > 0 (the only range the likelihood uses).
pub fn digamma(mut x: f64) -> f64 {
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x < 0.0 {
        // Reflection: psi(1 - x) - psi(x) = pi cot(pi x).
        let r = std::f64::consts::PI / (std::f64::consts::PI * x).tan();
        return digamma(1.0 - x) - r;
    }
    let mut result = 0.0;
    while x < 10.0 {
        result -= 1.0 / x;
        x += 1.0;
    }
    // psi(x) ~ ln x - 1/(2x) - sum_k B_2k / (2k x^2k)
    const B: [f64; 7] = [
        8.333_333_333_333_333e-2,
        -8.333_333_333_333_333e-3,
        3.968_253_968_253_968e-3,
        -4.166_666_666_666_667e-3,
        7.575_757_575_757_576e-3,
        -2.109_279_609_279_609e-2,
        8.333_333_333_333_333e-2,
    ];
    let z = 1.0 / (x * x);
    let mut poly = 0.0;
    for c in B.iter().rev() {
        poly = poly * z + c;
    }
    result + x.ln() - 0.5 / x - poly * z
}

/// `softplus(x) = log(1 + exp(x))`, returning `x` itself above 20 as `torch.nn.functional.softplus`
/// does (beta 1, threshold 20): the constants matter for parity.
#[inline]
pub fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// The derivative of [`softplus`]: the sigmoid below the threshold, 1 above it.
#[inline]
pub fn softplus_grad(x: f64) -> f64 {
    if x > 20.0 {
        1.0
    } else {
        sigmoid(x)
    }
}

#[inline]
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digamma_known_values() {
        let euler = 0.577_215_664_901_532_9;
        assert!((digamma(1.0) + euler).abs() < 1e-15);
        assert!((digamma(0.5) - (-euler - 2.0 * 2f64.ln())).abs() < 1e-14);
        // psi(x+1) = psi(x) + 1/x across the switch to the series.
        for &x in &[1e-3, 0.3, 2.5, 9.99, 10.0, 57.0, 1e4] {
            let lhs = digamma(x + 1.0);
            let rhs = digamma(x) + 1.0 / x;
            assert!((lhs - rhs).abs() <= 1e-13 * rhs.abs().max(1.0), "x={x}");
        }
    }

    #[test]
    fn digamma_is_derivative_of_lgamma() {
        for &x in &[0.05, 0.7, 3.2, 15.0, 480.0] {
            let h = 1e-5 * x;
            let fd = (lgamma(x + h) - lgamma(x - h)) / (2.0 * h);
            assert!(
                (fd - digamma(x)).abs() < 1e-7 * digamma(x).abs().max(1.0),
                "x={x}"
            );
        }
    }

    #[test]
    fn softplus_matches_torch_threshold() {
        assert_eq!(softplus(25.0), 25.0);
        assert!((softplus(0.0) - 2f64.ln()).abs() < 1e-16);
        assert_eq!(softplus_grad(30.0), 1.0);
        assert!((softplus_grad(0.0) - 0.5).abs() < 1e-16);
    }
}
