//! The scalar type of the engine. The CPU reference is generic over `f32` (what training uses) and
//! `f64` (what the parity and gradient checks use), so the maths is written once.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

pub trait Float:
    Copy
    + Send
    + Sync
    + Debug
    + Display
    + Default
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// The dtype name used in safetensors and messages.
    const NAME: &'static str;

    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn from_usize(x: usize) -> Self {
        Self::from_f64(x as f64)
    }
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn max(self, other: Self) -> Self;
    fn is_finite(self) -> bool;

    /// `e^x` as the element-wise kernels compute it: `f64::exp` in f64; in f32 the branch-free
    /// [`exp_f32`](crate::math::special::exp_f32) (max 2 ulp), which vectorises.
    fn vexp(self) -> Self;
    /// `ln x` for the kernels: `f64::ln` / [`ln_f32`](crate::math::special::ln_f32) (max 2 ulp).
    fn vln(self) -> Self;
    /// `e^x` where `x <= 88.3` is known and values below 1.2e-38 do not matter: `f64::exp` /
    /// [`exp_f32_fast`](crate::math::special::exp_f32_fast) (max 2 ulp, no special cases).
    fn vexp_fast(self) -> Self;
    /// `ln x` where `x` is known positive, normal and finite: `f64::ln` /
    /// [`ln_f32_fast`](crate::math::special::ln_f32_fast).
    fn vln_fast(self) -> Self;
    /// `ln(1 + x)` for the kernels: `f64::ln_1p` / [`ln_1p_f32`](crate::math::special::ln_1p_f32).
    fn vln_1p(self) -> Self;
    /// `(lgamma(x), digamma(x))` for x > 0: libm's `lgamma` and [`digamma`] in f64,
    /// [`lgamma_digamma_f32`](crate::math::special::lgamma_digamma_f32) in f32.
    ///
    /// [`digamma`]: crate::math::special::digamma
    fn lgamma_digamma(self) -> (Self, Self);

    /// `C = alpha * A B + beta * C` for strided matrices (m x k times k x n, the sizes `c.rows`,
    /// `a.cols`, `c.cols`), single-threaded (faer's kernels, `Par::Seq`; `beta = 0` does not read C).
    ///
    /// # Safety
    /// The pointers with their strides must describe matrices of the given sizes inside live
    /// allocations, and `c` must not alias `a` or `b`.
    unsafe fn gemm_raw(alpha: Self, a: RawMat<Self>, b: RawMat<Self>, beta: Self, c: RawMat<Self>);
}

/// A strided matrix by raw pointer: `rows x cols`, element (i, j) at `ptr + i rs + j cs` (strides
/// in elements).
#[derive(Clone, Copy, Debug)]
pub struct RawMat<T> {
    pub ptr: *mut T,
    pub rows: usize,
    pub cols: usize,
    pub rs: isize,
    pub cs: isize,
}

/// `fn name(self) -> Self { f(self) }` for each `name => f`.
macro_rules! unary {
    ($($name:ident => $f:expr,)*) => {$(
        #[inline(always)]
        fn $name(self) -> Self {
            $f(self)
        }
    )*};
}

macro_rules! impl_float {
    ($t:ty, $name:expr, $exp:path, $ln:path, $expf:path, $lnf:path, $ln1p:path, $lgdg:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NAME: &'static str = $name;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            unary! {
                exp => <$t>::exp,
                ln => <$t>::ln,
                ln_1p => <$t>::ln_1p,
                sqrt => <$t>::sqrt,
                vexp => $exp,
                vln => $ln,
                vexp_fast => $expf,
                vln_fast => $lnf,
                vln_1p => $ln1p,
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn lgamma_digamma(self) -> (Self, Self) {
                $lgdg(self)
            }
            unsafe fn gemm_raw(
                alpha: Self,
                a: RawMat<Self>,
                b: RawMat<Self>,
                beta: Self,
                c: RawMat<Self>,
            ) {
                use faer::linalg::matmul::matmul;
                use faer::{Accum, MatMut, MatRef, Par};
                let (m, n, rsc, csc) = (c.rows, c.cols, c.rs, c.cs);
                if m == 0 || n == 0 {
                    return;
                }
                // SAFETY: the caller guarantees the pointers and strides describe valid matrices
                // and that c does not alias a or b.
                unsafe {
                    let lhs = MatRef::from_raw_parts(a.ptr, m, a.cols, a.rs, a.cs);
                    let rhs = MatRef::from_raw_parts(b.ptr, a.cols, n, b.rs, b.cs);
                    let mut dst = MatMut::from_raw_parts_mut(c.ptr, m, n, rsc, csc);
                    let accum = if beta == 0.0 {
                        Accum::Replace
                    } else {
                        if beta != 1.0 {
                            for i in 0..m {
                                for j in 0..n {
                                    let p = c.ptr.offset(i as isize * rsc + j as isize * csc);
                                    *p *= beta;
                                }
                            }
                        }
                        Accum::Add
                    };
                    // Single-threaded: the engine splits the work over its own threads.
                    matmul(dst.as_mut(), accum, lhs, rhs, alpha, Par::Seq);
                }
            }
        }
    };
}

use crate::math::special;

#[inline(always)]
fn lgamma_digamma_f64(x: f64) -> (f64, f64) {
    (special::lgamma(x), special::digamma(x))
}

impl_float!(
    f32,
    "F32",
    special::exp_f32,
    special::ln_f32,
    special::exp_f32_fast,
    special::ln_f32_fast,
    special::ln_1p_f32,
    special::lgamma_digamma_f32
);
impl_float!(
    f64,
    "F64",
    f64::exp,
    f64::ln,
    f64::exp,
    f64::ln,
    f64::ln_1p,
    lgamma_digamma_f64
);
