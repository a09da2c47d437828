//! Criterion benches of the CPU engine on the Kang data (or simulated data of its shape): the whole
//! training step and each fused stage, one 128-cell minibatch at a time, with scvi-tools' default
//! model. `cargo bench --bench cpu_step`; the thread count is rayon's (`RAYON_NUM_THREADS`).
//! `benches/cpu_floor.rs` puts the same stages next to the FLOP count and the GEMM floor.

mod common;

use common::{shape, uniform, BareStep, OutputStage, BATCH_SIZE};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scvi_rs::cpu::adam::Adam;
use scvi_rs::cpu::gemm::{linear_dgrad, linear_fwd, linear_wgrad};
use scvi_rs::cpu::sparse::{
    sparse_log1p_linear_backward, sparse_log1p_linear_forward, SparseInput, SparseScratch,
};
use scvi_rs::cpu::CpuTrainer;
use scvi_rs::engine::{AdamConfig, Engine};
use scvi_rs::model::init::ModelState;
use scvi_rs::model::Layout;
use std::time::Duration;

fn benches(c: &mut Criterion) {
    let bd = common::load();
    let mbs = bd.minibatches(8);
    let cfg = bd.config();
    let (b, g, h) = (BATCH_SIZE, cfg.n_input, cfg.n_hidden);
    let layout = Layout::new(&cfg);
    let state = ModelState::<f32>::init(layout.clone(), 0);

    let mut step = c.benchmark_group("step");
    step.throughput(Throughput::Elements(b as u64));
    let mut trainer = CpuTrainer::new(state.clone(), AdamConfig::default(), 0);
    for (name, train) in [
        ("train_step (forward_backward + Adam)", true),
        ("validation forward (eval_loss)", false),
    ] {
        let mut k = 0u64;
        step.bench_function(name, |bench| {
            bench.iter(|| {
                let mb = &mbs[k as usize % mbs.len()];
                let parts = if train {
                    trainer.train_step(mb, k, 0.5)
                } else {
                    trainer.eval_loss(mb, k, 0.5)
                };
                parts.unwrap();
                k += 1;
            })
        });
    }
    let mut bare = BareStep::new(state.clone(), 0);
    let mut k = 0u64;
    step.bench_function("forward_backward", |bench| {
        bench.iter(|| {
            bare.run(&mbs[k as usize % mbs.len()], k);
            k += 1;
        })
    });
    step.finish();

    let mut stage = c.benchmark_group("stage");
    stage.throughput(Throughput::Elements(b as u64));
    // The fused decoder output.
    let mut out = OutputStage::new(&mbs, b, g);
    for (name, grads) in [
        ("output: softmax + ZINB + gradients", true),
        ("output: forward only", false),
    ] {
        let mut k = 0;
        stage.bench_function(name, |bench| {
            bench.iter(|| {
                out.run(&mbs, k % mbs.len(), grads);
                k += 1;
            })
        });
    }
    // The sparse first layer.
    let w1 = uniform(h * g, 11, -0.05, 0.05);
    let b1 = uniform(h, 12, -0.05, 0.05);
    let d = uniform(b * h, 16, -1e-3, 1e-3);
    let mut y = vec![0.0f32; b * h];
    let (mut dw1, mut db1) = (vec![0.0f32; h * g], vec![0.0f32; h]);
    let mut input = SparseInput::<f32>::default();
    let mut scratch = SparseScratch::default();
    let mut k = 0;
    stage.bench_function("sparse first layer: log1p + forward", |bench| {
        bench.iter(|| {
            let mb = &mbs[k % mbs.len()];
            input.prepare(mb);
            sparse_log1p_linear_forward(&mut y, mb, &input, &w1, &b1, 0, h, &mut scratch);
            k += 1;
        })
    });
    let mut k = 0;
    stage.bench_function("sparse first layer: log1p + backward", |bench| {
        bench.iter(|| {
            let mb = &mbs[k % mbs.len()];
            input.prepare(mb);
            sparse_log1p_linear_backward(&mut dw1, &mut db1, &d, mb, &input, 0, h, &mut scratch);
            k += 1;
        })
    });
    // The three products of one output head (the GEMM library through the engine's tiling).
    let x = uniform(b * h, 1, -1.0, 1.0);
    let w = uniform(g * h, 2, -0.1, 0.1);
    let dd = uniform(b * g, 3, -1e-3, 1e-3);
    let mut yy = vec![0.0f32; b * g];
    let mut dw = vec![0.0f32; g * h];
    let mut dx = vec![0.0f32; b * h];
    stage.bench_function("GEMM head forward y = h W^T", |bench| {
        bench.iter(|| linear_fwd(&mut yy, &x, &w, shape(b, h, g), 0.0))
    });
    stage.bench_function("GEMM head dW += d^T h", |bench| {
        bench.iter(|| linear_wgrad(&mut dw, &dd, &x, shape(b, h, g)))
    });
    stage.bench_function("GEMM head dh = d W", |bench| {
        bench.iter(|| linear_dgrad(&mut dx, &dd, &w, shape(b, h, g), 0.0))
    });
    // Adam over the whole parameter buffer.
    let mut params = vec![0.01f32; layout.n_param_elems];
    let pgrads = uniform(layout.n_param_elems, 13, -1e-3, 1e-3);
    let mut adam = Adam::<f32>::new(AdamConfig::default(), &layout);
    stage.bench_function("Adam", |bench| {
        bench.iter(|| adam.update(&mut params, &pgrads))
    });
    stage.finish();
}

criterion_group! {
    name = cpu;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(cpu);
