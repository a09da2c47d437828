//! Instruction-set dispatch and lane-parallel reductions for the element-wise kernels.
//!
//! The kernels are plain Rust written so that LLVM vectorises them (straight-line bodies, selects
//! instead of branches, no calls); the crate is built for baseline x86-64 (SSE2), so each kernel is
//! compiled again inside a `#[target_feature]` function for AVX2 and for AVX-512 and the widest one
//! this CPU runs is picked at run time. Every version does the same IEEE operations in the same
//! order (no fused multiply-add is introduced: Rust does not contract `a * b + c`), so the results
//! are identical on every instruction set. `SCVI_RS_ISA=base|avx2|avx512` caps the choice (for
//! benchmarks and tests).
//!
//! Rayon closures run on other threads and are compiled without the features: dispatch inside the
//! per-thread work, not around a parallel loop.

use crate::float::Float;
use std::sync::OnceLock;

/// The instruction set a kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Base,
    Avx2,
    Avx512,
}

/// The widest instruction set this CPU supports, capped by `SCVI_RS_ISA`.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let cap = match std::env::var("SCVI_RS_ISA").as_deref() {
            Ok("base") => Isa::Base,
            Ok("avx2") => Isa::Avx2,
            _ => Isa::Avx512,
        };
        detect().min(cap)
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
    {
        Isa::Avx512
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Isa::Avx2
    } else {
        Isa::Base
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Base
}

/// A piece of element-wise work. `run` must be `#[inline(always)]` (and so must everything it calls
/// in its loops) so that it is compiled into each instruction-set version of [`dispatch`].
pub trait Kernel {
    type Output;
    fn run(self) -> Self::Output;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn run_avx512<K: Kernel>(k: K) -> K::Output {
    k.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
unsafe fn run_avx2<K: Kernel>(k: K) -> K::Output {
    k.run()
}

/// Run `k` compiled for the widest instruction set available.
#[inline]
pub fn dispatch<K: Kernel>(k: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    match isa() {
        // SAFETY: `isa()` returns Avx512 / Avx2 only when the CPU reports these features.
        Isa::Avx512 => return unsafe { run_avx512(k) },
        Isa::Avx2 => return unsafe { run_avx2(k) },
        Isa::Base => {}
    }
    k.run()
}

/// `dst[c * ds + r] (+)= src[r * ss + c]` for `r < rows`, `c < cols`: a transpose (`ADD`: a
/// transposed accumulation) of a strided block. f32 goes through 8x8 AVX register transposes when
/// the CPU has AVX2 (the caller may be compiled without it: the tiles are separate functions);
/// other types and the edges are scalar.
#[inline(always)]
pub fn transpose<T: Float, const ADD: bool>(
    src: &[T],
    ss: usize,
    rows: usize,
    cols: usize,
    dst: &mut [T],
    ds: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(dst.len() > (cols - 1) * ds + rows - 1);
    // SAFETY: dst covers the block (asserted); it is a unique borrow.
    unsafe { transpose_raw::<T, ADD>(src, ss, rows, cols, dst.as_mut_ptr(), ds) }
}

/// [`transpose`] into a raw destination, for threads that write disjoint elements of one buffer.
///
/// # Safety
/// `dst + c * ds + r` must be valid for writes (and reads with `ADD`) for every `r < rows`,
/// `c < cols`, and no other thread may access those elements meanwhile.
#[inline(always)]
pub unsafe fn transpose_raw<T: Float, const ADD: bool>(
    src: &[T],
    ss: usize,
    rows: usize,
    cols: usize,
    dst: *mut T,
    ds: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(src.len() > (rows - 1) * ss + cols - 1);
    let (mut r8, mut c8) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && isa() >= Isa::Avx2 {
        (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
        let (sp, dp) = (src.as_ptr() as *const f32, dst as *mut f32);
        for r in (0..r8).step_by(8) {
            for c in (0..c8).step_by(8) {
                // SAFETY: T is f32 (checked above); the 8x8 tile at (r, c) lies inside src
                // (asserted) and dst (the caller's contract); AVX2 is present.
                unsafe { transpose8x8_avx::<ADD>(sp.add(r * ss + c), ss, dp.add(c * ds + r), ds) }
            }
        }
    }
    // The scalar remainder: columns c8.. for rows below r8, and rows r8.. for every column.
    for (r0, r1, c0) in [(0, r8, c8), (r8, rows, 0)] {
        for r in r0..r1 {
            for c in c0..cols {
                let v = src[r * ss + c];
                // SAFETY: in the block, by the caller's contract.
                unsafe {
                    let d = dst.add(c * ds + r);
                    *d = if ADD { *d + v } else { v };
                }
            }
        }
    }
}

/// One 8x8 f32 tile: `dst[c * ds + r] (+)= src[r * ss + c]`.
///
/// # Safety
/// `src` and `dst` with their strides must cover the 8x8 tiles; AVX must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,avx2")]
unsafe fn transpose8x8_avx<const ADD: bool>(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the tiles are in bounds.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let o = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (i, v) in o.into_iter().enumerate() {
            let p = dst.add(i * ds);
            let v = if ADD {
                _mm256_add_ps(_mm256_loadu_ps(p), v)
            } else {
                v
            };
            _mm256_storeu_ps(p, v);
        }
    }
}

/// Lanes of the reductions: 16 partial results, combined pairwise at the end. The order of the
/// additions is fixed, so the result does not depend on the instruction set.
pub const LANES: usize = 16;

#[inline(always)]
fn combine<U: Copy>(mut acc: [U; LANES], op: impl Fn(U, U) -> U) -> U {
    let mut n = LANES;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            acc[i] = op(acc[i], acc[i + n]);
        }
    }
    acc[0]
}

/// `x` folded in `LANES` lanes from `init` with `pick` (which keeps one of its two arguments: a
/// max or a min), then the lanes combined.
#[inline(always)]
fn lane_pick<T: Float>(x: &[T], init: T, pick: impl Fn(T, T) -> T + Copy) -> T {
    let mut acc = [init; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = pick(acc[i], c[i]);
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        acc[i] = pick(acc[i], v);
    }
    combine(acc, pick)
}

/// `max_i x[i]` (NaN-ignoring like `f32::max` is not needed: the inputs are finite logits).
#[inline(always)]
pub fn lane_max<T: Float>(x: &[T]) -> T {
    let neg = T::from_f64(f64::NEG_INFINITY);
    lane_pick(x, neg, |a, b| if b > a { b } else { a })
}

/// `min_i x[i]`.
#[inline(always)]
pub fn lane_min<T: Float>(x: &[T]) -> T {
    let pos = T::from_f64(f64::INFINITY);
    lane_pick(x, pos, |a, b| if b < a { b } else { a })
}

/// `sum_i x[i]` in T.
#[inline(always)]
pub fn lane_sum<T: Float>(x: &[T]) -> T {
    let mut acc = [T::ZERO; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        acc[i] += v;
    }
    combine(acc, |a, b| a + b)
}

/// `sum_i x[i]` accumulated in f64.
#[inline(always)]
pub fn lane_sum_f64<T: Float>(x: &[T]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += c[i].to_f64();
        }
    }
    for (i, &v) in chunks.remainder().iter().enumerate() {
        acc[i] += v.to_f64();
    }
    combine(acc, |a, b| a + b)
}

/// `x[i] = exp(x[i] - shift)` and their sum (in T); `shift >= max x` (a softmax), so the bounded
/// `vexp_fast` applies (terms below 1.2e-38 are read as 1.2e-38, against a sum >= 1).
#[inline(always)]
pub fn exp_shift_sum<T: Float>(x: &mut [T], shift: T) -> T {
    let mut acc = [T::ZERO; LANES];
    let mut chunks = x.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let e = (c[i] - shift).vexp_fast();
            c[i] = e;
            acc[i] += e;
        }
    }
    for (i, v) in chunks.into_remainder().iter_mut().enumerate() {
        let e = (*v - shift).vexp_fast();
        *v = e;
        acc[i] += e;
    }
    combine(acc, |a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum<'a>(&'a [f32]);
    impl Kernel for Sum<'_> {
        type Output = (f32, f32, f64);
        #[inline(always)]
        fn run(self) -> Self::Output {
            (lane_sum(self.0), lane_max(self.0), lane_sum_f64(self.0))
        }
    }

    #[test]
    fn transposes_match_the_definition() {
        for (rows, cols) in [(8, 8), (13, 29), (32, 128), (7, 3), (64, 17)] {
            let (ss, ds) = (cols + 3, rows + 5);
            let src: Vec<f32> = (0..rows * ss).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut dst = vec![1.0f32; cols * ds];
            transpose::<f32, false>(&src, ss, rows, cols, &mut dst, ds);
            let mut acc = vec![1.0f32; cols * ds];
            transpose::<f32, true>(&src, ss, rows, cols, &mut acc, ds);
            let src64: Vec<f64> = src.iter().map(|&v| v as f64).collect();
            let mut d64 = vec![1.0f64; cols * ds];
            transpose::<f64, false>(&src64, ss, rows, cols, &mut d64, ds);
            for r in 0..rows {
                for c in 0..cols {
                    let v = src[r * ss + c];
                    assert_eq!(dst[c * ds + r], v, "{rows}x{cols} at {r},{c}");
                    assert_eq!(acc[c * ds + r], v + 1.0);
                    assert_eq!(d64[c * ds + r], v as f64);
                }
            }
        }
    }

    #[test]
    fn reductions_are_the_same_on_every_path() {
        let x: Vec<f32> = (0..1003)
            .map(|i| ((i * 37) % 101) as f32 * 0.37 - 7.0)
            .collect();
        let a = dispatch(Sum(&x));
        let b = Sum(&x).run();
        assert_eq!(a, b);
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((a.2 - want).abs() < 1e-9);
        assert!((a.0 as f64 - want).abs() < 1e-3);
        assert_eq!(a.1, x.iter().cloned().fold(f32::MIN, f32::max));
    }
}
