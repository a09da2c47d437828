//! Dense products for the engine, parallel over tiles of the output with rayon.
//!
//! Each output element is computed by exactly one single-threaded `matrixmultiply` call with the
//! whole inner dimension, so the result does not depend on the number of threads or on how the
//! output is tiled: same seed, same numbers, on 1 thread or 64.

use crate::float::Float;
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
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: tiles write disjoint regions of the output; the pointer is only used inside `gemm`.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Through a method, so closures capture the whole (Send) wrapper, not the raw field.
    fn get(self) -> *mut T {
        self.0
    }
}

/// Minimum work (m*n*k) per tile before splitting pays for itself.
const MIN_TILE_WORK: usize = 1 << 17;

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
    assert!(
        m == 0 || c.len() >= (m - 1) * ldc + n,
        "gemm: output too small"
    );
    check_extent(a, m, k, "A");
    check_extent(b, k, n, "B");
    let threads = rayon::current_num_threads();
    let work = m * n * k.max(1);
    let max_tiles = (work / MIN_TILE_WORK).clamp(1, threads * 2);
    // Split the longer side of the output.
    let (tiles_m, tiles_n) = if m >= n {
        (max_tiles.min(m), 1)
    } else {
        (1, max_tiles.min(n))
    };
    let tile_m = m.div_ceil(tiles_m);
    let tile_n = n.div_ceil(tiles_n);
    let cp = SendPtr(c.as_mut_ptr());
    let run = |ti: usize, tj: usize| {
        let (i0, j0) = (ti * tile_m, tj * tile_n);
        if i0 >= m || j0 >= n {
            return;
        }
        let (mm, nn) = ((m - i0).min(tile_m), (n - j0).min(tile_n));
        // SAFETY: A, B and C extents were checked above; tiles are disjoint blocks of C.
        unsafe {
            T::gemm_raw(
                mm,
                k,
                nn,
                T::ONE,
                a.data.as_ptr().add(i0 * a.rs),
                a.rs as isize,
                a.cs as isize,
                b.data.as_ptr().add(j0 * b.cs),
                b.rs as isize,
                b.cs as isize,
                beta,
                cp.get().add(i0 * ldc + j0),
                ldc as isize,
                1,
            );
        }
    };
    if tiles_m * tiles_n == 1 {
        run(0, 0);
    } else {
        (0..tiles_m * tiles_n)
            .into_par_iter()
            .for_each(|t| run(t / tiles_n, t % tiles_n));
    }
}

fn check_extent<T>(x: MatRef<T>, rows: usize, cols: usize, what: &str) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (rows - 1) * x.rs + (cols - 1) * x.cs;
    assert!(last < x.data.len(), "gemm: operand {what} too small");
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
