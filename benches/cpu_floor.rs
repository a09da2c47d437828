//! How far the CPU training step is from this machine's floor (DESIGN.md section 4), in one run:
//!
//! 1. count the FLOPs of the dense products of one 128-cell step (scvi-tools' default model);
//! 2. time the GEMM library alone on exactly those shapes and layouts (and on a large square product,
//!    for the machine's GEMM peak);
//! 3. time each fused element-wise stage alone (the decoder output: softmax + ZINB + gradients; the
//!    sparse first layer; Adam);
//! 4. time the whole step (`forward_backward` + Adam, what `CpuTrainer::train_step` does) and the
//!    validation forward, and turn them into cells per second for a whole epoch.
//!
//! floor = GEMM alone + the element-wise stages alone; the step should be within 1.5x of it.
//! The bf16 mode (`--precision bf16`, issue 16) is timed beside it: its six head products, its
//! step, its floor (the same with the bf16 head products) and its allocations.
//! Run: `cargo bench --bench cpu_floor` (`SCVI_RS_BENCH_THREADS=1,2` picks the thread counts).
//! Minimum over rounds: the machine may be shared, and the minimum is the least disturbed figure.

mod common;

use common::{shape, uniform, BareStep, BenchData, OutputStage, BATCH_SIZE};
use scvi_rs::batch::Minibatch;
use scvi_rs::cpu::adam::Adam;
use scvi_rs::cpu::gemm::{gemm, MatRef};
use scvi_rs::cpu::gemm::{linear_dgrad, linear_fwd, linear_wgrad};
use scvi_rs::cpu::gemm_bf16::{Backend, HeadsBf16};
use scvi_rs::cpu::sparse::{
    sparse_log1p_linear_backward, sparse_log1p_linear_forward, SparseInput, SparseScratch,
};
use scvi_rs::cpu::{CpuEngine, CpuTrainer};
use scvi_rs::engine::{AdamConfig, Engine};
use scvi_rs::model::init::ModelState;
use scvi_rs::model::{Layout, Precision};

/// Counts heap allocations, to check that a warmed-up step makes none.
struct Counting;
static ALLOCS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
// SAFETY: defers to the system allocator; only counts.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.realloc(p, l, n) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

/// A timed item: `calls` calls of `f` per round.
struct Item<'a> {
    name: &'static str,
    flops: f64,
    calls: usize,
    f: Box<dyn FnMut() + 'a>,
    times: Vec<f64>,
}

fn item<'a>(name: &'static str, flops: f64, calls: usize, f: impl FnMut() + 'a) -> Item<'a> {
    Item {
        name,
        flops,
        calls,
        f: Box::new(f),
        times: Vec::new(),
    }
}

/// The timed items of a whole step in one precision (`names`): `CpuTrainer::train_step`, and the
/// engine's `forward_backward` alone, cycling through `mbs`.
fn step_items<'a>(
    names: [&'static str; 2],
    flops: f64,
    (trainer, bare): (&'a mut CpuTrainer<f32>, &'a mut BareStep<f32>),
    mbs: &'a [Minibatch],
) -> [Item<'a>; 2] {
    let (mut k, mut j) = (0usize, 0usize);
    [
        item(names[0], flops, 4, move || {
            trainer
                .train_step(&mbs[k % mbs.len()], k as u64, 0.5)
                .unwrap();
            k += 1;
        }),
        item(names[1], flops, 4, move || {
            bare.run(&mbs[j % mbs.len()], j as u64);
            j += 1;
        }),
    ]
}

/// Heap allocations in 10 warmed-up `forward_backward` steps (3 to warm up).
fn allocations_per_10_steps(bare: &mut BareStep<f32>, mbs: &[Minibatch]) -> usize {
    let mut k = 1000u64;
    let mut one = |n: u64| {
        for _ in 0..n {
            bare.run(&mbs[k as usize % mbs.len()], k);
            k += 1;
        }
    };
    one(3);
    let before = ALLOCS.load(std::sync::atomic::Ordering::Relaxed);
    one(10);
    ALLOCS.load(std::sync::atomic::Ordering::Relaxed) - before
}

/// (min, median) of a list of seconds.
fn min_med(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2])
}

fn main() {
    let bd = common::load();
    let mbs = bd.minibatches(8);
    let cfg = bd.config();
    let (b, g, h, l) = (BATCH_SIZE, cfg.n_input, cfg.n_hidden, cfg.n_latent);
    let nnz = bd.mean_nnz_per_cell(&mbs);
    let n_cells = bd.data.n_cells();
    let n_train = (0.9 * n_cells as f64).ceil() as usize;
    let n_val = n_cells - n_train;
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<usize> = std::env::var("SCVI_RS_BENCH_THREADS")
        .ok()
        .map(|s| s.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            let mut v = vec![1, 2, all];
            v.sort();
            v.dedup();
            v
        });
    let rounds: usize = std::env::var("SCVI_RS_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    println!("data: {}", bd.what);
    println!(
        "model: scvi-tools defaults (ZINB, gene dispersion, H = {h}, L = {l}, 1 layer, dropout 0.1, \
         batch norm), B = {b}, {nnz:.1} non-zeros per cell; instruction set {:?}; {rounds} rounds, \
         every item timed once per round, interleaved",
        scvi_rs::cpu::simd::isa()
    );
    let (bf, gf, hf, lf) = (b as f64, g as f64, h as f64, l as f64);
    let heads = 12.0 * bf * hf * gf; // 2 heads x (forward, dW, dx) x 2 B H G
    let small = 18.0 * bf * hf * lf; // mean/var heads (12 B H L) + decoder layer (6 B H L)
    let sparse = 4.0 * bf * nnz * hf; // first layer on the non-zeros: forward and dW
    println!(
        "FLOPs per step: output heads 12 B H G = {:.1} M, small dense 18 B H L = {:.2} M, sparse \
         first layer 4 B nnz H = {:.2} M; total {:.1} M ({:.2} M per cell)",
        heads / 1e6,
        small / 1e6,
        sparse / 1e6,
        (heads + small + sparse) / 1e6,
        (heads + small + sparse) / bf / 1e6
    );
    f32_against_f64(&bd, &mbs[0]);
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap();
        pool.install(|| run(t, rounds, &bd, &mbs, n_train, n_val, heads, small, sparse));
    }
}

/// What the f32 engine (with the vectorised special functions) gives against the f64 engine (exact
/// ones) on a real minibatch with the same weights and noise: the loss, and per parameter tensor
/// `|g32 - g64| / |g64|` (norms). For scale, scvi-tools' own f32 and f64 modules differ by up to
/// 1.7e-5 on this measure (DESIGN.md, section 3).
fn f32_against_f64(bd: &BenchData, mb: &scvi_rs::batch::Minibatch) {
    let layout = Layout::new(&bd.config());
    let s64 = ModelState::<f64>::init(layout.clone(), 3);
    let s32: ModelState<f32> = s64.cast();
    let (mut e64, mut e32) = (BareStep::new(s64, 5), BareStep::new(s32, 5));
    let (p64, p32) = (e64.run(mb, 0), e32.run(mb, 0));
    let (g64, g32) = (&e64.grads, &e32.grads);
    let mut worst = (0.0f64, String::new());
    for t in layout.params.iter().filter(|t| t.trainable) {
        let (a, b) = (&g32[t.range()], &g64[t.range()]);
        let diff: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - y).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
        // Exact-zero gradients (a bias before a BatchNorm) are pure rounding: skip them.
        if norm > 1e-6 && diff / norm > worst.0 {
            worst = (diff / norm, t.name.clone());
        }
    }
    println!(
        "f32 engine vs f64 engine on a real minibatch: loss {:.9e} vs {:.9e} (rel {:.1e}); worst \
         parameter gradient |g32 - g64| / |g64| = {:.1e} ({})",
        p32.loss,
        p64.loss,
        ((p32.loss - p64.loss) / p64.loss).abs(),
        worst.0,
        worst.1
    );
}

#[allow(clippy::too_many_arguments)]
fn run(
    threads: usize,
    rounds: usize,
    bd: &BenchData,
    mbs: &[scvi_rs::batch::Minibatch],
    n_train: usize,
    n_val: usize,
    heads: f64,
    small: f64,
    sparse_flops: f64,
) {
    let cfg = bd.config();
    let (b, g, h, l) = (BATCH_SIZE, cfg.n_input, cfg.n_hidden, cfg.n_latent);
    let layout = Layout::new(&cfg);
    let state = ModelState::<f32>::init(layout.clone(), 0);
    let nm = mbs.len();

    // Operands of the GEMMs, at the engine's shapes and layouts.
    let x = uniform(b * h, 1, -1.0, 1.0); // h_d [B, H]
    let w = uniform(g * h, 2, -0.1, 0.1); // a head's weight [G, H]
    let d = uniform(b * g, 3, -1e-3, 1e-3); // a head's upstream gradient [B, G]
    let (mut y, mut dw, mut dx) = (vec![0f32; b * g], vec![0f32; g * h], vec![0f32; b * h]);
    let (mut y2, mut dw2, mut dx2) = (vec![0f32; b * g], vec![0f32; g * h], vec![0f32; b * h]);
    let (mut y3, mut dw3, mut dx3) = (vec![0f32; b * g], vec![0f32; g * h], vec![0f32; b * h]);
    let xl = uniform(b * l, 4, -1.0, 1.0);
    let wl = uniform(l * h, 5, -0.1, 0.1);
    let (mut yl, mut yh, mut wlg) = (vec![0f32; b * l], vec![0f32; b * h], vec![0f32; l * h]);
    let n = 1024;
    let (pa, pb, mut pc) = (
        uniform(n * n, 6, -1.0, 1.0),
        uniform(n * n, 7, -1.0, 1.0),
        vec![0f32; n * n],
    );
    // The output kernel's inputs (one set per timed item).
    let (mut out1, mut out2, mut out3) = (
        OutputStage::new(mbs, b, g),
        OutputStage::new(mbs, b, g),
        OutputStage::new(mbs, b, g),
    );
    // The sparse layer's inputs.
    let w1 = uniform(h * g, 11, -0.05, 0.05);
    let b1 = uniform(h, 12, -0.05, 0.05);
    let (mut ys, mut dw1, mut db1) = (vec![0f32; b * h], vec![0f32; h * g], vec![0f32; h]);
    let inputs: Vec<SparseInput<f32>> = mbs
        .iter()
        .map(|m| {
            let mut i = SparseInput::default();
            i.prepare(m);
            i
        })
        .collect();
    let mut prep = SparseInput::<f32>::default();
    let (mut sc1, mut sc2) = (SparseScratch::default(), SparseScratch::default());
    // Adam alone.
    let mut params = vec![0.01f32; layout.n_param_elems];
    let pgrads = uniform(layout.n_param_elems, 13, -1e-3, 1e-3);
    let mut adam = Adam::<f32>::new(AdamConfig::default(), &layout);
    // The whole step.
    let mut trainer = CpuTrainer::new(state.clone(), AdamConfig::default(), 0);
    let mut trainer_eval = CpuTrainer::new(state.clone(), AdamConfig::default(), 0);
    let mut bare = BareStep::new(state.clone(), 0);
    // The same in `--precision bf16` (AMX where this process can use it, else the portable path).
    let backend = Backend::detect();
    let mut hb = HeadsBf16::new(backend);
    let mut trainer16 =
        CpuTrainer::with_precision(state.clone(), AdamConfig::default(), 0, Precision::Bf16)
            .unwrap();
    let mut bare16 = BareStep::new(state.clone(), 0);
    bare16.engine = CpuEngine::with_precision(layout.clone(), Precision::Bf16).unwrap();
    // The step by hand, in parts.
    let mut bare2 = BareStep::new(state.clone(), 0);
    let mut adam2 = Adam::<f32>::new(AdamConfig::default(), &layout);
    let parts = std::cell::RefCell::new([vec![], vec![], vec![], vec![]]);

    let one_head = heads / 6.0;
    let (mut k1, mut k2, mut k3, mut k4, mut k5, mut k8) = (0usize, 0, 0, 0, 0, 0);
    let (mut y4, mut dw4, mut dx4) = (vec![0f32; b * g], vec![0f32; g * h], vec![0f32; b * h]);
    let mut items = vec![
        item("GEMM y = h W^T  [B,H]x[H,G]", one_head, 4, || {
            linear_fwd(&mut y, &x, &w, shape(b, h, g), 0.0)
        }),
        item("GEMM dW += d^T h [G,B]x[B,H]", one_head, 4, || {
            linear_wgrad(&mut dw, &d, &x, shape(b, h, g))
        }),
        item("GEMM dh = d W   [B,G]x[G,H]", one_head, 4, || {
            linear_dgrad(&mut dx, &d, &w, shape(b, h, g), 0.0)
        }),
        item("GEMM six head products in a row", heads, 1, || {
            for _ in 0..2 {
                linear_fwd(&mut y2, &x, &w, shape(b, h, g), 0.0);
                linear_wgrad(&mut dw2, &d, &x, shape(b, h, g));
                linear_dgrad(&mut dx2, &d, &w, shape(b, h, g), 0.0);
            }
        }),
        item("GEMM small products (L = 10)", small, 8, || {
            for _ in 0..2 {
                linear_fwd(&mut yl, &x, &wl, shape(b, h, l), 0.0);
                linear_wgrad(&mut wlg, &yl, &x, shape(b, h, l));
                linear_dgrad(&mut yh, &yl, &wl, shape(b, h, l), 0.0);
            }
            linear_fwd(&mut yh, &xl, &wl, shape(b, l, h), 0.0);
            linear_wgrad(&mut wlg, &yh, &xl, shape(b, l, h));
            linear_dgrad(&mut yl, &yh, &wlg, shape(b, l, h), 0.0);
        }),
        item(
            "GEMM 1024^3 (the library's peak)",
            2.0 * (n as f64).powi(3),
            1,
            || {
                gemm(
                    n,
                    n,
                    n,
                    MatRef::rows(&pa, n),
                    MatRef::rows(&pb, n),
                    0.0,
                    &mut pc,
                    n,
                )
            },
        ),
        item(
            "  copy of the two input planes (subtracted below)",
            0.0,
            4,
            || out1.reset(),
        ),
        item("output: softmax + ZINB + gradients (fused)", 0.0, 4, || {
            out2.run(mbs, k1 % nm, true);
            k1 += 1;
        }),
        item("output, forward only (validation)", 0.0, 4, || {
            out3.run(mbs, k2 % nm, false);
            k2 += 1;
        }),
        item("sparse input: log1p of the counts", 0.0, 4, || {
            prep.prepare(&mbs[k3 % nm]);
            k3 += 1;
        }),
        item("sparse first layer, forward", sparse_flops / 2.0, 4, || {
            let i = k4 % nm;
            sparse_log1p_linear_forward(&mut ys, &mbs[i], &inputs[i], &w1, &b1, 0, h, &mut sc1);
            k4 += 1;
        }),
        item(
            "sparse first layer, backward (dW)",
            sparse_flops / 2.0,
            4,
            || {
                let i = k5 % nm;
                sparse_log1p_linear_backward(
                    &mut dw1, &mut db1, &dx3, &mbs[i], &inputs[i], 0, h, &mut sc2,
                );
                k5 += 1;
            },
        ),
        item("Adam over the whole parameter buffer", 0.0, 4, || {
            adam.update(&mut params, &pgrads)
        }),
        item(
            "bf16: six head products (conversions included)",
            heads,
            1,
            || {
                hb.begin(&x, b, h, g, true);
                for k in 0..2 {
                    hb.forward(k, &mut y4, &w, true);
                }
                for k in 0..2 {
                    hb.backward(k, &mut dw4, &mut dx4, &d, k == 1);
                }
            },
        ),
        item("validation forward (CpuTrainer::eval_loss)", 0.0, 4, || {
            trainer_eval
                .eval_loss(&mbs[k8 % nm], k8 as u64, 0.5)
                .unwrap();
            k8 += 1;
        }),
        item("  (the step in parts, below)", 0.0, 4, {
            let mut k = 0u64;
            let parts = &parts;
            move || {
                let mb = &mbs[k as usize % nm];
                let t0 = std::time::Instant::now();
                bare2.draw(mb, k);
                let t1 = std::time::Instant::now();
                bare2.grads.iter_mut().for_each(|g| *g = 0.0);
                let t2 = std::time::Instant::now();
                bare2.pass(mb, k);
                let t3 = std::time::Instant::now();
                adam2.update(&mut bare2.state.params, &bare2.grads);
                let t4 = std::time::Instant::now();
                let mut p = parts.borrow_mut();
                for (v, (a, b)) in p.iter_mut().zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)]) {
                    v.push((b - a).as_secs_f64());
                }
                k += 1;
            }
        }),
    ];

    let step_flops = heads + small + sparse_flops;
    let steps = [
        (
            [
                "train step (CpuTrainer::train_step)",
                "  forward_backward alone",
            ],
            &mut trainer,
            &mut bare,
        ),
        (
            [
                "bf16: train step (CpuTrainer::train_step)",
                "bf16:   forward_backward alone",
            ],
            &mut trainer16,
            &mut bare16,
        ),
    ];
    for (names, tr, bs) in steps {
        items.extend(step_items(names, step_flops, (tr, bs), mbs));
    }

    // Warm up, then interleaved rounds.
    for it in items.iter_mut() {
        for _ in 0..it.calls {
            (it.f)();
        }
    }
    parts.borrow_mut().iter_mut().for_each(|v| v.clear());
    for _ in 0..rounds {
        for it in items.iter_mut() {
            let t = std::time::Instant::now();
            for _ in 0..it.calls {
                (it.f)();
            }
            it.times.push(t.elapsed().as_secs_f64() / it.calls as f64);
        }
    }
    let mut res: Vec<(&'static str, f64, (f64, f64))> = items
        .iter_mut()
        .map(|it| (it.name, it.flops, min_med(&mut it.times)))
        .collect();
    drop(items);
    let get = |res: &[(&str, f64, (f64, f64))], name: &str| {
        res.iter().find(|r| r.0.starts_with(name)).unwrap().2
    };
    // Subtract the plane copies from the output kernel's times.
    let copy = get(&res, "  copy");
    for r in res.iter_mut().filter(|r| r.0.starts_with("output")) {
        r.2 = (r.2 .0 - copy.0, r.2 .1 - copy.1);
    }
    res.retain(|r| !r.0.starts_with("  copy") && !r.0.starts_with("  (the step"));
    let mut p = parts.borrow_mut();
    for (name, v) in [
        "  step part: draw the noise",
        "  step part: zero the gradients",
        "  step part: forward_backward",
        "  step part: Adam",
    ]
    .into_iter()
    .zip(p.iter_mut())
    {
        res.push((name, 0.0, min_med(v)));
    }
    // Cold caches: the six head products with a 64 MB sweep before each group.
    let cold = {
        let mut sweep = vec![0u8; 64 << 20];
        let mut v: Vec<f64> = (0..rounds.min(10))
            .map(|_| {
                sweep
                    .iter_mut()
                    .step_by(64)
                    .for_each(|x| *x = x.wrapping_add(1));
                let t = std::time::Instant::now();
                for _ in 0..2 {
                    linear_fwd(&mut y3, &x, &w, shape(b, h, g), 0.0);
                    linear_wgrad(&mut dw3, &d, &x, shape(b, h, g));
                    linear_dgrad(&mut dx3, &d, &w, shape(b, h, g), 0.0);
                }
                t.elapsed().as_secs_f64()
            })
            .collect();
        min_med(&mut v)
    };
    res.insert(4, ("GEMM six head products, cold caches", heads, cold));
    // Allocations in warmed-up steps.
    let allocations = allocations_per_10_steps(&mut bare, mbs);
    let allocations16 = allocations_per_10_steps(&mut bare16, mbs);

    // --- Report -------------------------------------------------------------------------------------
    println!("\n### {threads} thread(s)\n");
    println!("| stage (one 128-cell step) | min ms | median ms | GFLOP/s (min) |");
    println!("|---|---:|---:|---:|");
    for (name, flops, (min, med)) in &res {
        let gf = if *flops > 0.0 {
            format!("{:.1}", flops / min / 1e9)
        } else {
            String::new()
        };
        println!("| {name} | {:.3} | {:.3} | {gf} |", min * 1e3, med * 1e3);
    }
    let gemm_heads = get(&res, "GEMM six head products in a row").0;
    let t_small = get(&res, "GEMM small").0;
    let t_out = get(&res, "output: softmax").0;
    let t_sparse =
        get(&res, "sparse first layer, forward").0 + get(&res, "sparse first layer, back").0;
    let t_prep = get(&res, "sparse input").0;
    let t_adam = get(&res, "Adam").0;
    let t_step = get(&res, "train step");
    let t_eval = get(&res, "validation forward");
    let elementwise = t_out + t_sparse + t_prep + t_adam;
    let floor = gemm_heads + t_small + elementwise;
    println!(
        "\nfloor = GEMM alone {:.3} ms (six head products {:.3} + small {:.3}) + element-wise alone \
         {:.3} ms (output {:.3}, sparse layer {:.3}, log1p {:.3}, Adam {:.3}) = {:.3} ms per step",
        (gemm_heads + t_small) * 1e3,
        gemm_heads * 1e3,
        t_small * 1e3,
        elementwise * 1e3,
        t_out * 1e3,
        t_sparse * 1e3,
        t_prep * 1e3,
        t_adam * 1e3,
        floor * 1e3
    );
    println!(
        "step {:.3} ms = {:.2}x the floor; output kernel {:.2} ns per gene-cell; heap allocations \
         in 10 warmed-up forward_backward steps: {allocations}",
        t_step.0 * 1e3,
        t_step.0 / floor,
        t_out / (b * g) as f64 * 1e9
    );
    // The bf16 floor: the same, with the six head products in bf16 (their conversions included).
    let heads16 = get(&res, "bf16: six head products").0;
    let floor16 = heads16 + t_small + elementwise;
    let step16 = get(&res, "bf16: train step");
    println!(
        "bf16 ({}): floor = six head products {:.3} ms + small GEMM {:.3} + element-wise {:.3} = \
         {:.3} ms per step; step {:.3} ms = {:.2}x the bf16 floor, {:.2}x faster than the f32 \
         step; heap allocations in 10 warmed-up bf16 forward_backward steps: {allocations16}",
        backend.describe(),
        heads16 * 1e3,
        t_small * 1e3,
        elementwise * 1e3,
        floor16 * 1e3,
        step16.0 * 1e3,
        step16.0 / floor16,
        t_step.0 / step16.0
    );
    let steps = n_train.div_ceil(b) as f64;
    let evals = n_val.div_ceil(b) as f64;
    let epoch = steps * t_step.0 + evals * t_eval.0;
    let epoch_med = steps * t_step.1 + evals * t_eval.1;
    println!(
        "epoch estimate ({n_train} training + {n_val} validation cells): {:.2} s best, {:.2} s \
         median = {:.0} cells/s best, {:.0} median (training cells per second, as history.csv \
         counts them)",
        epoch,
        epoch_med,
        n_train as f64 / epoch,
        n_train as f64 / epoch_med
    );
}
