//! Criterion benches of the CUDA engine's training step on the benchmark data (the Kang file, or
//! simulated counts of its shape: see `common`), with scvi-tools' default model, at minibatches of
//! 128 (scvi-tools' default), 512 and 1024 cells. Where no GPU can run the engine (no driver, no
//! NVRTC or cuBLAS, no device) it prints why and measures nothing; with `SCVI_RS_REQUIRE_GPU=1` it
//! fails instead. `cargo bench --bench gpu_step`.

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scvi_rs::batch::Minibatch;
use scvi_rs::engine::AdamConfig;
use scvi_rs::model::init::ModelState;
use scvi_rs::model::Layout;
use scvi_rs::rng::{Philox, Stream};

/// `n` minibatches of `size` cells, drawn as one shuffled epoch draws them.
fn minibatches(bd: &common::BenchData, size: usize, n: usize) -> Vec<Minibatch> {
    let cells = bd.data.n_cells();
    let perm = Philox::new(0).permutation(Stream::Shuffle, 0, cells);
    let labels = vec![0u32; cells];
    perm.chunks(size)
        .filter(|c| c.len() == size)
        .take(n)
        .map(|c| {
            let mut mb = Minibatch::default();
            mb.gather(bd.data.counts.as_ref(), c, &bd.batch_codes, &labels);
            mb
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let bd = common::load();
    let cfg = bd.config();
    let state = ModelState::<f32>::init(Layout::new(&cfg), 0);
    let mut engine = match scvi_rs::cuda::engine(&state, 0, 0, AdamConfig::default()) {
        Ok(e) => e,
        Err(e) => {
            if std::env::var("SCVI_RS_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("SCVI_RS_REQUIRE_GPU=1 but the GPU engine cannot run: {e}");
            }
            println!("skipped: gpu_step measures nothing here: {e}");
            return;
        }
    };
    println!("gpu_step bench: {} on {}", bd.what, engine.name());
    let mut group = c.benchmark_group("gpu step");
    for size in [128usize, 512, 1024] {
        let mbs = minibatches(&bd, size, 8);
        group.throughput(Throughput::Elements(size as u64));
        let mut k = 0u64;
        group.bench_function(format!("train_step, {size} cells"), |b| {
            b.iter(|| {
                let mb = &mbs[k as usize % mbs.len()];
                engine.train_step(mb, k, 0.5).expect("train step");
                k += 1;
            })
        });
    }
    group.finish();
}

criterion_group!(gpu_step, benches);
criterion_main!(gpu_step);
