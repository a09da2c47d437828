//! matrixmultiply 0.3, gemm 0.19 and faer 0.24 on the three products of one scVI output head
//! (B = 128 cells, H = 128, G = 2,000 genes), each single-threaded, best of 7 rounds of 50 calls.

use std::time::Instant;
fn bench(name: &str, flops: f64, mut f: impl FnMut()) {
    for _ in 0..20 {
        f();
    }
    let mut best = f64::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        let n = 50;
        for _ in 0..n {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / n as f64);
    }
    println!(
        "{name:40} {:8.1} us  {:6.1} GFLOP/s",
        best * 1e6,
        flops / best / 1e9
    );
}
fn main() {
    let (b, h, g) = (128usize, 128usize, 2000usize);
    let x: Vec<f32> = (0..b * h).map(|i| ((i * 7) % 13) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..g * h).map(|i| ((i * 5) % 11) as f32 * 0.1).collect();
    let d: Vec<f32> = (0..b * g).map(|i| ((i * 3) % 17) as f32 * 0.1).collect();
    let mut y = vec![0f32; b * g];
    let mut dw = vec![0f32; g * h];
    let mut dx = vec![0f32; b * h];
    let fl = 2.0 * (b * h * g) as f64;
    unsafe {
        // fwd: y[b,g] = x[b,h] W^T ; W [g,h] row-major -> B(k=h,n=g) rs=1 cs=h
        bench("mm fwd  y=xW^T", fl, || {
            matrixmultiply::sgemm(
                b,
                h,
                g,
                1.0,
                x.as_ptr(),
                h as isize,
                1,
                w.as_ptr(),
                1,
                h as isize,
                1.0,
                y.as_mut_ptr(),
                g as isize,
                1,
            )
        });
        // dW[g,h] += d^T[g,b] x[b,h]; d [b,g] row-major -> A(m=g,k=b) rs=1 cs=g
        bench("mm dW   dW+=d^T x", fl, || {
            matrixmultiply::sgemm(
                g,
                b,
                h,
                1.0,
                d.as_ptr(),
                1,
                g as isize,
                x.as_ptr(),
                h as isize,
                1,
                1.0,
                dw.as_mut_ptr(),
                h as isize,
                1,
            )
        });
        // dx[b,h] = d[b,g] W[g,h]
        bench("mm dx   dx=dW", fl, || {
            matrixmultiply::sgemm(
                b,
                g,
                h,
                1.0,
                d.as_ptr(),
                g as isize,
                1,
                w.as_ptr(),
                h as isize,
                1,
                0.0,
                dx.as_mut_ptr(),
                h as isize,
                1,
            )
        });
        for (nm, par) in [("gemm1", gemm::Parallelism::None)] {
            bench(&format!("{nm} fwd"), fl, || {
                gemm::gemm(
                    b,
                    g,
                    h,
                    y.as_mut_ptr(),
                    1,
                    g as isize,
                    true,
                    x.as_ptr(),
                    1,
                    h as isize,
                    w.as_ptr(),
                    h as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            });
            bench(&format!("{nm} dW"), fl, || {
                gemm::gemm(
                    g,
                    h,
                    b,
                    dw.as_mut_ptr(),
                    1,
                    h as isize,
                    true,
                    d.as_ptr(),
                    g as isize,
                    1,
                    x.as_ptr(),
                    1,
                    h as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            });
            bench(&format!("{nm} dx"), fl, || {
                gemm::gemm(
                    b,
                    h,
                    g,
                    dx.as_mut_ptr(),
                    1,
                    h as isize,
                    false,
                    d.as_ptr(),
                    1,
                    g as isize,
                    w.as_ptr(),
                    1,
                    h as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            });
        }
    }
    use faer::{Accum, MatMut, MatRef, Par};
    let xr = MatRef::from_row_major_slice(&x, b, h);
    let wr = MatRef::from_row_major_slice(&w, g, h);
    let dr = MatRef::from_row_major_slice(&d, b, g);
    bench("faer fwd", fl, || {
        let ym = MatMut::from_row_major_slice_mut(&mut y, b, g);
        faer::linalg::matmul::matmul(ym, Accum::Add, xr, wr.transpose(), 1.0f32, Par::Seq)
    });
    bench("faer dW", fl, || {
        let m = MatMut::from_row_major_slice_mut(&mut dw, g, h);
        faer::linalg::matmul::matmul(m, Accum::Add, dr.transpose(), xr, 1.0f32, Par::Seq)
    });
    bench("faer dx", fl, || {
        let m = MatMut::from_row_major_slice_mut(&mut dx, b, h);
        faer::linalg::matmul::matmul(m, Accum::Replace, dr, wr, 1.0f32, Par::Seq)
    });
    println!("{}", y[5] + dw[7] + dx[9]);
}
