//! f32 -> bf16 conversion and the tile layouts the AMX products read (`amx`, `gemm_bf16`).
//!
//! bf16 keeps f32's sign and 8-bit exponent and the top 7 of its 23 fraction bits: 8 significant
//! bits, unit roundoff `u = 2^-8`. Conversion rounds to nearest, ties to even, as the hardware's
//! `vcvtne2ps2bf16` does, including its treatment of f32 subnormal inputs as zero (DAZ); NaN stays
//! a quiet NaN. [`to_bf16`] is the scalar definition, the AVX-512 packers below produce the same
//! bits (tests/bf16.rs checks it on a sweep of values).
//!
//! Packed layouts, all in 16 x 32 bf16 tiles of 1 KiB (16 rows of 64 bytes), padding zero:
//! - **A tiles** of an `M x K` operand: tile row `r` holds `A[16 i + r][32 t .. 32 t + 32]`.
//! - **B tiles (VNNI)** of a `K x N` operand: tile row `p` holds, for the 16 columns
//!   `n = 16 j + c`, the pair `(B[32 t + 2p][n], B[32 t + 2p + 1][n])`.
//!
//! Each packer fills whole tiles from an f32 source, reading only inside the `rows x cols` source
//! and writing zeros for the rest. Three ways to read the source cover the six operands of the
//! heads' three products (`gemm_bf16` lists them), the [`Packing`]s of [`pack`]: plain rows
//! (`A`), pairs of rows interleaved (`BRows`), and 16 x 16 transposes of 32-bit pairs
//! (`Transposed`).

use half::bf16;
use std::ops::Range;

/// Elements of one tile.
pub const TILE_ELEMS: usize = 512;

/// f32 -> bf16 with round-to-nearest-even, f32 subnormals as zero, NaN quiet (the hardware's rule).
#[inline]
pub fn to_bf16(x: f32) -> bf16 {
    let bits = x.to_bits();
    if bits & 0x7f80_0000 == 0 {
        // Zero or subnormal: signed zero.
        return bf16::from_bits((bits >> 16) as u16 & 0x8000);
    }
    bf16::from_f32(x)
}

/// `x` rounded to the nearest bf16, as an f32 (exact: every bf16 is an f32).
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    to_bf16(x).to_f32()
}

/// Round every element of `src` to bf16 precision into `dst` (the portable path's operands).
pub fn round_into(dst: &mut [f32], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = round_bf16(s);
    }
}

/// An f32 source matrix: row-major, `rows x cols`, leading dimension `ld`.
#[derive(Clone, Copy)]
pub struct Src<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl Src<'_> {
    /// Element (r, c), zero outside the matrix.
    #[inline]
    fn at(&self, r: usize, c: usize) -> f32 {
        if r < self.rows && c < self.cols {
            self.data[r * self.ld + c]
        } else {
            0.0
        }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            assert!(
                (self.rows - 1) * self.ld + self.cols <= self.data.len(),
                "bf16 pack: source too small"
            );
        }
    }
}

/// One 16 x 32 tile from a rule `f(row, col) -> f32` over the tile (the scalar packer).
#[inline]
fn tile_scalar(dst: &mut [bf16], f: impl Fn(usize, usize) -> f32) {
    for r in 0..16 {
        for k in 0..32 {
            dst[r * 32 + k] = to_bf16(f(r, k));
        }
    }
}

/// How [`pack`] reads its source into tiles `(i, t)` (`i` the outer index, `t` the inner one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    /// The A tiles of the source `S` (`M x K`): row `r` of tile `(i, t)` holds
    /// `S[16 i + r][32 t .. 32 t + 32]`.
    A,
    /// The VNNI B tiles of the source itself as the `K x N` operand (k along its rows): row `p` of
    /// tile `(t, j)` holds the pairs `(S[32 t + 2p][16 j + c], S[32 t + 2p + 1][16 j + c])`, `c < 16`.
    BRows,
    /// Tiles of the transpose `S^T`, built from 16 vectors of 16 bf16 pairs and one 16 x 16
    /// transpose of those pairs:
    /// - `pairs_along_rows`: the A tiles of `S^T` for `S` `K x M` (k along the source's rows): row
    ///   `r` of tile `(i, t)` holds `S[32 t + k][16 i + r]`, `k < 32` (for `D^T`);
    /// - otherwise: the VNNI B tiles of `S^T` for `S` `N x K` (k along the source's columns): row
    ///   `p` of tile `(j, t)` holds the pairs `(S[16 j + c][32 t + 2p], S[16 j + c][32 t + 2p + 1])`,
    ///   `c < 16` (for `W^T`).
    Transposed { pairs_along_rows: bool },
}

/// Tiles `(i, t)` of `src` as `packing` says, for `i` in `outer` and `t` in `inner`, into `dst`;
/// `offset(i, t)` places each tile (in tiles, from the start of `dst`). `simd`: with the AVX-512
/// packers where AMX is available (the scalar definition otherwise; the same bits).
pub fn pack(
    dst: &mut [bf16],
    simd: bool,
    src: Src,
    packing: Packing,
    (outer, inner): (Range<usize>, Range<usize>),
    offset: impl Fn(usize, usize) -> usize,
) {
    src.check();
    let simd = simd && super::amx::available();
    for i in outer {
        for t in inner.clone() {
            let o = offset(i, t) * TILE_ELEMS;
            let tile = &mut dst[o..o + TILE_ELEMS];
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: AMX availability implies AVX512F/BW/BF16 (checked there); the reads stay
                // inside `src` (checked extent, masked edges) and the tile is 512 elements.
                unsafe {
                    match packing {
                        Packing::A => vector::a_tile(tile, src, 16 * i, 32 * t),
                        Packing::BRows => vector::b_rows_tile(tile, src, 32 * i, 16 * t),
                        Packing::Transposed { pairs_along_rows } => {
                            vector::transposed_tile(tile, src, pairs_along_rows, 16 * i, 32 * t)
                        }
                    }
                }
                continue;
            }
            match packing {
                Packing::A => tile_scalar(tile, |r, k| src.at(16 * i + r, 32 * t + k)),
                // Tile (i, t) here is tile (t, j) above: row p, element 2c + e.
                Packing::BRows => {
                    tile_scalar(tile, |p, e| src.at(32 * i + 2 * p + e % 2, 16 * t + e / 2))
                }
                // Row r, element 2q + e: S[32 t + 2q + e][16 i + r].
                Packing::Transposed {
                    pairs_along_rows: true,
                } => tile_scalar(tile, |r, k| src.at(32 * t + k, 16 * i + r)),
                // Row p, element 2c + e: S[16 i + c][32 t + 2p + e].
                Packing::Transposed {
                    pairs_along_rows: false,
                } => tile_scalar(tile, |p, k| src.at(16 * i + k / 2, 32 * t + 2 * p + k % 2)),
            }
        }
    }
}

/// The AVX-512 packers (AVX512-BF16 for the conversion, two f32 vectors to 32 bf16 at a time).
#[cfg(target_arch = "x86_64")]
mod vector {
    use super::{bf16, Src};
    use std::arch::x86_64::*;

    /// Up to 16 f32 from `p` (fewer: `n`, the rest zero), or zeros for `n == 0`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn load16(p: *const f32, n: usize) -> __m512 {
        if n >= 16 {
            unsafe { _mm512_loadu_ps(p) }
        } else if n == 0 {
            _mm512_setzero_ps()
        } else {
            unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p) }
        }
    }

    /// 32 bf16 of `lo` then `hi`, as 16 dwords.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn cvt(lo: __m512, hi: __m512) -> __m512i {
        // _mm512_cvtne2ps_pbh(a, b): elements 0..16 from b, 16..32 from a.
        unsafe { std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) }
    }

    /// Element `r0 + i` of 32 consecutive f32 of row `r` from column `c0` (masked to the source).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn row32(src: Src, r: usize, c0: usize) -> __m512i {
        if r >= src.rows || c0 >= src.cols {
            return _mm512_setzero_si512();
        }
        let n = src.cols - c0;
        // SAFETY: row r, columns c0 .. c0 + min(n, 32) are inside the source.
        unsafe {
            let p = src.data.as_ptr().add(r * src.ld + c0);
            let lo = load16(p, n.min(16));
            let hi = load16(p.add(16.min(n)), n.saturating_sub(16).min(16));
            cvt(lo, hi)
        }
    }

    /// Rows `r` and `r + 1`, 16 columns from `c0`, interleaved: dword `c` is the pair
    /// `(S[r][c0 + c], S[r + 1][c0 + c])`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pair_rows(src: Src, r: usize, c0: usize) -> __m512i {
        let n = src.cols.saturating_sub(c0).min(16);
        let load = |row: usize| {
            if row < src.rows && n > 0 {
                // SAFETY: row `row`, columns c0 .. c0 + n are inside the source.
                unsafe { load16(src.data.as_ptr().add(row * src.ld + c0), n) }
            } else {
                _mm512_setzero_ps()
            }
        };
        let (a, b) = (load(r), load(r + 1));
        // Words 0..16 are row r, 16..32 row r + 1; interleave them.
        let idx = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        unsafe { _mm512_permutexvar_epi16(idx, cvt(a, b)) }
    }

    /// Transpose a 16 x 16 matrix of dwords held as 16 rows.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose16(r: &mut [__m512i; 16]) {
        // Stage 1: 2x2 blocks of dwords.
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // Stage 2: 4x4 blocks (qwords).
        for i in 0..4 {
            for j in 0..2 {
                r[4 * i + j] = _mm512_unpacklo_epi64(t[4 * i + j], t[4 * i + 2 + j]);
                r[4 * i + 2 + j] = _mm512_unpackhi_epi64(t[4 * i + j], t[4 * i + 2 + j]);
            }
        }
        // Now within each 128-bit lane L of row 4a + b (b: 0 lo-lo, 1 hi-lo, 2 lo-hi, 3 hi-hi)
        // sits the 4x4 block of rows 4a..4a+4 and columns 4L..4L+4, row 4L + [0, 2, 1, 3][b].
        // Stages 3 and 4: move 128-bit lanes across rows.
        for i in 0..2 {
            for j in 0..4 {
                let (a, b) = (r[8 * i + j], r[8 * i + 4 + j]);
                t[8 * i + j] = _mm512_shuffle_i32x4(a, b, 0b10_00_10_00);
                t[8 * i + 4 + j] = _mm512_shuffle_i32x4(a, b, 0b11_01_11_01);
            }
        }
        for j in 0..8 {
            let (a, b) = (t[j], t[8 + j]);
            r[j] = _mm512_shuffle_i32x4(a, b, 0b10_00_10_00);
            r[8 + j] = _mm512_shuffle_i32x4(a, b, 0b11_01_11_01);
        }
        // Row k now holds column 4 (k / 4) + [0, 2, 1, 3][k % 4] (stage 2 wrote columns 0, 2,
        // 1, 3 of each lane in that order); the permutation is its own inverse.
        const ORDER: [usize; 16] = [0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15];
        let src = *r;
        for (k, &o) in ORDER.iter().enumerate() {
            r[k] = src[o];
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(tile: &mut [bf16], rows: &[__m512i; 16]) {
        let p = tile.as_mut_ptr() as *mut __m512i;
        for (r, v) in rows.iter().enumerate() {
            // SAFETY: the tile holds 16 rows of 64 bytes.
            unsafe { _mm512_storeu_si512(p.add(r), *v) };
        }
    }

    /// A tile: rows `r0 .. r0 + 16`, columns `c0 .. c0 + 32`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn a_tile(tile: &mut [bf16], src: Src, r0: usize, c0: usize) {
        let mut rows = [_mm512_setzero_si512(); 16];
        for (r, v) in rows.iter_mut().enumerate() {
            *v = unsafe { row32(src, r0 + r, c0) };
        }
        unsafe { store(tile, &rows) };
    }

    /// VNNI B tile: k rows `k0 .. k0 + 32` (pairs), columns `n0 .. n0 + 16`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn b_rows_tile(tile: &mut [bf16], src: Src, k0: usize, n0: usize) {
        let mut rows = [_mm512_setzero_si512(); 16];
        for (p, v) in rows.iter_mut().enumerate() {
            *v = unsafe { pair_rows(src, k0 + 2 * p, n0) };
        }
        unsafe { store(tile, &rows) };
    }

    /// See `Packing::Transposed`: 16 source vectors of 16 pairs, transposed.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn transposed_tile(
        tile: &mut [bf16],
        src: Src,
        pairs_along_rows: bool,
        i0: usize,
        t0: usize,
    ) {
        let mut rows = [_mm512_setzero_si512(); 16];
        for (q, v) in rows.iter_mut().enumerate() {
            *v = if pairs_along_rows {
                // Vector q: dword r = (S[t0 + 2q][i0 + r], S[t0 + 2q + 1][i0 + r]).
                unsafe { pair_rows(src, t0 + 2 * q, i0) }
            } else {
                // Vector c: dword p = (S[i0 + c][t0 + 2p], S[i0 + c][t0 + 2p + 1]).
                unsafe { row32(src, i0 + q, t0) }
            };
        }
        unsafe {
            transpose16(&mut rows);
            store(tile, &rows);
        }
    }
}
