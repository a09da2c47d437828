//! Issue 14's table: the GPU engine's training step at batch 128, 512 and 1024 on the Kang data
//! (or simulated counts of its shape; benches/common), with scvi-tools' default model, next to the
//! floor counted for that step on an H200 (docs/cuda.md, "The floor of a step").
//!
//! Per batch size and data path: the seconds of a training step (forward, backward, Adam), with
//! the minibatch uploaded from the host (`train_step`, as the trainer does today) or gathered on the
//! device from the data set held there (`hold_data`, `train_step_cells`), cells per second, the epoch
//! seconds this gives for 1M cells, the floor and the ratio to it, the device memory the engine
//! holds, and what one step asked of the device (`Gpu::counts`: launches, products,
//! synchronisations, bytes each way). The floor's arithmetic term uses the sgemm rate measured here
//! on a 4096^3 product (the engine's own path: cuBLAS sgemm, no TF32); the other ceilings are the
//! H200 figures of `H200` below.
//!
//! `cargo bench --bench gpu_step -- [--emulated] [--batch-sizes 128,512,1024] [--steps N]`.
//! `--emulated` runs the host emulation of the kernels (test builds only): no timing worth the
//! name, but the same counts, so the floor of each batch size can be counted on any machine.
//! The device kit (scripts/gpu/) runs this on the GPU machine; nothing here has run on a GPU yet.

mod common;

use scvi_rs::batch::Minibatch;
use scvi_rs::cuda::cublas::Sgemm;
use scvi_rs::cuda::{CudaEngine, Gpu};
use scvi_rs::engine::{AdamConfig, Engine};
use scvi_rs::model::init::ModelState;
use scvi_rs::model::Layout;
use std::time::Instant;

/// The ceilings of the floor: H200 leads (vendor datasheet and the measurements recorded for the
/// lent machine), each replaced by a measurement where this bench makes one.
struct Ceilings {
    /// f32 products, FLOP/s (datasheet: 67 TFLOP/s for the SXM part's plain f32).
    gemm: f64,
    /// Device memory, bytes/s (a device-to-device copy measured on the lent H200: 4.3 TB/s,
    /// bytes read plus bytes written).
    hbm: f64,
    /// f64 instructions/s: 132 SMs x 64 f64 lanes x 1.98 GHz (the clock seen under load there).
    f64_ops: f64,
    /// Seconds one dependent kernel costs at least when replayed from a CUDA graph (a lead).
    node: f64,
}

const H200: Ceilings = Ceilings {
    gemm: 67e12,
    hbm: 4.3e12,
    f64_ops: 132.0 * 64.0 * 1.98e9,
    node: 1.0e-6,
};

/// f64 operations per gene-cell pair in the fused output kernel's ZINB log-likelihood and its
/// gradient (two f64 logs, two softplus, three divisions, the arithmetic around them), and the
/// extra per non-zero count (a log, three lgamma, two digamma, a division): leads from the
/// operation counts of kernels/common.cuh `loglik_eval`, at ~25 operations per log or exp.
const F64_PER_PAIR: f64 = 200.0;
const F64_PER_NONZERO: f64 = 300.0;

/// The floor of one step, term by term (seconds). The terms belong to different kernels that run
/// one after another on one stream (the products, the output kernel, Adam and the sparse layer),
/// so they add.
struct Floor {
    arith: f64,
    special: f64,
    bytes: f64,
    launch: f64,
}

impl Floor {
    /// From what one step asked of the device (`c`), the minibatch (`b` cells, `nnz` non-zeros,
    /// `g` genes, `h` hidden units) and the number of parameters Adam updates.
    fn count(
        c: &scvi_rs::cuda::Counts,
        b: usize,
        nnz: usize,
        g: usize,
        h: usize,
        n_params: usize,
        ceil: &Ceilings,
    ) -> Floor {
        // The dense products, plus the sparse first layer: forward and weight gradient, 2 nnz H
        // each.
        let flops = c.gemm_flops as f64 + 4.0 * (nnz * h) as f64;
        let special = (b * g) as f64 * F64_PER_PAIR + nnz as f64 * F64_PER_NONZERO;
        // Each input read once and each output written once: the minibatch's CSR (index + value,
        // 8 bytes a non-zero) and Adam's parameters, first and second moments, read and written
        // (24 bytes a parameter; the gradients are intermediates).
        let bytes = 8.0 * nnz as f64 + 24.0 * n_params as f64;
        Floor {
            arith: flops / ceil.gemm,
            special: special / ceil.f64_ops,
            bytes: bytes / ceil.hbm,
            launch: (c.launches + c.gemms) as f64 * ceil.node,
        }
    }

    fn total(&self) -> f64 {
        self.arith + self.special + self.bytes + self.launch
    }
}

/// The sgemm rate of this device on a 4096^3 product of random values (FLOP/s): 3 warm-up
/// products, then the median of 5 rounds of 10.
fn sgemm_rate(gpu: &Gpu) -> scvi_rs::Result<f64> {
    const N: usize = 4096;
    let fill = common::uniform(N * N, 21, -1.0, 1.0);
    let a = gpu.alloc_f32(&fill, "sgemm A")?;
    let b = gpu.alloc_f32(&fill, "sgemm B")?;
    let c = gpu.alloc_f32(&fill, "sgemm C")?;
    let g = Sgemm {
        trans_a: false,
        trans_b: true,
        m: N,
        n: N,
        k: N,
        alpha: 1.0,
        a: a.ptr(),
        lda: N,
        b: b.ptr(),
        ldb: N,
        beta: 0.0,
        c: c.ptr(),
        ldc: N,
    };
    for _ in 0..3 {
        gpu.sgemm(&g)?;
    }
    gpu.sync()?;
    let mut t = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..10 {
            gpu.sgemm(&g)?;
        }
        gpu.sync()?;
        t.push(t0.elapsed().as_secs_f64() / 10.0);
    }
    t.sort_by(f64::total_cmp);
    Ok(2.0 * (N as f64).powi(3) / t[t.len() / 2])
}

struct Args {
    emulated: bool,
    sizes: Vec<usize>,
    steps: usize,
}

fn args() -> Args {
    let mut a = Args {
        emulated: false,
        sizes: vec![128, 512, 1024],
        steps: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(s) = it.next() {
        match s.as_str() {
            "--emulated" => a.emulated = true,
            "--batch-sizes" => {
                let v = it.next().expect("--batch-sizes needs a list, e.g. 128,512");
                a.sizes = v
                    .split(',')
                    .map(|x| x.parse().expect("--batch-sizes: whole numbers"))
                    .collect();
            }
            "--steps" => {
                a.steps = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--steps needs a whole number")
            }
            // cargo bench passes --bench; criterion-style filters are not used here.
            _ => {}
        }
    }
    a
}

fn open(emulated: bool) -> scvi_rs::Result<Gpu> {
    if emulated {
        Gpu::emulated()
    } else {
        Gpu::cuda(0)
    }
}

/// One row of the table.
struct Row {
    /// Whether the data set was held on the device (`hold_data`, `train_step_cells`).
    held: bool,
    b: usize,
    step_s: f64,
    floor: Floor,
    mib: f64,
    counts: scvi_rs::cuda::Counts,
}

/// The parameters Adam updates (the layout also holds tensors scvi-tools keeps but never trains,
/// such as the unused library encoder of an observed library size).
fn n_trainable(layout: &Layout) -> usize {
    layout
        .params
        .iter()
        .filter(|t| t.trainable)
        .map(|t| t.range().len())
        .sum()
}

fn run(
    bd: &common::BenchData,
    a: &Args,
    b: usize,
    held: bool,
    ceil: &Ceilings,
) -> scvi_rs::Result<Row> {
    let cfg = bd.config();
    let layout = Layout::new(&cfg);
    let state = ModelState::<f32>::init(layout.clone(), 0);
    let gpu = open(a.emulated)?;
    let (free0, _) = gpu.mem_info()?;
    let mut engine = CudaEngine::new(gpu, &state, 0, AdamConfig::default())?;
    let mbs: Vec<Minibatch> = bd.minibatches_of(8, b);
    let mut step = 0u64;
    let ids: Vec<Vec<u32>> = mbs
        .iter()
        .map(|m| m.cells.iter().map(|&c| c as u32).collect())
        .collect();
    if held {
        let labels = vec![0u32; bd.data.n_cells()];
        engine.hold_data(bd.data.counts.as_ref(), &bd.batch_codes, &labels)?;
    }
    let one = |engine: &mut CudaEngine, step: &mut u64| -> scvi_rs::Result<()> {
        let i = *step as usize % mbs.len();
        if held {
            engine.train_step_cells(&ids[i], *step, 1.0)?;
        } else {
            engine.train_step(&mbs[i], *step, 1.0)?;
        }
        *step += 1;
        Ok(())
    };
    // Warm-up: buffers sized, kernels loaded, cuBLAS planned.
    for _ in 0..2 {
        one(&mut engine, &mut step)?;
    }
    let nnz = mbs[step as usize % mbs.len()].indices.len();
    let before = engine.gpu().counts();
    one(&mut engine, &mut step)?;
    let counts = engine.gpu().counts().since(&before);
    engine.gpu().sync()?;
    let t0 = Instant::now();
    for _ in 0..a.steps {
        one(&mut engine, &mut step)?;
    }
    engine.gpu().sync()?;
    let step_s = t0.elapsed().as_secs_f64() / a.steps as f64;
    let (free1, _) = engine.gpu().mem_info()?;
    let floor = Floor::count(
        &counts,
        b,
        nnz,
        cfg.n_input,
        cfg.n_hidden,
        n_trainable(&layout),
        ceil,
    );
    Ok(Row {
        held,
        b,
        step_s,
        floor,
        mib: free0.saturating_sub(free1) as f64 / (1 << 20) as f64,
        counts,
    })
}

fn main() {
    let a = args();
    let bd = common::load();
    let layout = Layout::new(&bd.config());
    println!(
        "data: {}; default model: {} parameters, {} trained",
        bd.what,
        layout.n_param_elems,
        n_trainable(&layout)
    );
    let mut ceil = H200;
    if !a.emulated {
        match open(false).and_then(|g| {
            println!("device: {} ({})", g.info.name, g.arch());
            sgemm_rate(&g)
        }) {
            Ok(r) => {
                println!(
                    "sgemm 4096^3 (cuBLAS, f32, no TF32): {:.1} TFLOP/s measured",
                    r / 1e12
                );
                ceil.gemm = r;
            }
            Err(e) => {
                eprintln!("gpu_step: no GPU: {e}");
                std::process::exit(1);
            }
        }
    } else {
        println!("device: host emulation (timings say nothing about a GPU; the counts are exact)");
    }
    let mut rows = Vec::new();
    for &b in &a.sizes {
        for held in [false, true] {
            match run(&bd, &a, b, held, &ceil) {
                Ok(r) => rows.push(r),
                Err(e) => {
                    eprintln!("gpu_step: batch {b} (held on the device: {held}): {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    println!(
        "\nfloor terms per step (us): products at {:.1} TFLOP/s + f64 special functions + bytes at {:.1} TB/s + (launches + products) x {:.1} us",
        ceil.gemm / 1e12,
        ceil.hbm / 1e12,
        ceil.node * 1e6
    );
    println!(
        "| path | batch | ms/step | cells/s | epoch s, 1M cells | floor us (prod + f64 + bytes + launch) | ratio | GPU MiB | launches | products | syncs | bytes up / down |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        let f = &r.floor;
        let epoch = (1_000_000f64 / r.b as f64).ceil() * r.step_s;
        println!(
            "| {} | {} | {:.3} | {:.0} | {:.2} | {:.1} ({:.1} + {:.1} + {:.1} + {:.1}) | {:.1} | {:.0} | {} | {} | {} | {} / {} |",
            if r.held { "held on the device" } else { "host upload" },
            r.b,
            r.step_s * 1e3,
            r.b as f64 / r.step_s,
            epoch,
            f.total() * 1e6,
            f.arith * 1e6,
            f.special * 1e6,
            f.bytes * 1e6,
            f.launch * 1e6,
            r.step_s / f.total(),
            r.mib,
            r.counts.launches,
            r.counts.gemms,
            r.counts.syncs,
            r.counts.bytes_up,
            r.counts.bytes_down,
        );
    }
}
