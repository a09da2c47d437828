//! Special functions: `lgamma`, `digamma`, `softplus` (with PyTorch's threshold) and the sigmoid.
//!
//! `lgamma` is musl's (via `libm`), accurate to a few ulp in f64, which is what PyTorch's CPU
//! `torch.lgamma` calls too. `digamma` uses the recurrence up to x >= 10 and the asymptotic series,
//! as PyTorch's `calc_digamma` does; its error is below 1e-15 relative for x > 0.
//!
//! The second half holds branch-free f32 versions of `exp`, `ln`, `ln_1p` and the (`lgamma`,
//! `digamma`) pair that the engine's element-wise kernels use in f32 (`Float::vexp` and friends);
//! their error bounds are tested against f64 below.

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

// ---------------------------------------------------------------------------------------------
// Vectorisable f32 approximations.
//
// The element-wise kernels of the CPU engine run in the engine's precision. In f64 (the parity and
// gradient checks) they call the exact functions of `std` / `libm`; in f32 (training) they call
// these: straight-line code (selects, no branches, no calls, no table look-ups) that LLVM turns into
// SIMD when it is inlined into a loop. Products and sums are written as separate `*` and `+` (no
// `mul_add`) so the result is the same on every instruction set, vectorised or not. The maximum
// errors against an f64 reference, over the ranges the likelihood uses, are asserted by the tests
// below and reported in BENCHMARKS.md.

const MAGIC_ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: x + MAGIC rounds x to an integer (|x| < 2^22)

/// `2^n` for integer `n` in [-126, 127], from its bits.
#[inline(always)]
fn pow2i(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

/// The common core of [`exp_f32`] and [`exp_f32_fast`]: `x = n ln 2 + r` with `|r| <= ln2/2`
/// (Cody-Waite: ln 2 split so that `n * LN2_HI` is exact for |n| < 2^9, LN2_HI = 355/512 exactly),
/// and `e^r` by Cephes' minimax polynomial. Returns `(n, e^r)`.
#[inline(always)]
fn exp_reduced(xc: f32) -> (i32, f32) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let t = xc * LOG2E + MAGIC_ROUND;
    let n = t.to_bits() as i32 - MAGIC_ROUND.to_bits() as i32;
    let nf = t - MAGIC_ROUND;
    let r = (xc - nf * LN2_HI) - nf * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    (n, p * (r * r) + r + 1.0)
}

/// `e^x` in f32, branch-free. Max error 2 ulp over [-87.3, 88.7]; below -103.98 it returns 0 (the
/// true value underflows), above 88.72 `inf`, NaN for NaN. Results between 1e-45 and 1e-38
/// (subnormal) are computed too.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const HI: f32 = 88.722_84;
    const LO: f32 = -103.972_08;
    // A select, not `clamp` (which also handles NaN differently and does not vectorise as well);
    // NaN passes through.
    #[allow(clippy::manual_clamp)]
    let xc = if x > HI {
        HI
    } else if x < LO {
        LO
    } else {
        x
    };
    let (n, e) = exp_reduced(xc);
    // 2^n as two factors, so that n in [-150, 128] stays in the normal range of each.
    let n1 = n >> 1;
    let y = e * pow2i(n1) * pow2i(n - n1);
    if x > HI {
        f32::INFINITY
    } else if x < LO {
        0.0
    } else {
        y
    }
}

/// `e^x` in f32 for the hot loops, where `x <= 88.3` is known: one scaling instead of two and no
/// special cases. Below -87.3 it returns `e^-87.3 ~ 1.2e-38` instead of a smaller (subnormal)
/// value: an absolute error under 1.2e-38. Max 2 ulp above -87.3 (tested with [`exp_f32`]'s bound).
#[inline(always)]
pub fn exp_f32_fast(x: f32) -> f32 {
    const LO: f32 = -87.3;
    let xc = if x < LO { LO } else { x };
    let (n, e) = exp_reduced(xc);
    // e in [0.7, 1.42]: adding n to its exponent field is exact for n in [-126, 127].
    f32::from_bits((e.to_bits() as i32 + (n << 23)) as u32)
}

/// The common core of [`ln_f32`] and [`ln_f32_fast`]: `ln(m 2^e)` for `m` in [0.5, 1). `m` moves
/// to [sqrt(1/2), sqrt(2)) (`f = m - 1` in [-0.29, 0.41]) and Cephes' logf polynomial gives
/// `log(1+f) = f - f^2/2 + f^3 P(f)`, ln 2 split as in [`exp_reduced`].
#[inline(always)]
fn ln_reduced(m: f32, e: i32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let small = m < SQRT_HALF;
    let f = if small { m + m - 1.0 } else { m - 1.0 };
    let ef = (if small { e - 1 } else { e }) as f32;
    let z = f * f;
    let p = (((((((7.037_683_6e-2 * f - 1.151_461e-1) * f + 1.167_699_9e-1) * f
        - 1.242_014_1e-1)
        * f
        + 1.424_932_3e-1)
        * f
        - 1.666_805_8e-1)
        * f
        + 2.000_071_4e-1)
        * f
        - 2.499_999_4e-1)
        * f
        + 3.333_333e-1;
    let y = f * z * p + ef * -2.121_944_4e-4 - 0.5 * z;
    f + y + ef * 0.693_359_4
}

/// `x = m 2^e` with `m` in [0.5, 1), from the bits of a normal `x`.
#[inline(always)]
fn frexp_normal(x: f32) -> (f32, i32) {
    let bits = x.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 126;
    (f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000), e)
}

/// `ln x` in f32 for the hot loops, where `x` is known to be positive, normal and finite (no
/// special cases). Max 2 ulp, as [`ln_f32`].
#[inline(always)]
pub fn ln_f32_fast(x: f32) -> f32 {
    let (m, e) = frexp_normal(x);
    ln_reduced(m, e)
}

/// Natural logarithm in f32, branch-free. Max error 2 ulp over the positive floats (subnormals
/// included); `ln 0 = -inf`, `ln x = NaN` for x < 0 and NaN, `ln inf = inf`.
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    // Scale subnormals into the normal range.
    let sub = x < f32::MIN_POSITIVE;
    let xs = if sub { x * 8_388_608.0 } else { x }; // 2^23
    let (m, e) = frexp_normal(xs);
    let r = ln_reduced(m, if sub { e - 23 } else { e });
    if x == f32::INFINITY {
        f32::INFINITY
    } else if x == 0.0 {
        f32::NEG_INFINITY
    } else if x < 0.0 || x.is_nan() {
        f32::NAN
    } else {
        r
    }
}

/// `ln(1 + x)` in f32, branch-free, for x >= -1. Max error 2 ulp; exact for tiny x (returns x).
#[inline(always)]
pub fn ln_1p_f32(x: f32) -> f32 {
    let w = 1.0 + x;
    // w carries a rounding error c = x - (w - 1); ln(1 + x) = ln(w) + c / w to first order.
    let c = x - (w - 1.0);
    let l = ln_f32(w);
    if w == f32::INFINITY || w == 0.0 {
        l
    } else {
        l + c / w
    }
}

/// `(lgamma(x), digamma(x))` in f32 for x > 0, branch-free: the recurrence up to x >= 6, then
/// Stirling's series (`lgamma`) and the asymptotic series (`digamma`), sharing `ln` and `1/x`.
/// Errors (see the tests): lgamma within 3e-7 |lgamma(x)| + 2e-6, digamma within 6e-7 |digamma(x)|
/// + 6e-7 (the absolute part matters near their zeros at 1, 2 and 1.4616).
#[inline(always)]
pub fn lgamma_digamma_f32(x: f32) -> (f32, f32) {
    // Shift: prod = x (x+1) ... (x+k-1), sum of 1/(x+i) as num / prod.
    let mut z = x;
    let mut prod = 1.0f32;
    let mut num = 0.0f32;
    for _ in 0..6 {
        let c = z < 6.0;
        let f = if c { z } else { 1.0 };
        num = num * f + if c { prod } else { 0.0 };
        prod *= f;
        z = if c { z + 1.0 } else { z };
    }
    let lz = ln_f32(z);
    let iz = 1.0 / z;
    let iz2 = iz * iz;
    const HALF_LN_2PI: f32 = 0.918_938_5;
    // (z - 1/2) ln z - z, written with the smaller intermediate (z - 1/2)(ln z - 1) - 1/2.
    let lg = (z - 0.5) * (lz - 1.0)
        + (HALF_LN_2PI - 0.5)
        + iz * (1.0 / 12.0 - iz2 * (1.0 / 360.0 - iz2 * (1.0 / 1260.0)));
    let dg = lz - 0.5 * iz - iz2 * (1.0 / 12.0 - iz2 * (1.0 / 120.0 - iz2 * (1.0 / 252.0)));
    (lg - ln_f32(prod), dg - num / prod)
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

#[cfg(test)]
mod f32_tests {
    use super::*;

    /// Max relative error of `f` against `reference` (computed in f64) over `xs`, with the worst x.
    fn max_rel(xs: &[f32], f: impl Fn(f32) -> f32, reference: impl Fn(f64) -> f64) -> (f64, f32) {
        let mut worst = (0.0, 0.0);
        for &x in xs {
            let want = reference(x as f64);
            let got = f(x) as f64;
            let err = if want == 0.0 {
                got.abs()
            } else {
                ((got - want) / want).abs()
            };
            assert!(!err.is_nan(), "NaN at {x}");
            if err > worst.0 {
                worst = (err, x);
            }
        }
        worst
    }

    /// `f` within `ulps` ulp (relative) of `reference` over `xs`; prints the worst error.
    fn assert_ulps(
        name: &str,
        xs: &[f32],
        f: impl Fn(f32) -> f32,
        reference: impl Fn(f64) -> f64,
        ulps: f64,
    ) {
        let (err, at) = max_rel(xs, f, reference);
        println!(
            "{name}: max rel error {err:.3e} ({:.2} ulp) at {at}",
            err / ULP
        );
        assert!(err < ulps * ULP, "{name} rel error {err:e} at {at}");
    }

    /// Every 37th float between `lo` and `hi` (same sign), plus the ends.
    fn floats(lo: f32, hi: f32) -> Vec<f32> {
        let (a, b) = (
            lo.to_bits().min(hi.to_bits()),
            lo.to_bits().max(hi.to_bits()),
        );
        let mut v: Vec<f32> = (a..=b).step_by(37).map(f32::from_bits).collect();
        v.extend([lo, hi]);
        v
    }

    fn signed_range(lo: f32, hi: f32) -> Vec<f32> {
        let mut v = Vec::new();
        if lo < 0.0 {
            v.extend(floats(-f32::MIN_POSITIVE, lo));
        }
        if hi > 0.0 {
            v.extend(floats(f32::MIN_POSITIVE, hi));
        }
        v.push(0.0);
        v
    }

    const ULP: f64 = f32::EPSILON as f64; // 2^-23: one ulp relative, at most

    #[test]
    fn exp_f32_error_bound() {
        // The normal range of the result.
        assert_ulps(
            "exp_f32",
            &signed_range(-87.3, 88.7),
            exp_f32,
            f64::exp,
            2.0,
        );
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        // Subnormal results: within one subnormal step of the truth.
        for x in [-88.0f32, -95.0, -100.5, -103.0] {
            let want = (x as f64).exp();
            assert!((exp_f32(x) as f64 - want).abs() <= 1.5e-45, "{x}");
        }
    }

    #[test]
    fn fast_variants_error_bounds() {
        assert_ulps(
            "exp_f32_fast",
            &signed_range(-87.3, 88.3),
            exp_f32_fast,
            f64::exp,
            2.0,
        );
        for x in [-87.31f32, -100.0, -1e30, f32::NEG_INFINITY] {
            let y = exp_f32_fast(x);
            assert!(y > 0.0 && y <= 1.3e-38, "exp_f32_fast({x}) = {y}");
        }
        let mut xs = floats(f32::MIN_POSITIVE, f32::MAX);
        xs.extend(floats(0.5, 2.0));
        assert_ulps("ln_f32_fast", &xs, ln_f32_fast, f64::ln, 2.0);
    }

    #[test]
    fn ln_f32_error_bound() {
        let mut xs = floats(f32::from_bits(1), f32::MAX);
        xs.extend(floats(0.5, 2.0));
        assert_ulps("ln_f32", &xs, ln_f32, f64::ln, 2.0);
        assert_eq!(ln_f32(1.0), 0.0);
        assert_eq!(ln_f32(0.0), f32::NEG_INFINITY);
        assert_eq!(ln_f32(f32::INFINITY), f32::INFINITY);
        assert!(ln_f32(-1.0).is_nan() && ln_f32(f32::NAN).is_nan());
    }

    #[test]
    fn ln_1p_f32_error_bound() {
        let mut xs = floats(-0.999, -1e-30);
        xs.extend(floats(1e-30, 1e30));
        assert_ulps("ln_1p_f32", &xs, ln_1p_f32, f64::ln_1p, 2.0);
        assert_eq!(ln_1p_f32(0.0), 0.0);
        assert_eq!(ln_1p_f32(1e-30), 1e-30);
        assert_eq!(ln_1p_f32(-1.0), f32::NEG_INFINITY);
        assert_eq!(ln_1p_f32(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn softplus_and_sigmoid_from_exp_f32() {
        // The kernels build softplus and the sigmoid from exp_f32 and ln_1p_f32 below torch's
        // threshold of 20: check the composition against f64 on [-87.3, 20] (below, the values are
        // subnormal and the error is absolute, under 2e-45).
        let xs = signed_range(-87.3, 20.0);
        let sp = |x: f32| ln_1p_f32(exp_f32(x));
        assert_ulps("softplus (f32)", &xs, sp, softplus, 4.0);
        let sg = |x: f32| {
            let e = exp_f32(x);
            e / (1.0 + e)
        };
        assert_ulps("sigmoid (f32)", &xs, sg, sigmoid, 4.0);
    }

    #[test]
    fn lgamma_digamma_f32_error_bound() {
        // x = count + theta: theta from ~1e-4 up, counts up to ~1e5.
        let mut xs = floats(1e-4, 1e6);
        xs.extend(floats(0.5, 8.0));
        let (mut lg_rel, mut lg_abs, mut dg_rel, mut dg_abs) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for &x in &xs {
            let (lg, dg) = lgamma_digamma_f32(x);
            let (wl, wd) = (lgamma(x as f64), digamma(x as f64));
            let (el, ed) = ((lg as f64 - wl).abs(), (dg as f64 - wd).abs());
            // Bound: a relative part and an absolute part (the functions cross zero).
            assert!(
                el <= 3e-7 * wl.abs() + 2e-6,
                "lgamma({x}) = {lg}, want {wl}"
            );
            assert!(
                ed <= 6e-7 * wd.abs() + 6e-7,
                "digamma({x}) = {dg}, want {wd}"
            );
            if wl.abs() > 8.0 {
                lg_rel = lg_rel.max(el / wl.abs());
            } else {
                lg_abs = lg_abs.max(el);
            }
            if wd.abs() > 8.0 {
                dg_rel = dg_rel.max(ed / wd.abs());
            } else {
                dg_abs = dg_abs.max(ed);
            }
        }
        println!(
            "lgamma_f32: max rel error {lg_rel:.3e} where |lgamma| > 8, max abs error {lg_abs:.3e} \
             elsewhere; digamma_f32: max rel {dg_rel:.3e} where |digamma| > 8, max abs {dg_abs:.3e} \
             elsewhere"
        );
    }
}
