//! What bf16 arithmetic really gives on this core, measured before building on it (issue 16), and
//! what the decoder heads' products cost in each precision:
//!
//! 1. instruction throughput, one core, registers only (no memory traffic), 12 independent
//!    accumulators (more than latency x issue rate, so the figure is the throughput):
//!    `vfmadd231ps zmm` (16 f32 FMAs = 32 flops), `vdpbf16ps zmm` (AVX512-BF16: 16 lanes x 2 bf16
//!    products added to f32 = 64 flops), and AMX `tdpbf16ps` (16 x 16 x 32 = 16,384 flops on four
//!    independent accumulator tiles);
//! 2. the six output-head products of one 128-cell Kang step (B = 128, H = 128, G = 2,000:
//!    forward, dW and dx for the scale and dropout heads, 393 MFLOP) in f32 (`cpu::gemm`, faer
//!    tiles), in bf16 on AMX and in bf16 on the portable path, conversions included, and the
//!    conversions alone.
//!
//! Run: `cargo bench --bench bf16_peak` (`SCVI_RS_BENCH_THREADS=1,2`, `SCVI_RS_BENCH_ROUNDS=15`).
//! Minimum over rounds, with the median beside it: the machine may be shared.

mod common;

use common::{shape, uniform};
use scvi_rs::cpu::amx;
use scvi_rs::cpu::bf16::{pack, Packing, Src};
use scvi_rs::cpu::gemm::{linear_dgrad, linear_fwd, linear_wgrad};
use scvi_rs::cpu::gemm_bf16::{Backend, HeadsBf16};
use std::time::Instant;

fn main() {
    let rounds: usize = std::env::var("SCVI_RS_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let threads: Vec<usize> = std::env::var("SCVI_RS_BENCH_THREADS")
        .ok()
        .map(|s| s.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2]);
    println!("load average before: {}", load_average());
    peaks(rounds);
    for t in threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap();
        pool.install(|| heads(t, rounds));
    }
    println!("load average after: {}", load_average());
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

/// (min, median) seconds per call of `f` over `rounds` rounds.
fn timed(rounds: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut v: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2])
}

fn peaks(rounds: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let n = 2_000_000usize;
        println!("\n### Instruction throughput, one core, registers only\n");
        println!(
            "| instruction | flops / instr | ns / instr (min) | GFLOP/s (min) | GFLOP/s (median) |"
        );
        println!("|---|---:|---:|---:|---:|");
        let row = |name: &str, flops: f64, instrs: f64, (min, med): (f64, f64)| {
            println!(
                "| {name} | {flops:.0} | {:.3} | {:.1} | {:.1} |",
                min / instrs * 1e9,
                flops * instrs / min / 1e9,
                flops * instrs / med / 1e9
            );
        };
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F present (checked).
            let t = timed(rounds, || unsafe { peak::fma(n) });
            row("vfmadd231ps zmm (f32 FMA)", 32.0, 12.0 * n as f64, t);
        }
        if is_x86_feature_detected!("avx512bf16") {
            // SAFETY: AVX512-BF16 present (checked).
            let t = timed(rounds, || unsafe { peak::dpbf16(n) });
            row("vdpbf16ps zmm (AVX512-BF16)", 64.0, 12.0 * n as f64, t);
        } else {
            println!("| vdpbf16ps | not on this CPU | | | |");
        }
        if amx::available() {
            let m = n / 20;
            // SAFETY: AMX available (checked); the tiles are configured inside.
            let t = timed(rounds, || unsafe { peak::amx(m) });
            row("tdpbf16ps (AMX-BF16)", 16384.0, 4.0 * m as f64, t);
        } else {
            println!(
                "| tdpbf16ps | {} | | | |",
                amx::unavailable_reason().unwrap_or_default()
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    /// 12 chains of `n` FMAs.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma(n: usize) {
        let mut acc = [_mm512_setzero_ps(); 12];
        let (a, b) = (_mm512_set1_ps(1.000_001), _mm512_set1_ps(0.999_999));
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(a, b, *v);
            }
        }
        std::hint::black_box(acc);
    }

    /// 12 chains of `n` bf16 pair dot products.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16(n: usize) {
        let mut acc = [_mm512_setzero_ps(); 12];
        let one = _mm512_set1_epi16(0x3f80);
        let (a, b) = (std::hint::black_box(one), std::hint::black_box(one));
        let (a, b): (__m512bh, __m512bh) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(a),
                std::mem::transmute::<__m512i, __m512bh>(b),
            )
        };
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, a, b);
            }
        }
        std::hint::black_box(acc);
    }

    /// `n` rounds of four independent tile products (tmm0..3 += tmm4/5 x tmm6/7).
    pub unsafe fn amx(n: usize) {
        let tiles = unsafe { scvi_rs::cpu::amx::Tiles::configure() };
        let ones = vec![0x3f80u16; 512];
        let zeros = vec![0f32; 256];
        unsafe {
            std::arch::asm!(
                "tileloadd tmm0, [{z} + {s}]",
                "tileloadd tmm1, [{z} + {s}]",
                "tileloadd tmm2, [{z} + {s}]",
                "tileloadd tmm3, [{z} + {s}]",
                "tileloadd tmm4, [{o} + {s}]",
                "tileloadd tmm5, [{o} + {s}]",
                "tileloadd tmm6, [{o} + {s}]",
                "tileloadd tmm7, [{o} + {s}]",
                "2:",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "dec {n}",
                "jnz 2b",
                z = in(reg) zeros.as_ptr(),
                o = in(reg) ones.as_ptr(),
                s = in(reg) 64usize,
                n = inout(reg) n => _,
                options(nostack, readonly),
            );
        }
        drop(tiles);
    }
}

/// The six head products of one Kang step in each precision.
fn heads(threads: usize, rounds: usize) {
    let (b, h, g) = (128usize, 128usize, 2000usize);
    let flops = 12.0 * (b * h * g) as f64;
    let x = uniform(b * h, 1, -1.0, 1.0);
    let w = [uniform(g * h, 2, -0.1, 0.1), uniform(g * h, 3, -0.1, 0.1)];
    let d = [
        uniform(b * g, 4, -1e-3, 1e-3),
        uniform(b * g, 5, -1e-3, 1e-3),
    ];
    let (mut y, mut dw, mut dx) = (vec![0f32; b * g], vec![0f32; g * h], vec![0f32; b * h]);
    println!("\n### The six output-head products of one 128-cell step, {threads} thread(s)\n");
    println!("| precision | min ms | median ms | GFLOP/s (min) |");
    println!("|---|---:|---:|---:|");
    let row = |name: &str, (min, med): (f64, f64)| {
        println!(
            "| {name} | {:.3} | {:.3} | {:.1} |",
            min * 1e3,
            med * 1e3,
            flops / min / 1e9
        );
    };
    let t = timed(rounds, || {
        for k in 0..2 {
            let s = shape(b, h, g);
            linear_fwd(&mut y, &x, &w[k], s, 0.0);
            linear_wgrad(&mut dw, &d[k], &x, s);
            linear_dgrad(&mut dx, &d[k], &w[k], s, if k == 0 { 0.0 } else { 1.0 });
        }
    });
    row("f32 (faer tiles)", t);
    let mut backends = vec![Backend::Portable];
    if amx::available() {
        backends.insert(0, Backend::Amx);
    }
    for backend in backends {
        let mut hb = HeadsBf16::new(backend);
        let t = timed(rounds, || {
            hb.begin(&x, b, h, g, true);
            for (k, wk) in w.iter().enumerate() {
                hb.forward(k, &mut y, wk, true);
            }
            for (k, dk) in d.iter().enumerate() {
                hb.backward(k, &mut dw, &mut dx, dk, k == 1);
            }
        });
        row(&format!("bf16 {backend:?}, conversions included"), t);
        let t = timed(rounds, || {
            hb.begin(&x, b, h, g, true);
            for (k, wk) in w.iter().enumerate() {
                hb.forward(k, &mut y, wk, true);
            }
        });
        row(
            &format!("  bf16 {backend:?}, the two forward products (with W's conversions)"),
            t,
        );
    }
    if amx::available() && threads == 1 {
        // The conversions alone, per step (two heads): W into both of its layouts (forward and
        // dx), then d into both of its layouts (dW and dx); x is converted once per pass besides.
        let mut buf = vec![half::bf16::ZERO; 2 * g.div_ceil(32) * 512 * 8];
        let (kg, kh, kb) = (g.div_ceil(32), h.div_ceil(32), b.div_ceil(32));
        let transposed = |pairs_along_rows| Packing::Transposed { pairs_along_rows };
        // (name, source, rows, cols, [(packing, outer tiles, inner tiles)]).
        let groups = [
            (
                "W",
                &w,
                g,
                h,
                [
                    (transposed(false), 2 * kg, kh),
                    (Packing::BRows, kg, 2 * kh),
                ],
            ),
            (
                "d",
                &d,
                b,
                g,
                [(transposed(true), 2 * kg, kb), (Packing::A, 2 * kb, kg)],
            ),
        ];
        for (name, m, rows, cols, packings) in groups {
            let t = timed(rounds, || {
                for mk in m.iter() {
                    let src = Src {
                        data: mk,
                        rows,
                        cols,
                        ld: cols,
                    };
                    for (p, outer, inner) in packings {
                        pack(&mut buf, true, src, p, (0..outer, 0..inner), |i, t| {
                            i * inner + t
                        });
                    }
                }
            });
            println!(
                "| conversions: both heads' {name} into both layouts | {:.3} | {:.3} | |",
                t.0 * 1e3,
                t.1 * 1e3
            );
        }
    }
}
