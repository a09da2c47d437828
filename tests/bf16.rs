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
use scvi_rs::cpu::bf16::{pack, round_bf16, to_bf16, Packing, Src};
use scvi_rs::cpu::gemm_bf16::{Backend, HeadsBf16};

const U: f64 = 1.0 / 256.0;
const U32: f64 = 1.0 / 16_777_216.0;

/// Whether AMX runs here; where it does not, says that `test` is skipped and why.
fn amx_or_skip(test: &str) -> bool {
    let ok = amx::available();
    if !ok {
        let why = amx::unavailable_reason().unwrap_or_default();
        common::files::skip(&format!("{test}: {why}"));
    }
    ok
}

/// The backends this machine can run: the portable one always, AMX where it runs (else the AMX
/// part of `test` is skipped with a reason).
fn backends(test: &str) -> Vec<Backend> {
    let mut v = vec![Backend::Portable];
    if amx_or_skip(&format!("{test} (AMX part)")) {
        v.push(Backend::Amx);
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
    if !amx_or_skip("amx_is_reproducible_and_agrees_with_the_portable_path") {
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
    if !amx_or_skip("vector_packers_match_the_scalar_definition") {
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
                Box::new(move |d, s| {
                    pack(d, s, src, Packing::A, (0..r16, 0..c32), |i, t| i * c32 + t)
                }),
            ),
            (
                "b_rows",
                r32 * c16,
                Box::new(move |d, s| {
                    pack(d, s, src, Packing::BRows, (0..r32, 0..c16), |t, j| {
                        t * c16 + j
                    })
                }),
            ),
            (
                "transposed (pairs along rows)",
                c16 * r32,
                Box::new(move |d, s| {
                    let p = Packing::Transposed {
                        pairs_along_rows: true,
                    };
                    pack(d, s, src, p, (0..c16, 0..r32), |i, t| i * r32 + t)
                }),
            ),
            (
                "transposed (pairs along columns)",
                r16 * c32,
                Box::new(move |d, s| {
                    let p = Packing::Transposed {
                        pairs_along_rows: false,
                    };
                    pack(d, s, src, p, (0..r16, 0..c32), |i, t| i * c32 + t)
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

// --- The quality guard, one step --------------------------------------------------------------

/// Kang (when the shared data is present) or simulated counts of the same shape, with the batch
/// codes, the number of batches, the batch key and a description.
fn guard_data() -> (
    scvi_rs::data::Dataset,
    Vec<u32>,
    usize,
    &'static str,
    String,
) {
    use scvi_rs::data::simulate::{simulate, SimConfig};
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/kang_ifnb_hvg2k.h5ad");
    let (data, key, what) = if p.exists() {
        let d = scvi_rs::store::load_dataset(&p, None).unwrap();
        (d, "stim", "Kang (kang_ifnb_hvg2k.h5ad)".to_string())
    } else {
        let sim = SimConfig {
            n_cells: 2_000,
            n_genes: 2_000,
            n_batches: 2,
            ..SimConfig::default()
        };
        println!("(kang_ifnb_hvg2k.h5ad absent: simulated counts instead)");
        (
            simulate(&sim),
            "batch",
            "simulated 2,000 x 2,000".to_string(),
        )
    };
    let (codes, cats) = data.obs_column(key).unwrap().to_categorical(key).unwrap();
    (data, codes, cats.len(), key, what)
}

/// A fresh model of `data` with scvi-tools' defaults, batches from `key`.
fn guard_model(data: &scvi_rs::data::Dataset, key: &str, seed: u64) -> scvi_rs::Scvi {
    let setup = scvi_rs::Setup {
        batch_key: Some(key.into()),
        labels_key: None,
    };
    scvi_rs::Scvi::new(data, setup, scvi_rs::model::ModelConfig::default(), seed).unwrap()
}

/// The Euclidean norm.
fn norm(a: &[f32]) -> f64 {
    a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
}

/// `||a - b|| / ||b||` (Euclidean norms) and `||b||`.
fn rel(a: &[f32], b: &[f32]) -> (f64, f64) {
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let n: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (d.sqrt() / n.sqrt().max(1e-300), n.sqrt())
}

/// One training step (same weights, minibatch, noise and dropout) in f32 and in bf16, on a model
/// trained for a few f32 steps first; see the module's header for the bounds.
#[test]
fn one_step_in_bf16_stays_within_the_derived_bounds() {
    use scvi_rs::batch::Minibatch;
    use scvi_rs::cpu::engine::NoiseBuffers;
    use scvi_rs::cpu::{CpuEngine, CpuTrainer};
    use scvi_rs::engine::{AdamConfig, Engine, Mode};
    use scvi_rs::model::init::ModelState;
    use scvi_rs::model::{Layout, ModelConfig, Precision};
    use scvi_rs::rng::{Philox, Stream};

    let (data, codes, n_batch, _, what) = guard_data();
    let cfg = ModelConfig {
        n_input: data.n_genes(),
        n_batch,
        ..ModelConfig::default()
    };
    let layout = Layout::new(&cfg);
    let labels = vec![0u32; data.n_cells()];
    let perm = Philox::new(3).permutation(Stream::Shuffle, 0, data.n_cells());
    let batches: Vec<Minibatch> = perm
        .chunks(128)
        .take(41)
        .map(|c| {
            let mut mb = Minibatch::default();
            mb.gather(data.counts.as_ref(), c, &codes, &labels);
            mb
        })
        .collect();
    // Off the initial weights: 40 f32 steps.
    let mut tr = CpuTrainer::<f32>::new(
        ModelState::init(layout.clone(), 7),
        AdamConfig::default(),
        7,
    );
    for (k, mb) in batches[..40].iter().enumerate() {
        tr.train_step(mb, k as u64, 0.3).unwrap();
    }
    let mb = &batches[40];
    let (b, h, g) = (mb.len(), cfg.n_hidden, cfg.n_input);
    let rng = Philox::new(11);
    let mut noise = NoiseBuffers::<f32>::default();
    noise.draw(&rng, 5, b, cfg.n_latent);
    let run = |precision: Precision| {
        let mut state = tr.state.clone();
        let mut e = CpuEngine::<f32>::with_precision(layout.clone(), precision).unwrap();
        let mut grads = vec![0f32; layout.n_param_elems];
        let parts = e
            .forward_backward(
                &mut state,
                Some(&mut grads),
                mb,
                &noise.as_step(Some((rng, 5))),
                0.3,
                Mode::Train,
            )
            .unwrap();
        let (x, dr, dp) = e.head_io(b);
        (parts.loss, grads, x.to_vec(), dr.to_vec(), dp.to_vec())
    };
    let (l32, g32, x, d_rho, d_pi) = run(Precision::F32);
    let (l16, g16, x16, d_rho16, d_pi16) = run(Precision::Bf16);
    assert_eq!(
        x, x16,
        "the heads' input must not depend on the heads' precision"
    );
    let param = |name: &str| {
        let t = layout.params.iter().find(|t| t.name == name).unwrap();
        &tr.state.params[t.range()]
    };
    let w = [
        param("decoder.px_scale_decoder.0.weight"),
        param("decoder.px_dropout_decoder.weight"),
    ];
    let (d32, d16) = ([&d_rho, &d_pi], [&d_rho16, &d_pi16]);
    let gamma = |k: usize| 2.0 * U + U * U + (k as f64 - 1.0) * U32 * (1.0 + U).powi(2);

    // The loss: first order in the logits' errors, |dL| <= sum |dL/dlogit| |d logit|, with
    // |d logit_bg| <= gamma(H) sum_k |x_bk W_gk| (forward product bound); the second-order term
    // is below 1% of it at these sizes (the errors are ~1e-3 of the logits).
    let mut bound = 0.0f64;
    let mut typical = 0.0f64;
    for (head, dl) in d32.iter().enumerate() {
        for i in 0..b {
            for j in 0..g {
                let (mut abs, mut sq) = (0.0f64, 0.0f64);
                for k in 0..h {
                    let p = (x[i * h + k] * w[head][j * h + k]) as f64;
                    abs += p.abs();
                    sq += p * p;
                }
                let dlv = dl[i * g + j] as f64;
                bound += dlv.abs() * gamma(h) * abs;
                // Independent rounding errors of sd u/sqrt(3) on both factors.
                typical += (dlv * U * (2.0f64 / 3.0).sqrt()).powi(2) * sq;
            }
        }
    }
    let typical = typical.sqrt();
    let dl = (l16 - l32).abs();
    println!(
        "{what}: loss f32 {l32:.6} bf16 {l16:.6}: |diff| {dl:.3e}, first-order worst case \
         {bound:.3e}, typical (random rounding) {typical:.3e}"
    );
    assert!(
        dl <= 1.01 * bound,
        "loss difference {dl} above the bound {bound}"
    );
    assert!(
        dl <= 10.0 * typical,
        "loss difference {dl} far above the typical {typical}"
    );

    // The heads' weight gradients: dW = D^T x is linear in D, so with D' the bf16 run's upstream
    // gradient, dW' - dW = (D' - D)^T x + (rounding of D' and x, and f32 sums):
    // |dW' - dW| <= |D' - D|^T |x| + gamma(B) |D'|^T |x| + gamma32(B) |D|^T |x| per element.
    // The same for dx = sum_heads D W (checked below through its effect on the decoder layer).
    let names = [
        "decoder.px_scale_decoder.0.weight",
        "decoder.px_dropout_decoder.weight",
    ];
    for (head, name) in names.iter().enumerate() {
        let t = layout.params.iter().find(|t| t.name == *name).unwrap();
        let (a, e) = (&g16[t.range()], &g32[t.range()]);
        let (mut excess, mut worst) = (0.0f64, 0.0f64);
        for j in 0..g {
            for k in 0..h {
                let (mut dd, mut mag, mut mag32) = (0.0f64, 0.0f64, 0.0f64);
                for i in 0..b {
                    let xv = (x[i * h + k] as f64).abs();
                    dd += (d16[head][i * g + j] as f64 - d32[head][i * g + j] as f64).abs() * xv;
                    mag += (d16[head][i * g + j] as f64).abs() * xv;
                    mag32 += (d32[head][i * g + j] as f64).abs() * xv;
                }
                let bound = dd + gamma(b) * mag + 2.0 * b as f64 * U32 * mag32 + 1e-30;
                let err = (a[j * h + k] as f64 - e[j * h + k] as f64).abs();
                excess = excess.max(err / bound);
                worst = worst.max(err / mag32.max(1e-30));
            }
        }
        let (r, _) = rel(a, e);
        println!(
            "  {name}: |g16 - g32| / |g32| = {r:.2e}; worst element error / its bound = \
             {excess:.2}; worst element error / sum|D||x| = {worst:.2e}"
        );
        assert!(
            excess <= 1.0,
            "{name}: an element above its bound ({excess})"
        );
    }

    // Every other tensor's gradient is the image of the heads' input gradient dx = sum D W under
    // the (f32, identical) backward pass above the heads, so each of its terms carries the
    // relative error of one product of bf16-rounded factors, 2u + u^2, plus D's own change (the
    // heads' rows above show |D' - D| contributes less than the rounding). Summed without
    // cancellation that is at most 2u (+ u^2) of the gradient: the guard. Linear biases that
    // feed a BatchNorm have an exact gradient of zero, so what both runs compute there is f32
    // rounding, ~u32 of the layer's weight gradient: for those, both must stay at that level.
    let mut rows: Vec<(String, f64, f64)> = layout
        .params
        .iter()
        .filter(|t| t.trainable)
        .map(|t| {
            let (r, n) = rel(&g16[t.range()], &g32[t.range()]);
            (t.name.clone(), r, n)
        })
        .collect();
    rows.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    for (name, r, n) in &rows {
        let pure_rounding =
            cfg.use_batch_norm.encoder() && name.ends_with(".0.bias") && name.contains("fc_layers");
        if pure_rounding {
            let wname = name.replace(".0.bias", ".0.weight");
            let wt = layout.params.iter().find(|t| t.name == wname).unwrap();
            let wn = norm(&g32[wt.range()]);
            let bt = layout.params.iter().find(|t| &t.name == name).unwrap();
            let n16 = norm(&g16[bt.range()]);
            println!("  {name}: exact gradient 0; |g32| = {n:.2e}, |g16| = {n16:.2e} ({:.1} and {:.1} u32 of |{wname}|)", n / wn / U32, n16 / wn / U32);
            assert!(n.max(n16) <= 64.0 * U32 * wn, "{name}: above f32 rounding");
        } else {
            println!("  {name}: |g16 - g32| / |g32| = {r:.2e} (|g32| = {n:.2e})");
            assert!(
                *r <= 2.0 * U + U * U,
                "{name}: relative gradient difference {r:.2e} above 2u"
            );
        }
    }
}

/// Two epochs of training on Kang: bit-reproducibility within each precision (the same seed and
/// threads give the same model twice; bf16 also on 1 and 2 threads, as its products are tiled by
/// the shapes alone), a bf16 validation ELBO within 0.5 nats per cell of the f32 run's (the
/// f32 model's spread between seeds is larger, BENCHMARKS.md; scripts/bench/bf16_guard.py is the
/// full 20-epoch guard), and the precision saved in model.json and read back.
#[test]
fn training_is_reproducible_within_a_precision_and_bf16_tracks_f32() {
    use scvi_rs::model::Precision;
    use scvi_rs::train::TrainConfig;
    use scvi_rs::{Device, Scvi};

    let (data, _, _, key, what) = guard_data();
    let train = |precision: Precision, threads: usize| {
        let mut m = guard_model(&data, key, 4);
        let cfg = TrainConfig {
            max_epochs: Some(2),
            seed: 4,
            precision,
            ..TrainConfig::default()
        };
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| m.train(&data, &cfg, Device::Cpu, &mut |_, _| {}))
            .unwrap();
        m
    };
    let bits = |m: &Scvi| -> Vec<u32> { m.state.params.iter().map(|x| x.to_bits()).collect() };
    let elbo = |m: &Scvi| m.history.epochs.last().unwrap().elbo_validation.unwrap();
    let b2 = train(Precision::Bf16, 2);
    let b2_again = train(Precision::Bf16, 2);
    let b1 = train(Precision::Bf16, 1);
    let f2 = train(Precision::F32, 2);
    let f2_again = train(Precision::F32, 2);
    let name = b2.meta.engine.clone().unwrap_or_default();
    let (e16, e16_1, e32) = (elbo(&b2), elbo(&b1), elbo(&f2));
    println!(
        "{what}: engine '{name}'; validation ELBO after 2 epochs: bf16 {e16:.4} (1 thread \
         {e16_1:.4}), f32 {e32:.4}"
    );
    assert!(
        name.contains("bf16"),
        "the engine does not say bf16: {name}"
    );
    assert!(
        bits(&b2) == bits(&b2_again),
        "bf16: the same seed and threads gave two models"
    );
    assert!(
        bits(&b2) == bits(&b1),
        "bf16 training differs between 1 and 2 threads"
    );
    assert!(
        bits(&f2) == bits(&f2_again),
        "f32: the same seed and threads gave two models"
    );
    assert!(
        bits(&b2) != bits(&f2),
        "bf16 and f32 gave the same model: the bf16 products did not run"
    );
    assert!((e16 - e32).abs() < 0.5, "bf16 {e16} vs f32 {e32}");

    // The precision travels with the model: model.json says it, and a loaded model knows it.
    let dir = common::files::tmpdir("bf16", "model").join("m");
    b2.save(&dir, false).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("model.json")).unwrap()).unwrap();
    assert_eq!(
        json["train"]["precision"], "bf16",
        "model.json does not record the precision"
    );
    let back = Scvi::load(&dir).unwrap();
    assert_eq!(back.meta.train.unwrap().precision, Precision::Bf16);
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

/// bf16 on a GPU is refused with a message that names the flag and what to do, before any GPU is
/// touched (the GPU's bf16 products are not written yet).
#[test]
fn bf16_on_cuda_is_refused_clearly() {
    use scvi_rs::engine::AdamConfig;
    use scvi_rs::model::Precision;
    use scvi_rs::Device;

    let (data, _, _, key, _) = guard_data();
    let m = guard_model(&data, key, 0);
    let err = match m.engine_in(Device::Cuda(0), 0, AdamConfig::default(), Precision::Bf16) {
        Ok(_) => panic!("bf16 on cuda was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("--precision bf16") && err.contains("--precision f32"),
        "unclear message: {err}"
    );
}

/// The command line: `--precision bf16` trains, says how its products run, and is recorded in
/// model.json; bf16 on CUDA and an unknown precision fail with a message naming the flag, leaving
/// no model behind.
#[test]
fn cli_precision_flag() {
    let dir = common::files::tmpdir("bf16", "cli");
    let data = common::files::fixture("cli", "small.h5ad");
    let run = |out: &str, extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_scvi-rs"))
            .args([
                "train",
                data.to_str().unwrap(),
                "--batch-key",
                "stim",
                "--quiet",
            ])
            .args([
                "--max-epochs",
                "1",
                "--out",
                dir.join(out).to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run("m", &["--precision", "bf16"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "bf16 training failed:\n{err}");
    assert!(
        err.contains("precision bf16: bf16 head products"),
        "the log does not say how the bf16 products run:\n{err}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("m/model.json")).unwrap()).unwrap();
    assert_eq!(json["train"]["precision"], "bf16");
    for (extra, needle) in [
        (
            &["--precision", "bf16", "--device", "cuda"][..],
            "--precision bf16",
        ),
        (&["--precision", "fp8"][..], "--precision"),
    ] {
        let o = run("bad", extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra:?} succeeded");
        assert!(
            err.contains(needle),
            "{extra:?}: message lacks '{needle}':\n{err}"
        );
        assert!(!err.contains("panicked"), "{extra:?} panicked:\n{err}");
        assert!(!dir.join("bad").exists(), "{extra:?} left a model behind");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
