//! Shared set-up of the CPU benchmarks: the Kang IFN-beta data (13,576 cells x 2,000 genes, batch key
//! `stim`) when it is there (`SCVI_RS_BENCH_DATA` names another .h5ad; its batch key
//! `SCVI_RS_BENCH_BATCH_KEY`), else simulated counts of the same shape, and real 128-cell
//! minibatches of it with scvi-tools' default model.

#![allow(dead_code)]

use scvi_rs::batch::Minibatch;
use scvi_rs::cpu::engine::NoiseBuffers;
use scvi_rs::cpu::output::{decoder_output, HeadBiases, OutputPlanes, ThetaSource, ThetaTable};
use scvi_rs::cpu::CpuEngine;
use scvi_rs::data::simulate::{simulate, SimConfig};
use scvi_rs::data::Dataset;
use scvi_rs::engine::{LossParts, Mode};
use scvi_rs::float::Float;
use scvi_rs::model::init::ModelState;
use scvi_rs::model::layout::LinearShape;
use scvi_rs::model::{GeneLikelihood, ModelConfig};
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
        self.minibatches_of(n, BATCH_SIZE)
    }

    /// `n` minibatches of `size` cells drawn as one shuffled epoch draws them.
    pub fn minibatches_of(&self, n: usize, size: usize) -> Vec<Minibatch> {
        let perm = Philox::new(0).permutation(Stream::Shuffle, 0, self.data.n_cells());
        let labels = vec![0u32; self.data.n_cells()];
        perm.chunks(size)
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

/// `n` values uniform in [lo, hi), from the Philox stream `Init` under `key`.
pub fn uniform(n: usize, key: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut u = vec![0.0f64; n];
    Philox::new(key).fill_uniform(Stream::Init, 0, &mut u);
    u.iter().map(|&v| lo + (hi - lo) * v as f32).collect()
}

/// The product shape of a Linear `[b, i] -> [b, o]` with the weight `[o, i]` (no one-hot columns),
/// for `cpu::gemm::linear_fwd` / `linear_wgrad` / `linear_dgrad`.
pub fn shape(b: usize, i: usize, o: usize) -> LinearShape {
    LinearShape {
        b,
        n_in: i,
        ldw: i,
        n_out: o,
    }
}

/// The fused decoder output's inputs (ZINB, a per-gene dispersion) for `b` cells and `g` genes:
/// random logits, biases and dispersions, and each minibatch's log library.
pub struct OutputStage {
    /// The kernel's in-place planes; `rho` and `pi` are copied into them before each call.
    pub planes: OutputPlanes<f32>,
    pub rho: Vec<f32>,
    pub pi: Vec<f32>,
    /// The two heads' biases, added by the kernel as it reads the logits.
    bias_rho: Vec<f32>,
    bias_pi: Vec<f32>,
    /// `theta = exp(px_r)` and its special functions, per gene.
    table: ThetaTable<f32>,
    /// Per minibatch, per cell.
    lib: Vec<Vec<f32>>,
}

impl OutputStage {
    pub fn new(mbs: &[Minibatch], b: usize, g: usize) -> Self {
        let mut planes = OutputPlanes::<f32>::default();
        planes.resize(b, g);
        let mut table = ThetaTable::default();
        table.fill(&uniform(g, 10, -1.0, 2.0), g, 1);
        OutputStage {
            planes,
            rho: uniform(b * g, 8, -3.0, 3.0),
            pi: uniform(b * g, 9, -4.0, 2.0),
            bias_rho: uniform(g, 14, -0.1, 0.1),
            bias_pi: uniform(g, 15, -0.1, 0.1),
            table,
            lib: mbs
                .iter()
                .map(|m| m.log_library.iter().map(|&v| v as f32).collect())
                .collect(),
        }
    }

    /// Copy the logits into the planes (the kernel overwrites them).
    pub fn reset(&mut self) {
        let n = self.rho.len();
        self.planes.scale[..n].copy_from_slice(&self.rho);
        self.planes.pi[..n].copy_from_slice(&self.pi);
    }

    /// One call of the kernel on minibatch `i` of `mbs` (the planes reset first).
    pub fn run(&mut self, mbs: &[Minibatch], i: usize, grads: bool) {
        self.reset();
        let theta = ThetaSource::Table {
            table: &self.table,
            codes: None,
        };
        let biases = HeadBiases {
            rho: &self.bias_rho,
            pi: Some(&self.bias_pi),
            r: None,
        };
        let b = mbs[i].len();
        decoder_output(
            &mut self.planes,
            &mbs[i],
            GeneLikelihood::Zinb,
            theta,
            biases,
            &self.lib[i],
            grads,
            1.0 / b as f64,
        );
    }
}

/// The CPU engine's forward and backward pass alone (no optimiser), with its own parameters,
/// gradient buffer (accumulating, as the benches do not need it cleared) and noise, keyed by the
/// step as `CpuTrainer` keys it; KL weight 0.5, training mode.
pub struct BareStep<T> {
    pub engine: CpuEngine<T>,
    pub state: ModelState<T>,
    pub grads: Vec<T>,
    noise: NoiseBuffers<T>,
    rng: Philox,
}

impl<T: Float> BareStep<T> {
    pub fn new(state: ModelState<T>, seed: u64) -> Self {
        let layout = state.layout.clone();
        BareStep {
            engine: CpuEngine::new(layout.clone()),
            grads: vec![T::ZERO; layout.n_param_elems],
            noise: NoiseBuffers::default(),
            rng: Philox::new(seed),
            state,
        }
    }

    /// Draw the noise of step `k` for `mb`.
    pub fn draw(&mut self, mb: &Minibatch, k: u64) {
        let l = self.state.layout.config.n_latent;
        self.noise.draw(&self.rng, k, mb.len(), l);
    }

    /// The pass on `mb` with the noise drawn for step `k`.
    pub fn pass(&mut self, mb: &Minibatch, k: u64) -> LossParts {
        let noise = self.noise.as_step(Some((self.rng, k)));
        let grads = Some(&mut self.grads[..]);
        self.engine
            .forward_backward(&mut self.state, grads, mb, &noise, 0.5, Mode::Train)
            .unwrap()
    }

    /// Draw, then pass.
    pub fn run(&mut self, mb: &Minibatch, k: u64) -> LossParts {
        self.draw(mb, k);
        self.pass(mb, k)
    }
}
