//! Dense products for the engine, parallel over fixed tiles with rayon.
//!
//! Each tile is one single-threaded call of the GEMM library (faer, `Par::Seq`), so the library's
//! threads never compete with rayon's. The tiles depend on the shape only, never on the number of
//! threads, so the result is the same on 1 thread or 64: an output with a long side is cut into
//! slabs of `TILE` rows or columns; a small output with a long inner dimension (`dh = d W`,
//! `128 x 2000 x 128`) is cut along `k` into chunks of `K_TILE`, whose products are summed in order.
//!
//! CPU twin of the GPU engine's cuBLAS products (`cuda::ops::linear_fwd`, `linear_wgrad`,
//! `linear_dgrad`; tests/cuda_kernels.rs `gemm_*`).

use crate::float::{Float, RawMat};
use crate::model::layout::LinearShape;
use rayon::prelude::*;

/// A strided matrix operand: pointer offset zero at `data[0]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// Row-major with leading dimension `ld`.
    pub fn rows(data: &'a [T], ld: usize) -> Self {
        MatRef {
            data,
            rs: ld,
            cs: 1,
        }
    }
    /// The transpose of a row-major matrix with leading dimension `ld`.
    pub fn cols(data: &'a [T], ld: usize) -> Self {
        MatRef {
            data,
            rs: 1,
            cs: ld,
        }
    }

    /// The `rows x cols` block at (`i0`, `j0`), for the GEMM kernel (read only, although the
    /// pointer is `*mut`).
    ///
    /// # Safety
    /// The block must lie inside `data` (callers check the extents first).
    unsafe fn raw(&self, i0: usize, j0: usize, rows: usize, cols: usize) -> RawMat<T> {
        RawMat {
            ptr: unsafe { self.data.as_ptr().add(i0 * self.rs + j0 * self.cs) } as *mut T,
            rows,
            cols,
            rs: self.rs as isize,
            cs: self.cs as isize,
        }
    }
}

/// An output pointer shared by rayon tasks that write disjoint elements through it (the GEMM's
/// tiles here, the sparse layer's gene blocks).
#[derive(Clone, Copy)]
pub(super) struct SendPtr<T>(pub(super) *mut T);
// SAFETY: every user writes disjoint elements from different tasks (see each use).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Through a method, so closures capture the whole (Send) wrapper, not the raw field.
    pub(super) fn get(self) -> *mut T {
        self.0
    }
}

/// Rows or columns per output slab.
const TILE: usize = 512;
/// Inner-dimension chunk for small outputs.
const K_TILE: usize = 512;
/// Outputs at most this large (elements) with `k >= 2 K_TILE` are split along k.
const SMALL_OUT: usize = 128 * 256;

thread_local! {
    /// Partial products of the k-split, per calling thread (f64 words, reused: no allocation once
    /// warm).
    static PARTIAL: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `C[m, n] = A[m, k] B[k, n] + beta C`, C row-major with leading dimension `ldc`.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(
    m: usize,
    k: usize,
    n: usize,
    a: MatRef<T>,
    b: MatRef<T>,
    beta: T,
    c: &mut [T],
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: output too small");
    check_extent(a, m, k, "A");
    check_extent(b, k, n, "B");
    let cp = SendPtr(c.as_mut_ptr());
    // One call: C[i0.., j0..] (mm x nn) = A[i0.., k0..k0+kk] B[k0..k0+kk, j0..] + beta C.
    let call = |i0: usize,
                j0: usize,
                mm: usize,
                nn: usize,
                k0: usize,
                kk: usize,
                beta: T,
                out: SendPtr<T>,
                ldo: usize| {
        // SAFETY: A, B and C extents were checked above; callers pass disjoint output blocks.
        unsafe {
            let a = a.raw(i0, k0, mm, kk);
            let b = b.raw(k0, j0, kk, nn);
            let c = RawMat {
                ptr: out.get(),
                rows: mm,
                cols: nn,
                rs: ldo as isize,
                cs: 1,
            };
            T::gemm_raw(T::ONE, a, b, beta, c);
        }
    };
    if m * n <= SMALL_OUT && k >= 2 * K_TILE {
        // Split k: chunk 0 into C (with beta), the others into partial products, summed in order.
        let chunks = k.div_ceil(K_TILE);
        let words = ((chunks - 1) * m * n * std::mem::size_of::<T>()).div_ceil(8);
        PARTIAL.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < words {
                buf.resize(words, 0.0);
            }
            // SAFETY: T is f32 or f64 (the only Float types): size and alignment at most f64's.
            let part: &mut [T] = unsafe {
                std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut T, (chunks - 1) * m * n)
            };
            let pp = SendPtr(part.as_mut_ptr());
            (0..chunks).into_par_iter().for_each(|q| {
                let k0 = q * K_TILE;
                let kk = (k - k0).min(K_TILE);
                if q == 0 {
                    call(0, 0, m, n, k0, kk, beta, cp, ldc);
                } else {
                    // SAFETY: partial q - 1 is its own m * n block of `part`.
                    let out = SendPtr(unsafe { pp.get().add((q - 1) * m * n) });
                    call(0, 0, m, n, k0, kk, T::ZERO, out, n);
                }
            });
            for q in 1..chunks {
                let src = &part[(q - 1) * m * n..q * m * n];
                for i in 0..m {
                    for (o, &v) in c[i * ldc..i * ldc + n]
                        .iter_mut()
                        .zip(&src[i * n..(i + 1) * n])
                    {
                        *o += v;
                    }
                }
            }
        });
        return;
    }
    // Slabs along the longer side of the output.
    let (tiles_m, tiles_n) = if m >= n {
        (m.div_ceil(TILE), 1)
    } else {
        (1, n.div_ceil(TILE))
    };
    let run = |t: usize| {
        let (ti, tj) = (t / tiles_n, t % tiles_n);
        let (i0, j0) = (ti * TILE.min(m), tj * TILE.min(n));
        let (mm, nn) = (
            if tiles_m > 1 { (m - i0).min(TILE) } else { m },
            if tiles_n > 1 { (n - j0).min(TILE) } else { n },
        );
        // SAFETY: the block starts inside C (checked extent).
        let out = SendPtr(unsafe { cp.get().add(i0 * ldc + j0) });
        call(i0, j0, mm, nn, 0, k, beta, out, ldc);
    };
    if tiles_m * tiles_n == 1 {
        run(0);
    } else {
        (0..tiles_m * tiles_n).into_par_iter().for_each(run);
    }
}

fn check_extent<T>(x: MatRef<T>, rows: usize, cols: usize, what: &str) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (rows - 1) * x.rs + (cols - 1) * x.cs;
    assert!(last < x.data.len(), "gemm: operand {what} too small");
}

/// `y = x W[:, :n_in]^T + beta y`, y `[b, n_out]`, x `[b, n_in]` (twin of `cuda::ops::linear_fwd`).
pub fn linear_fwd<T: Float>(y: &mut [T], x: &[T], w: &[T], s: LinearShape, beta: T) {
    let (rows, cols) = (MatRef::rows(x, s.n_in), MatRef::cols(w, s.ldw));
    gemm(s.b, s.n_in, s.n_out, rows, cols, beta, y, s.n_out);
}

/// `dW[:, :n_in] += d^T x`, d `[b, n_out]` (twin of `cuda::ops::linear_wgrad`).
pub fn linear_wgrad<T: Float>(dw: &mut [T], d: &[T], x: &[T], s: LinearShape) {
    let (cols, rows) = (MatRef::cols(d, s.n_out), MatRef::rows(x, s.n_in));
    gemm(s.n_out, s.b, s.n_in, cols, rows, T::ONE, dw, s.ldw);
}

/// `dx = d W[:, :n_in] + beta dx`, dx `[b, n_in]` (twin of `cuda::ops::linear_dgrad`).
pub fn linear_dgrad<T: Float>(dx: &mut [T], d: &[T], w: &[T], s: LinearShape, beta: T) {
    let (d_rows, w_rows) = (MatRef::rows(d, s.n_out), MatRef::rows(w, s.ldw));
    gemm(s.b, s.n_out, s.n_in, d_rows, w_rows, beta, dx, s.n_in);
}

/// `out[j] += sum_i x[i * ld + j]` for `j < n`, over `m` rows: column sums, parallel over columns,
/// summed in row order (deterministic).
pub fn add_column_sums<T: Float>(out: &mut [T], x: &[T], m: usize, n: usize, ld: usize) {
    const CHUNK: usize = 256;
    out[..n]
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, o)| {
            let j0 = c * CHUNK;
            for i in 0..m {
                let row = &x[i * ld + j0..i * ld + j0 + o.len()];
                for (acc, &v) in o.iter_mut().zip(row) {
                    *acc += v;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slab and k-split paths against a naive product (small integers: exact in f64), with
    /// beta 0 and 1, on 1 and 3 threads.
    #[test]
    fn tiled_and_split_products_are_exact() {
        for &(m, k, n) in &[
            (130, 1100, 120),
            (600, 40, 70),
            (50, 30, 1300),
            (3, 2000, 5),
        ] {
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 7) % 13) as f64 - 6.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 5) % 11) as f64 - 5.0).collect();
            for beta in [0.0, 1.0] {
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut c = vec![f64::NAN; m * n];
                    if beta == 1.0 {
                        c.iter_mut().for_each(|v| *v = 2.0);
                    }
                    pool.install(|| {
                        gemm(
                            m,
                            k,
                            n,
                            MatRef::rows(&a, k),
                            MatRef::rows(&b, n),
                            beta,
                            &mut c,
                            n,
                        )
                    });
                    for i in 0..m {
                        for j in 0..n {
                            let want: f64 =
                                (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f64>()
                                    + 2.0 * beta;
                            assert_eq!(c[i * n + j], want, "{m}x{k}x{n} beta {beta}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_matches_naive_for_all_layouts() {
        let (m, k, n) = (37, 19, 301);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 7) % 13) as f64 - 6.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 5) % 11) as f64 - 5.0).collect();
        // A row-major, B given transposed (as a row-major [n, k]).
        let bt: Vec<f64> = (0..n * k).map(|idx| b[(idx % k) * n + idx / k]).collect();
        let mut c = vec![1.0; m * n];
        gemm(
            m,
            k,
            n,
            MatRef::rows(&a, k),
            MatRef::cols(&bt, k),
            2.0,
            &mut c,
            n,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f64>() + 2.0;
                assert_eq!(c[i * n + j], want);
            }
        }
    }
}
