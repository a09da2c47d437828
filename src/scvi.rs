//! The model as a user holds it: scvi-tools' `SCVI.setup_anndata` + `SCVI(adata, ...)` +
//! `train()` + `get_latent_representation()` / `get_elbo()`, and the model directory.

use crate::atomic::AtomicDir;
use crate::batch::Minibatch;
use crate::cpu::CpuTrainer;
use crate::data::{Dataset, SparseRows};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::math::softmax::softmax_in_place;
use crate::model::init::ModelState;
use crate::model::io::{state_from_safetensors, state_to_safetensors, MODEL_DIR, WEIGHTS_FILE};
use crate::model::{LatentDistribution, Layout, ModelConfig};
use crate::rng::{Philox, Stream};
use crate::train::{self, Covariates, EpochRecord, History, Split, TrainConfig};
use serde::{Deserialize, Serialize};
use std::path::Path;

mod after_training;
pub use after_training::{DeGroups, Evaluation};

pub const FORMAT_VERSION: u32 = 1;

/// Which engine runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "unknown device '{s}': expected auto, cpu, cuda or cuda:N"
                    ))
                }),
        }
    }
}

/// Which obs columns hold the covariates (`setup_anndata(batch_key=..., labels_key=...)`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Setup {
    pub batch_key: Option<String>,
    pub labels_key: Option<String>,
}

/// What is saved in `model.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelMeta {
    pub scvi_rs_version: String,
    pub format_version: u32,
    pub model: ModelConfig,
    pub setup: Setup,
    pub genes: Vec<String>,
    pub batch_categories: Vec<String>,
    pub label_categories: Vec<String>,
    pub train: Option<TrainConfig>,
    pub n_cells_trained: usize,
    pub engine: Option<String>,
    pub stopped_early: bool,
}

#[derive(Serialize, Deserialize)]
struct SplitFile {
    train_indices: Vec<usize>,
    validation_indices: Vec<usize>,
}

/// A trained (or initialised) scVI model.
pub struct Scvi {
    pub meta: ModelMeta,
    pub state: ModelState<f32>,
    pub history: History,
    pub split: Option<Split>,
}

/// The per-cell codes of a data set under a model's categories.
pub struct CellCodes {
    pub batch: Vec<u32>,
    pub labels: Vec<u32>,
}

impl CellCodes {
    /// The codes as the loader takes them.
    pub fn covariates(&self) -> Covariates<'_> {
        Covariates {
            batch: &self.batch,
            labels: &self.labels,
        }
    }
}

/// The ELBO of a set of cells, with scvi-tools' signs: `elbo` is `get_elbo()` (the mean ELBO, a
/// negative number, higher is better); the parts are per-cell means of the losses (positive).
#[derive(Clone, Debug, Serialize)]
pub struct ElboReport {
    pub n_cells: usize,
    pub elbo: f64,
    pub reconstruction_loss: f64,
    pub kl_local: f64,
}

fn categories(data: &Dataset, key: &Option<String>) -> Result<(Vec<u32>, Vec<String>)> {
    match key {
        None => Ok((vec![0; data.n_cells()], vec!["0".to_string()])),
        Some(k) => data
            .obs_column(k)?
            .to_categorical(k)
            .map_err(|e| Error::Data(format!("{}: {e}", data.source))),
    }
}

impl Scvi {
    /// Set up a model for `data`: categories from the obs columns, shapes from the data, weights
    /// initialised as PyTorch does (seeded), the latent library prior from the data.
    pub fn new(data: &Dataset, setup: Setup, mut config: ModelConfig, seed: u64) -> Result<Self> {
        let (batch_codes, batch_categories) = categories(data, &setup.batch_key)?;
        let (_, label_categories) = categories(data, &setup.labels_key)?;
        config.n_input = data.n_genes();
        config.n_batch = batch_categories.len();
        config.n_labels = label_categories.len();
        config.validate()?;
        let layout = Layout::new(&config);
        let mut state = ModelState::<f32>::init(layout, seed);
        if !config.use_observed_lib_size {
            set_library_prior(
                &mut state,
                data.counts.as_ref(),
                &batch_codes,
                config.n_batch,
            );
        }
        let meta = ModelMeta {
            scvi_rs_version: env!("CARGO_PKG_VERSION").to_string(),
            format_version: FORMAT_VERSION,
            model: config,
            setup,
            genes: data.gene_names.clone(),
            batch_categories,
            label_categories,
            train: None,
            n_cells_trained: 0,
            engine: None,
            stopped_early: false,
        };
        Ok(Scvi {
            meta,
            state,
            history: History::default(),
            split: None,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.meta.model
    }

    /// Check `data` against the model (same genes in the same order; known categories) and return
    /// its cells' codes. Batch and label categories are matched by name.
    pub fn codes_for(&self, data: &Dataset) -> Result<CellCodes> {
        if data.gene_names != self.meta.genes {
            let missing: Vec<&String> = self
                .meta
                .genes
                .iter()
                .filter(|g| !data.gene_names.contains(g))
                .take(5)
                .collect();
            let extra: Vec<&String> = data
                .gene_names
                .iter()
                .filter(|g| !self.meta.genes.contains(g))
                .take(5)
                .collect();
            let detail = if missing.is_empty() && extra.is_empty() {
                "the same genes in a different order".to_string()
            } else {
                format!("missing from the data: {missing:?}; not in the model: {extra:?}")
            };
            return Err(Error::Data(format!(
                "{}: its {} genes differ from the model's {} ({detail}); subset and order the genes as at training",
                data.source,
                data.n_genes(),
                self.meta.genes.len()
            )));
        }
        let map = |key: &Option<String>,
                   cats: &[String],
                   what: &str,
                   required: bool|
         -> Result<Vec<u32>> {
            let Some(k) = key else {
                return Ok(vec![0; data.n_cells()]);
            };
            let col = match data.obs_column(k) {
                Ok(c) => c,
                Err(e) if required => return Err(e),
                Err(_) => return Ok(vec![0; data.n_cells()]),
            };
            let (codes, names) = col
                .to_categorical(k)
                .map_err(|e| Error::Data(format!("{}: {e}", data.source)))?;
            let lookup: Vec<Option<u32>> = names
                .iter()
                .map(|n| cats.iter().position(|c| c == n).map(|i| i as u32))
                .collect();
            codes
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    lookup[c as usize].or(if required { None } else { Some(0) }).ok_or_else(|| {
                        Error::Data(format!(
                            "{}: cell {i} has {what} '{}' in obs column '{k}', which the model was not trained on (known: {})",
                            data.source,
                            names[c as usize],
                            cats.join(", ")
                        ))
                    })
                })
                .collect()
        };
        let needs_labels = self.meta.model.dispersion == crate::model::Dispersion::GeneLabel;
        Ok(CellCodes {
            batch: map(
                &self.meta.setup.batch_key,
                &self.meta.batch_categories,
                "batch",
                true,
            )?,
            labels: map(
                &self.meta.setup.labels_key,
                &self.meta.label_categories,
                "label",
                needs_labels,
            )?,
        })
    }

    /// With the observed library size, a cell without counts has `log 0 = -inf` as its library:
    /// refuse it, naming the cell.
    fn check_library(&self, data: &Dataset, cells: &[usize]) -> Result<()> {
        if !self.meta.model.use_observed_lib_size {
            return Ok(());
        }
        for (k, &c) in cells.iter().enumerate() {
            // A pass over a memory-mapped store: give its pages back as it goes.
            if k % 16384 == 16383 {
                data.counts.release();
            }
            if data.counts.row(c).1.iter().all(|&v| v == 0.0) {
                let name = data.cell_names.get(c).cloned().unwrap_or_default();
                return Err(Error::Data(format!(
                    "{}: cell {c} ('{name}') has zero total counts, so its observed library size \
                     log(0) is undefined; remove such cells first (scanpy: \
                     sc.pp.filter_cells(adata, min_counts=1))",
                    data.source
                )));
            }
        }
        data.counts.release();
        Ok(())
    }

    /// An engine holding this model's values.
    pub fn engine(
        &self,
        device: Device,
        seed: u64,
        adam: train::AdamConfig,
    ) -> Result<Box<dyn Engine>> {
        match device {
            Device::Cpu => Ok(Box::new(CpuTrainer::<f32>::new(
                self.state.clone(),
                adam,
                seed,
            ))),
            Device::Cuda(i) => crate::cuda::engine(&self.state, i, seed, adam),
        }
    }

    /// Train on `data` (scvi-tools' `model.train()`), calling `on_epoch` after each epoch.
    pub fn train(
        &mut self,
        data: &Dataset,
        cfg: &TrainConfig,
        device: Device,
        on_epoch: &mut dyn FnMut(&EpochRecord, usize),
    ) -> Result<()> {
        cfg.validate()?;
        let codes = self.codes_for(data)?;
        let all: Vec<usize> = (0..data.n_cells()).collect();
        self.check_library(data, &all)?;
        let split = train::train_validation_split(
            data.n_cells(),
            cfg.train_size,
            cfg.batch_size,
            cfg.seed,
        )?;
        if split.train.len() < 2 {
            return Err(Error::Data(format!(
                "{}: too few cells to train on ({})",
                data.source,
                data.n_cells()
            )));
        }
        let mut engine = self.engine(device, cfg.seed, cfg.adam)?;
        let cov = codes.covariates();
        let history = train::fit(
            engine.as_mut(),
            data.counts.as_ref(),
            &cov,
            &split,
            cfg,
            on_epoch,
        )?;
        if history.epochs.is_empty() {
            // Nothing was learned: never hand back (and so never save) untrained weights.
            return Err(Error::Config(
                "no training step ran; nothing to save (check --max-steps and --max-epochs)".into(),
            ));
        }
        self.state = engine.state();
        self.meta.train = Some(cfg.clone());
        self.meta.n_cells_trained = split.train.len();
        self.meta.engine = Some(engine.name());
        self.meta.stopped_early = history.stopped_early;
        self.history = history;
        self.split = Some(split);
        Ok(())
    }

    /// The latent representation of every cell (`[n_cells, n_latent]`, row-major): the posterior
    /// mean `q_m`, or for the logistic normal the mean of `softmax(z)` over `mc_samples` draws, as
    /// scvi-tools' `get_latent_representation()` computes them.
    pub fn latent_representation(
        &self,
        data: &Dataset,
        device: Device,
        mc_samples: usize,
    ) -> Result<Vec<f32>> {
        let codes = self.codes_for(data)?;
        let l = self.meta.model.n_latent;
        let mut engine = self.engine(device, 0, train::AdamConfig::default())?;
        let mut out = vec![0f32; data.n_cells() * l];
        let order: Vec<usize> = (0..data.n_cells()).collect();
        let cov = codes.covariates();
        let ln = self.meta.model.latent_distribution == LatentDistribution::Ln;
        let rng = Philox::new(0);
        // Scratch for the logistic-normal Monte Carlo mean, reused across cells.
        let (mut eps, mut z, mut acc) = (Vec::new(), vec![0f64; l], vec![0f64; l]);
        train::for_each_minibatch(
            data.counts.as_ref(),
            &cov,
            &order,
            1024,
            |mb: &Minibatch| {
                crate::interrupt::check()?;
                let (m, v) = engine.encode(mb)?;
                for (i, &cell) in mb.cells.iter().enumerate() {
                    let dst = &mut out[cell * l..(cell + 1) * l];
                    if !ln {
                        dst.copy_from_slice(&m[i * l..(i + 1) * l]);
                        continue;
                    }
                    let n_mc = mc_samples.max(1);
                    eps.resize(l * n_mc, 0.0);
                    rng.fill_normal(Stream::Latent, cell as u64, &mut eps);
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    for s in 0..n_mc {
                        for k in 0..l {
                            z[k] =
                                m[i * l + k] as f64 + (v[i * l + k] as f64).sqrt() * eps[s * l + k];
                        }
                        softmax_in_place(&mut z);
                        acc.iter_mut().zip(&z).for_each(|(a, x)| *a += x);
                    }
                    for (d, a) in dst.iter_mut().zip(&acc) {
                        *d = (a / n_mc as f64) as f32;
                    }
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// `get_elbo(indices=cells)`, in inference mode with one posterior sample per cell.
    pub fn elbo(
        &self,
        data: &Dataset,
        cells: &[usize],
        device: Device,
        seed: u64,
    ) -> Result<ElboReport> {
        let codes = self.codes_for(data)?;
        self.check_library(data, cells)?;
        let mut engine = self.engine(device, seed, train::AdamConfig::default())?;
        let cov = codes.covariates();
        let s = train::evaluate(
            engine.as_mut(),
            data.counts.as_ref(),
            &cov,
            cells,
            128,
            1.0,
            train::EVAL_STEP_BASE,
        )?;
        Ok(ElboReport {
            n_cells: s.n_cells,
            elbo: -s.elbo(),
            reconstruction_loss: s.reconstruction_loss(),
            kl_local: s.kl_local(),
        })
    }

    /// Write the model directory (see `model::io`). An existing `dir` is refused unless `force`,
    /// and even then only a model directory that scvi-rs wrote is replaced (`crate::atomic`).
    pub fn save(&self, dir: &Path, force: bool) -> Result<()> {
        let staged = AtomicDir::create(dir, &MODEL_DIR, force, "")?;
        self.write_into(&staged)?;
        staged.commit()
    }

    /// Write the model's files into a model directory being staged; the caller commits it. (The
    /// command line stages `--out` before training, so an output that cannot be written fails
    /// before the work, not after it.)
    pub fn write_into(&self, staged: &AtomicDir) -> Result<()> {
        staged.write(WEIGHTS_FILE, &state_to_safetensors(&self.state)?)?;
        let json =
            serde_json::to_vec_pretty(&self.meta).map_err(|e| Error::Config(e.to_string()))?;
        staged.write("model.json", &json)?;
        staged.write(
            "history.csv",
            self.history.to_csv(self.meta.n_cells_trained).as_bytes(),
        )?;
        if let Some(s) = &self.split {
            let f = SplitFile {
                train_indices: s.train.clone(),
                validation_indices: s.validation.clone(),
            };
            staged.write(
                "split.json",
                &serde_json::to_vec(&f).map_err(|e| Error::Config(e.to_string()))?,
            )?;
        }
        Ok(())
    }

    /// Read a model directory written by `save`.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::format(dir, "not a model directory (expected a directory with model.json and model.safetensors)"));
        }
        let meta_path = dir.join("model.json");
        let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
        let meta: ModelMeta = serde_json::from_str(&text)
            .map_err(|e| Error::format(&meta_path, format!("invalid model.json: {e}")))?;
        if meta.format_version > FORMAT_VERSION {
            return Err(Error::format(
                &meta_path,
                format!(
                    "format version {} is newer than this scvi-rs reads ({FORMAT_VERSION})",
                    meta.format_version
                ),
            ));
        }
        meta.model.validate()?;
        let wpath = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&wpath).map_err(|e| Error::io(&wpath, e))?;
        let state = state_from_safetensors(Layout::new(&meta.model), &bytes, &wpath)?;
        let split = std::fs::read(dir.join("split.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<SplitFile>(&b).ok())
            .map(|f| Split {
                train: f.train_indices,
                validation: f.validation_indices,
            });
        Ok(Scvi {
            meta,
            state,
            history: History::default(),
            split,
        })
    }
}

/// scvi-tools' `_init_library_size`: per batch, the mean and (population) variance of the log
/// library sizes, a zero-count cell counting as log = 0.
fn set_library_prior(
    state: &mut ModelState<f32>,
    x: &dyn SparseRows,
    codes: &[u32],
    n_batch: usize,
) {
    let mut sum = vec![0f64; n_batch];
    let mut sq = vec![0f64; n_batch];
    let mut n = vec![0usize; n_batch];
    for (i, &c) in codes.iter().enumerate() {
        let t = x.row_sum(i);
        let l = if t > 0.0 { t.ln() } else { 0.0 };
        sum[c as usize] += l;
        sq[c as usize] += l * l;
        n[c as usize] += 1;
    }
    let (mi, vi) = (
        state.layout.library_log_means.unwrap(),
        state.layout.library_log_vars.unwrap(),
    );
    let (mr, vr) = (
        state.layout.buffers[mi].range(),
        state.layout.buffers[vi].range(),
    );
    for k in 0..n_batch {
        let nk = n[k].max(1) as f64;
        let mean = sum[k] / nk;
        state.buffers[mr.start + k] = mean as f32;
        state.buffers[vr.start + k] = (sq[k] / nk - mean * mean).max(0.0) as f32;
    }
}
