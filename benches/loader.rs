//! Criterion benches of the data path a training epoch runs on: reading the whole `.h5ad` into
//! memory (`store::load_dataset`), and gathering one shuffled epoch of 128-cell minibatches on the
//! prefetch thread (`train::for_each_minibatch`) from that in-memory matrix and from a
//! memory-mapped store converted from the same file. The data is the Kang file when it is there
//! (`SCVI_RS_BENCH_DATA` names another .h5ad), else simulated counts of its shape written to a
//! temporary .h5ad first, so the reader is always exercised. `cargo bench --bench loader`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use scvi_rs::data::simulate::SimConfig;
use scvi_rs::data::SparseRows;
use scvi_rs::rng::{Philox, Stream};
use scvi_rs::store::convert::{convert, ConvertOptions};
use scvi_rs::store::{load_dataset, open_input, write_simulated, Store};
use scvi_rs::train::{for_each_minibatch, Covariates};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// scvi-tools' default minibatch size.
const BATCH_SIZE: usize = 128;

/// The `.h5ad` to read: `SCVI_RS_BENCH_DATA`, else the Kang file, else simulated counts of the
/// Kang shape written into `dir`.
fn h5ad_input(dir: &Path) -> PathBuf {
    let path = std::env::var("SCVI_RS_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/kang_ifnb_hvg2k.h5ad")
        });
    if path.exists() {
        return path;
    }
    let path = dir.join("simulated.h5ad");
    let sim = SimConfig {
        n_cells: 13_576,
        n_genes: 2_000,
        n_batches: 2,
        ..SimConfig::default()
    };
    write_simulated(&sim, &path, false).expect("write the simulated .h5ad");
    path
}

/// Gather one epoch of `x` in a shuffled order; the sum of the minibatch sizes (so nothing is
/// optimised away).
fn gather_epoch(x: &dyn SparseRows, order: &[usize], batch: &[u32], labels: &[u32]) -> usize {
    let cov = Covariates { batch, labels };
    let mut cells = 0;
    for_each_minibatch(x, &cov, order, BATCH_SIZE, |mb| {
        cells += mb.len();
        Ok(())
    })
    .expect("gather");
    cells
}

fn benches(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("scvi-rs-bench-loader.{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary folder");
    let h5ad = h5ad_input(&dir);
    let store_path = dir.join("bench.store");
    convert(
        &open_input(&h5ad, None).expect("open the .h5ad"),
        &store_path,
        &ConvertOptions::default(),
    )
    .expect("convert the .h5ad to a store");

    let data = load_dataset(&h5ad, None).expect("read the .h5ad");
    let n = data.n_cells();
    println!(
        "loader bench: {} ({n} cells x {} genes)",
        h5ad.display(),
        data.n_genes()
    );

    let mut read = c.benchmark_group("read");
    read.sample_size(10)
        .measurement_time(Duration::from_secs(10));
    read.bench_function("load_dataset (.h5ad into memory)", |b| {
        b.iter(|| load_dataset(&h5ad, None).expect("read").n_cells())
    });
    read.bench_function("Store::open (mapped)", |b| {
        b.iter(|| Store::open(&store_path).expect("open").n_cells())
    });
    read.finish();

    let order = Philox::new(0).permutation(Stream::Shuffle, 0, n);
    let zeros = vec![0u32; n];
    let store = Store::open(&store_path).expect("open the store");
    let mut epoch = c.benchmark_group("epoch gather");
    epoch
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    epoch.throughput(Throughput::Elements(n as u64));
    epoch.bench_function("in memory (from .h5ad)", |b| {
        b.iter(|| gather_epoch(data.counts.as_ref(), &order, &zeros, &zeros))
    });
    epoch.bench_function("memory-mapped store", |b| {
        b.iter(|| gather_epoch(store.matrix(), &order, &zeros, &zeros))
    });
    epoch.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(loader, benches);
criterion_main!(loader);
