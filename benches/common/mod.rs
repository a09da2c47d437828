//! Shared set-up of the CPU benchmarks: the Kang IFN-beta data (13,576 cells x 2,000 genes, batch key
//! `stim`) when it is there (`SCVI_RS_BENCH_DATA` names another .h5ad; its batch key
//! `SCVI_RS_BENCH_BATCH_KEY`), else simulated counts of the same shape, and real 128-cell
//! minibatches of it with scvi-tools' default model.

#![allow(dead_code)]

use scvi_rs::batch::Minibatch;
use scvi_rs::data::simulate::{simulate, SimConfig};
use scvi_rs::data::Dataset;
use scvi_rs::model::ModelConfig;
use scvi_rs::rng::{Philox, Stream};
use scvi_rs::store::load_dataset;
use std::path::PathBuf;
use std::time::Instant;

pub const BATCH_SIZE: usize = 128;

pub struct BenchData {
    pub data: Dataset,
    pub batch_codes: Vec<u32>,
    pub n_batch: usize,
    pub what: String,
}

pub fn load() -> BenchData {
    let path = std::env::var("SCVI_RS_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/kang_ifnb_hvg2k.h5ad")
        });
    let key = std::env::var("SCVI_RS_BENCH_BATCH_KEY").unwrap_or_else(|_| "stim".into());
    if path.exists() {
        let data = load_dataset(&path, None).expect("read the benchmark data");
        let (batch_codes, cats) = data
            .obs_column(&key)
            .and_then(|c| c.to_categorical(&key))
            .expect("batch key");
        let what = format!(
            "{} ({} cells x {} genes, batch key {key})",
            path.display(),
            data.n_cells(),
            data.n_genes()
        );
        return BenchData {
            data,
            batch_codes,
            n_batch: cats.len(),
            what,
        };
    }
    let sim = SimConfig {
        n_cells: 13_576,
        n_genes: 2_000,
        n_batches: 2,
        ..SimConfig::default()
    };
    let data = simulate(&sim);
    let (batch_codes, cats) = data
        .obs_column("batch")
        .and_then(|c| c.to_categorical("batch"))
        .unwrap();
    BenchData {
        data,
        batch_codes,
        n_batch: cats.len(),
        what: "simulated counts, 13,576 cells x 2,000 genes (the Kang file was not found)".into(),
    }
}

impl BenchData {
    /// scvi-tools' default model for this data.
    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            n_input: self.data.n_genes(),
            n_batch: self.n_batch,
            ..ModelConfig::default()
        }
    }

    /// `n` minibatches of `BATCH_SIZE` cells drawn as one shuffled epoch draws them.
    pub fn minibatches(&self, n: usize) -> Vec<Minibatch> {
        let perm = Philox::new(0).permutation(Stream::Shuffle, 0, self.data.n_cells());
        let labels = vec![0u32; self.data.n_cells()];
        perm.chunks(BATCH_SIZE)
            .take(n)
            .map(|cells| {
                let mut mb = Minibatch::default();
                mb.gather(self.data.counts.as_ref(), cells, &self.batch_codes, &labels);
                mb
            })
            .collect()
    }

    pub fn mean_nnz_per_cell(&self, mbs: &[Minibatch]) -> f64 {
        let nnz: usize = mbs.iter().map(|m| m.indices.len()).sum();
        let cells: usize = mbs.iter().map(|m| m.len()).sum();
        nnz as f64 / cells as f64
    }
}

/// Seconds per call of `f`: the minimum and the median over `reps` timed rounds of `inner` calls
/// each (after one warm-up round). On a shared machine the minimum is the figure to compare.
pub fn time(reps: usize, inner: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..inner {
        f();
    }
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..inner {
                f();
            }
            t.elapsed().as_secs_f64() / inner as f64
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[0], v[v.len() / 2])
}
