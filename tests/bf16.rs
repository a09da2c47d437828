//! The bf16 head products (`--precision bf16`, src/cpu/gemm_bf16.rs) against exact references:
//! the conversion rule, the AVX-512 packers against their scalar definition, exact results on
//! inputs whose every sum is exact, the derived error bound on random inputs, agreement of the two
//! backends, and results independent of the thread count. The AMX tests skip with a printed reason
//! where AMX is not available; the portable backend runs everywhere.
//!
//! The bound. bf16 keeps 8 significant bits: rounding to nearest gives `bf16(a) = a (1 + e)` with
//! `|e| <= u = 2^-8`. The product of two bf16 values has at most 16 significant bits, so it is
//! exact in f32, and `bf16(a) bf16(b) = a b (1 + e1)(1 + e2)`, within `(2u + u^2) |a b|` of `a b`.
//! A sum of K such products accumulated in f32 (any order: recursive summation of K terms errs by
//! at most `(K - 1) u32 sum |terms|` to first order, `u32 = 2^-24`) therefore satisfies
//!
//! ```text
//! |computed - sum_k a_k b_k| <= (2u + u^2 + (K - 1) u32 (1 + u)^2) sum_k |a_k b_k|
//! ```
//!
//! (plus f32 underflow, irrelevant at these magnitudes). This is a worst case; with rounding
//! errors of random sign the typical error is about `u sqrt(2/3) sqrt(sum (a_k b_k)^2)`.

mod common;

use common::{seeded, Rng};
use half::bf16;
use scvi_rs::cpu::amx;
use scvi_rs::cpu::bf16::{pack_a, pack_b_rows, pack_transposed, round_bf16, to_bf16, Src};
use scvi_rs::cpu::gemm_bf16::{Backend, HeadsBf16};

const U: f64 = 1.0 / 256.0;
const U32: f64 = 1.0 / 16_777_216.0;

/// The backends this machine can run, each with a name; AMX is skipped with a reason.
fn backends(test: &str) -> Vec<Backend> {
    let mut v = vec![Backend::Portable];
    if amx::available() {
        v.push(Backend::Amx);
    } else {
        common::files::skip(&format!(
            "{test} (AMX part): {}",
            amx::unavailable_reason().unwrap_or_default()
        ));
    }
    v
}

/// One head's inputs: x `[b, h]`, W `[g, h]`, d `[b, g]`, and starting dW `[g, h]` / dx `[b, h]`.
struct Case {
    b: usize,
    h: usize,
    g: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    d: Vec<f32>,
    dw0: Vec<f32>,
    dx0: Vec<f32>,
}

impl Case {
    fn new(b: usize, h: usize, g: usize, mut draw: impl FnMut(usize) -> Vec<f32>) -> Case {
        Case {
            b,
            h,
            g,
            x: draw(b * h),
            w: draw(g * h),
            d: draw(b * g),
            dw0: draw(g * h),
            dx0: draw(b * h),
        }
    }

    /// (y, dW, dx) from `backend`, dx accumulated onto `dx0` when `accumulate`.
    fn run(&self, backend: Backend, accumulate: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (b, h, g) = (self.b, self.h, self.g);
        let mut hb = HeadsBf16::new(backend);
        let mut y = vec![f32::NAN; b * g];
        let mut dw = self.dw0.clone();
        let mut dx = if accumulate {
            self.dx0.clone()
        } else {
            vec![f32::NAN; b * h]
        };
        hb.begin(&self.x, b, h, g, true);
        hb.forward(1, &mut y, &self.w, true);
        hb.backward(1, &mut dw, &mut dx, &self.d, accumulate);
        (y, dw, dx)
    }

    /// The exact products of the bf16-rounded operands (`rounded`) or of the operands themselves,
    /// in f64, each with `sum_k |a_k b_k|` beside it: (y, |y|), (dW, |dW|), (dx, |dx|).
    #[allow(clippy::type_complexity)]
    fn exact(&self, rounded: bool, accumulate: bool) -> [(Vec<f64>, Vec<f64>); 3] {
        let (b, h, g) = (self.b, self.h, self.g);
        let r = |v: &[f32]| -> Vec<f64> {
            v.iter()
                .map(|&a| if rounded { round_bf16(a) } else { a } as f64)
                .collect()
        };
        let (x, w, d) = (r(&self.x), r(&self.w), r(&self.d));
        let mut y = (vec![0.0; b * g], vec![0.0; b * g]);
        for i in 0..b {
            for j in 0..g {
                for k in 0..h {
                    let p = x[i * h + k] * w[j * h + k];
                    y.0[i * g + j] += p;
                    y.1[i * g + j] += p.abs();
                }
            }
        }
        let abs = |v: &[f32]| -> Vec<f64> { v.iter().map(|a| a.abs() as f64).collect() };
        let mut dw = (f64s(&self.dw0), abs(&self.dw0));
        let mut dx = if accumulate {
            (f64s(&self.dx0), abs(&self.dx0))
        } else {
            (vec![0.0; b * h], vec![0.0; b * h])
        };
        for i in 0..b {
            for j in 0..g {
                let dv = d[i * g + j];
                for k in 0..h {
                    let p = dv * x[i * h + k];
                    dw.0[j * h + k] += p;
                    dw.1[j * h + k] += p.abs();
                    let q = dv * w[j * h + k];
                    dx.0[i * h + k] += q;
                    dx.1[i * h + k] += q.abs();
                }
            }
        }
        [y, dw, dx]
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

const SHAPES: [(usize, usize, usize); 5] = [
    (128, 128, 2000), // Kang's step
    (59, 128, 2000),  // its last training minibatch
    (7, 100, 333),    // every edge
    (130, 33, 70),
    (2, 1, 1),
];

/// Integers in [-4, 4] are bf16 values, their products and every partial sum at these sizes are
/// exact in f32 (|sum| < 2^24): both backends must return the exact products, bit for bit.
#[test]
fn products_are_exact_on_small_integers() {
    let (_, mut rng) = seeded("products_are_exact_on_small_integers");
    for backend in backends("products_are_exact_on_small_integers") {
        for &(b, h, g) in &SHAPES {
            let case = Case::new(b, h, g, |n| {
                (0..n).map(|_| rng.below(9) as f32 - 4.0).collect()
            });
            for accumulate in [false, true] {
                let got = case.run(backend, accumulate);
                let want = case.exact(false, accumulate);
                for (name, got, want) in [
                    ("y", &got.0, &want[0].0),
                    ("dW", &got.1, &want[1].0),
                    ("dx", &got.2, &want[2].0),
                ] {
                    for (i, (&a, &e)) in got.iter().zip(want).enumerate() {
                        assert_eq!(
                            a as f64, e,
                            "{backend:?} {b}x{h}x{g} accumulate {accumulate}: {name}[{i}]"
                        );
                    }
                }
            }
        }
    }
}

/// Random operands: every output within the derived bound of the exact product of the unrounded
/// f32 operands, and within the f32-accumulation part of it of the exact product of the rounded
/// ones (so the rounding happens once, where the module says).
#[test]
fn products_within_the_bf16_bound() {
    let (_, mut rng) = seeded("products_within_the_bf16_bound");
    for backend in backends("products_within_the_bf16_bound") {
        for &(b, h, g) in &SHAPES {
            let case = Case::new(b, h, g, |n| normals(&mut rng, n));
            let got = case.run(backend, true);
            let exact = case.exact(false, true);
            let rounded = case.exact(true, true);
            let ks = [h, b + 1, g + 1];
            let mut worst = [0.0f64; 3];
            for (p, got) in [&got.0, &got.1, &got.2].into_iter().enumerate() {
                let k = ks[p] as f64;
                let acc = (k - 1.0) * U32 * (1.0 + U).powi(2);
                for (i, &a) in got.iter().enumerate() {
                    let (e, mag) = (exact[p].0[i], exact[p].1[i]);
                    let bound = (2.0 * U + U * U + acc) * mag + 1e-30;
                    assert!(
                        (a as f64 - e).abs() <= bound,
                        "{backend:?} {b}x{h}x{g} product {p} [{i}]: {a} vs exact {e}, bound {bound}"
                    );
                    let (er, magr) = (rounded[p].0[i], rounded[p].1[i]);
                    assert!(
                        (a as f64 - er).abs() <= acc * magr + 1e-30,
                        "{backend:?} {b}x{h}x{g} product {p} [{i}]: {a} vs rounded-exact {er}"
                    );
                    worst[p] = worst[p].max((a as f64 - e).abs() / mag.max(1e-30));
                }
            }
            println!(
                "{backend:?} {b}x{h}x{g}: worst |err| / sum|ab|: y {:.2e}, dW {:.2e}, dx {:.2e} \
                 (bound {:.2e} + accumulation)",
                worst[0],
                worst[1],
                worst[2],
                2.0 * U + U * U
            );
        }
    }
}

/// Standard normal draws (Box-Muller), as f32.
fn normals(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (a, b) = (rng.uniform(), rng.uniform());
            ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
        })
        .collect()
}

/// The AMX products give the same bits on 1 and 3 threads (fixed tiles, k in order), and agree
/// with the portable backend to the f32-accumulation part of the bound.
#[test]
fn amx_is_reproducible_and_agrees_with_the_portable_path() {
    if !amx::available() {
        common::files::skip(&format!(
            "amx_is_reproducible_and_agrees_with_the_portable_path: {}",
            amx::unavailable_reason().unwrap_or_default()
        ));
        return;
    }
    let (_, mut rng) = seeded("amx_is_reproducible_and_agrees_with_the_portable_path");
    let case = Case::new(128, 128, 2000, |n| normals(&mut rng, n));
    let on = |threads: usize, backend: Backend| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| case.run(backend, true))
    };
    let one = on(1, Backend::Amx);
    let three = on(3, Backend::Amx);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(&one.0) == bits(&three.0),
        "y depends on the thread count"
    );
    assert!(
        bits(&one.1) == bits(&three.1),
        "dW depends on the thread count"
    );
    assert!(
        bits(&one.2) == bits(&three.2),
        "dx depends on the thread count"
    );
    let portable = on(2, Backend::Portable);
    let rounded = case.exact(true, true);
    for (p, (a, c)) in [
        (&one.0, &portable.0),
        (&one.1, &portable.1),
        (&one.2, &portable.2),
    ]
    .into_iter()
    .enumerate()
    {
        let k = [128.0, 129.0, 2001.0][p];
        for i in 0..a.len() {
            let tol = 2.0 * (k - 1.0) * U32 * 1.01 * rounded[p].1[i] + 1e-30;
            assert!(
                (a[i] as f64 - c[i] as f64).abs() <= tol,
                "product {p} [{i}]: AMX {} vs portable {}",
                a[i],
                c[i]
            );
        }
    }
}

/// Values that exercise the conversion: ties, subnormals, signed zeros, infinities, NaN, and
/// ordinary magnitudes.
fn awkward(rng: &mut Rng, n: usize) -> Vec<f32> {
    let special = [
        0.0f32,
        -0.0,
        1.0 + 1.0 / 256.0, // tie: stays 1.0
        1.0 + 3.0 / 256.0, // tie: rounds up to even
        -(1.0 + 1.0 / 256.0),
        1.0e-40, // subnormal: zero
        -1.0e-40,
        f32::MIN_POSITIVE,
        f32::MAX, // rounds to infinity
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        3.0e38,
        -1.5e-38,
    ];
    (0..n)
        .map(|i| {
            if i % 5 == 0 {
                special[rng.below(special.len())]
            } else {
                ((rng.uniform() - 0.5) * 10f64.powi(rng.below(12) as i32 - 6)) as f32
            }
        })
        .collect()
}

#[test]
fn conversion_rounds_to_nearest_even_with_subnormals_as_zero() {
    assert_eq!(to_bf16(1.0 + 1.0 / 256.0).to_f32(), 1.0);
    assert_eq!(to_bf16(1.0 + 3.0 / 256.0).to_f32(), 1.0 + 4.0 / 256.0);
    assert_eq!(to_bf16(1.0 + 1.5 / 256.0).to_f32(), 1.0 + 2.0 / 256.0);
    assert_eq!(to_bf16(1.0e-40).to_bits(), 0);
    assert_eq!(to_bf16(-1.0e-40).to_bits(), 0x8000);
    assert_eq!(to_bf16(f32::MAX).to_f32(), f32::INFINITY);
    assert!(to_bf16(f32::NAN).to_f32().is_nan());
    // Every rounding within u relative, on a sweep of normal floats.
    let mut x = f32::MIN_POSITIVE;
    while x < 1e38 {
        let r = round_bf16(x) as f64;
        assert!((r - x as f64).abs() <= U * x as f64, "{x} -> {r}");
        x *= 1.000_37;
    }
}

/// The AVX-512 packers write the same bits as the scalar definition, on every layout, with edges
/// and awkward values (AMX machines only: the packers' vector code runs where AMX does).
#[test]
fn vector_packers_match_the_scalar_definition() {
    if !amx::available() {
        common::files::skip(&format!(
            "vector_packers_match_the_scalar_definition: {}",
            amx::unavailable_reason().unwrap_or_default()
        ));
        return;
    }
    let (_, mut rng) = seeded("vector_packers_match_the_scalar_definition");
    for &(rows, cols) in &[(37usize, 71usize), (64, 32), (1, 1), (16, 200), (130, 5)] {
        let ld = cols + rng.below(3);
        let data = awkward(&mut rng, rows * ld);
        let src = Src {
            data: &data,
            rows,
            cols,
            ld,
        };
        let (r16, r32, c16, c32) = (
            rows.div_ceil(16),
            rows.div_ceil(32),
            cols.div_ceil(16),
            cols.div_ceil(32),
        );
        type Packer<'a> = Box<dyn Fn(&mut [bf16], bool) + 'a>;
        let packers: Vec<(&str, usize, Packer)> = vec![
            (
                "a",
                r16 * c32,
                Box::new(move |d, s| pack_a(d, s, src, 0..r16, 0..c32, |i, t| i * c32 + t)),
            ),
            (
                "b_rows",
                r32 * c16,
                Box::new(move |d, s| pack_b_rows(d, s, src, 0..r32, 0..c16, |t, j| t * c16 + j)),
            ),
            (
                "transposed (pairs along rows)",
                c16 * r32,
                Box::new(move |d, s| {
                    pack_transposed(d, s, src, true, 0..c16, 0..r32, |i, t| i * r32 + t)
                }),
            ),
            (
                "transposed (pairs along columns)",
                r16 * c32,
                Box::new(move |d, s| {
                    pack_transposed(d, s, src, false, 0..r16, 0..c32, |i, t| i * c32 + t)
                }),
            ),
        ];
        for (name, tiles, pack) in packers {
            let mut v = vec![bf16::from_bits(0x7777); tiles * 512];
            let mut s = vec![bf16::from_bits(0x1111); tiles * 512];
            pack(&mut v, true);
            pack(&mut s, false);
            for i in 0..v.len() {
                assert_eq!(
                    v[i].to_bits(),
                    s[i].to_bits(),
                    "{name} {rows}x{cols}: element {i} (tile {}, row {}, col {})",
                    i / 512,
                    i % 512 / 32,
                    i % 32
                );
            }
        }
    }
}
