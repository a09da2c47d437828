//! Training runs that survive interruption. A [`Training`] writes checkpoints into its model
//! directory (every N epochs, and when Ctrl-C or SIGTERM stops it: the step under way finishes
//! first), and [`Training::open`] + [`Training::run`] continue one to the same model, bit for bit,
//! as a run that never stopped (same engine; the CPU engine's results do not depend on the thread
//! count), whether it stopped between epochs or in the middle of one.
//!
//! A checkpoint (`train::checkpoint`) holds the tensors and the loop's progress; this module adds
//! the run's record ([`RunRecord`]): the model's description with the training settings, where the
//! data came from (path and layer, so that `train --resume DIR` needs no other argument), the
//! data's identity (checked before resuming), the device and how often to checkpoint.

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::io::{CHECKPOINT_FILE, META_FILE};
use crate::model::Layout;
use crate::scvi::{Device, ModelMeta, RunStart, Scvi};
use crate::store::Hasher64;
use crate::train::checkpoint::{checkpoint_bytes, Checkpoint, CheckpointSink, RunView};
use crate::train::run_dir::RunDir;
use crate::train::{EpochRecord, History, Progress, TrainConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The input a run trains on, as it was named.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSource {
    pub path: PathBuf,
    /// The `.h5ad` layer the counts come from (None: X).
    pub layer: Option<String>,
}

/// What identifies the data a run trains on, beyond the genes and categories the model records:
/// sizes, and hashes (wfnv64) of every cell's total count and of the cells' batch and label codes.
/// One pass over the counts; equal for an `.h5ad` and the store converted from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataFingerprint {
    pub n_cells: usize,
    pub n_genes: usize,
    pub nnz: u64,
    pub row_sums: String,
    pub codes: String,
}

impl DataFingerprint {
    /// The fingerprint of `data` under `model`'s genes and categories (which it checks).
    pub fn of(model: &Scvi, data: &Dataset) -> Result<Self> {
        let codes = model.codes_for(data)?;
        let x = data.counts.as_ref();
        let mut sums = Hasher64::new();
        for i in 0..x.n_rows() {
            sums.update(&x.row_sum(i).to_le_bytes());
            // A pass over a memory-mapped store: give its pages back as it goes.
            if i % 16384 == 16383 {
                x.release();
            }
        }
        x.release();
        let mut c = Hasher64::new();
        for v in codes.batch.iter().chain(&codes.labels) {
            c.update(&v.to_le_bytes());
        }
        Ok(DataFingerprint {
            n_cells: x.n_rows(),
            n_genes: x.n_cols(),
            nnz: x.nnz(),
            row_sums: format!("{:016x}", sums.finish()),
            codes: format!("{:016x}", c.finish()),
        })
    }
}

/// What a checkpoint records about its run besides the tensors and the progress.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// The model (options, genes, categories) with its training settings and seed in `train`.
    pub model: ModelMeta,
    pub source: DataSource,
    pub fingerprint: DataFingerprint,
    /// The device the run trains on (`cpu`, `cuda:0`).
    pub device: String,
    /// Checkpoint every this many epochs (None: only when interrupted).
    pub checkpoint_every: Option<usize>,
}

/// The last checkpoint written: where the run stood, its size and how long writing it took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Written {
    pub epoch: usize,
    pub batches_done: usize,
    pub step: u64,
    pub bytes: usize,
    pub seconds: f64,
    /// Written because the run was interrupted (not on schedule).
    pub interrupted: bool,
}

/// A training run with checkpoints (see the module documentation).
pub struct Training {
    dir: RunDir,
    record: RunRecord,
    start: Option<RunStart>,
    /// The last checkpoint this process wrote.
    pub last: Option<Written>,
}

impl Training {
    /// A new run of `model` on `data` (from `source`) with `cfg`, on `device`, checkpointing
    /// into `dir` every `every` epochs and when interrupted.
    pub fn new(
        model: &Scvi,
        data: &Dataset,
        cfg: &TrainConfig,
        source: DataSource,
        device: Device,
        every: Option<usize>,
        dir: RunDir,
    ) -> Result<Self> {
        if every == Some(0) {
            return Err(Error::Config(
                "--checkpoint-every must be at least 1".into(),
            ));
        }
        let start = model.new_run(data, cfg)?;
        let mut meta = model.meta.clone();
        meta.train = Some(cfg.clone());
        meta.n_cells_trained = start.split.train.len();
        let record = RunRecord {
            model: meta,
            source,
            fingerprint: DataFingerprint::of(model, data)?,
            device: device.to_string(),
            checkpoint_every: every,
        };
        Ok(Training {
            dir,
            record,
            start: Some(start),
            last: None,
        })
    }

    /// The run whose checkpoint is in the model directory `dir`, and the model as it stood.
    pub fn open(dir: &Path) -> Result<(Scvi, Training)> {
        if !dir.is_dir() {
            return Err(Error::format(
                dir,
                "not a directory (expected the --out of a training run)",
            ));
        }
        let path = dir.join(CHECKPOINT_FILE);
        if !path.exists() {
            let why = if dir.join(META_FILE).exists() {
                format!("its training finished (it holds a model, no {CHECKPOINT_FILE}); there is nothing to resume")
            } else {
                format!("no {CHECKPOINT_FILE} to resume from (a run writes one with --checkpoint-every N, or when Ctrl-C stops it)")
            };
            return Err(Error::format(dir, why));
        }
        let ck = Checkpoint::<RunRecord>::read(&path, |r| {
            r.model.model.validate()?;
            Ok(Layout::new(&r.model.model))
        })?;
        let cfg = ck
            .run
            .model
            .train
            .clone()
            .ok_or_else(|| Error::format(&path, "the checkpoint has no training settings"))?;
        cfg.validate()?;
        let model = Scvi {
            meta: ck.run.model.clone(),
            state: ck.state,
            history: History::default(),
            split: None,
        };
        let start = RunStart {
            split: ck.split,
            progress: ck.progress,
            optimizer: Some(ck.optimizer),
        };
        let training = Training {
            dir: RunDir::resume(dir),
            record: ck.run,
            start: Some(start),
            last: None,
        };
        Ok((model, training))
    }

    pub fn record(&self) -> &RunRecord {
        &self.record
    }

    /// Where the run stands (before [`run`](Self::run)).
    pub fn progress(&self) -> Option<&Progress> {
        self.start.as_ref().map(|s| &s.progress)
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The device the run trained on.
    pub fn device(&self) -> Result<Device> {
        self.record.device.parse()
    }

    /// Checkpoint every `every` epochs from now on (None: only when interrupted).
    pub fn set_checkpoint_every(&mut self, every: Option<usize>) -> Result<()> {
        if every == Some(0) {
            return Err(Error::Config(
                "--checkpoint-every must be at least 1".into(),
            ));
        }
        self.record.checkpoint_every = every;
        Ok(())
    }

    /// Check that `data` is the run's (same genes, batches, labels and counts), and record
    /// `source` as where it now lives.
    pub fn check_data(&mut self, model: &Scvi, data: &Dataset, source: DataSource) -> Result<()> {
        let was = &self.record.fingerprint;
        if data.n_cells() != was.n_cells {
            return Err(Error::Data(format!(
                "{}: {} cells, but the run trained on {} ({}); resume with the run's data",
                data.source,
                data.n_cells(),
                was.n_cells,
                self.record.source.path.display()
            )));
        }
        // Genes, and every cell's batch and label under the model's categories, by name.
        let now = DataFingerprint::of(model, data)?;
        let differs = if now.nnz != was.nnz || now.row_sums != was.row_sums {
            Some("counts")
        } else if now.codes != was.codes {
            Some("cells' batches or labels")
        } else if now.n_genes != was.n_genes {
            Some("genes")
        } else {
            None
        };
        if let Some(what) = differs {
            return Err(Error::Data(format!(
                "{}: its {what} differ from those of the data the run trained on ({}); resume \
                 with the run's data",
                data.source,
                self.record.source.path.display()
            )));
        }
        self.record.source = source;
        Ok(())
    }

    /// Train `model` on `data` on `device` until the run is over, checkpointing on schedule and
    /// when interrupted (the interruption is then the error, with [`Training::last`] saying where
    /// the run stood).
    pub fn run(
        &mut self,
        model: &mut Scvi,
        data: &Dataset,
        device: Device,
        on_epoch: &mut dyn FnMut(&EpochRecord, usize),
    ) -> Result<()> {
        let start = self
            .start
            .take()
            .ok_or_else(|| Error::Config("this run has already been trained".into()))?;
        let cfg = self
            .record
            .model
            .train
            .clone()
            .ok_or_else(|| Error::Config("the run has no training settings".into()))?;
        self.record.device = device.to_string();
        model.run(data, &cfg, device, start, Some(self), on_epoch)
    }

    /// Write the trained model into the directory and remove the checkpoint.
    pub fn finish(self, model: &Scvi) -> Result<()> {
        self.dir.finish(model.files()?)
    }

    fn write(&mut self, run: RunView, interrupted: bool) -> Result<()> {
        let t0 = Instant::now();
        let bytes = checkpoint_bytes(&self.record, run)?;
        self.dir.write_checkpoint(&bytes)?;
        let p = run.progress;
        self.last = Some(Written {
            epoch: p.epoch,
            batches_done: p.batches_done,
            step: p.step,
            bytes: bytes.len(),
            seconds: t0.elapsed().as_secs_f64(),
            interrupted,
        });
        Ok(())
    }
}

impl CheckpointSink for Training {
    fn epoch_end(&mut self, run: RunView, max_epochs: usize) -> Result<()> {
        let p = run.progress;
        let due = self
            .record
            .checkpoint_every
            .is_some_and(|n| p.epoch.is_multiple_of(n));
        // The last epoch needs none: the model is written next.
        if due && !p.finished && p.epoch < max_epochs {
            self.write(run, false)?;
        }
        Ok(())
    }

    fn interrupted(&mut self, run: RunView) -> Result<()> {
        self.write(run, true)
    }
}
