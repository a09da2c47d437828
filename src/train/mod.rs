//! The training loop, as scvi-tools' `TrainingPlan` runs it: Adam, KL warm-up over 400 epochs,
//! minibatches of 128 reshuffled every epoch, a seeded train / validation split, the validation loss
//! every epoch, optional early stopping on `elbo_validation`.
//!
//! History columns keep scvi-tools' names and signs: `elbo_*`, `reconstruction_loss_*` and
//! `kl_local_*` are per-cell averages over the epoch of the *negative* ELBO and its parts (positive
//! numbers, lower is better), the KL unweighted; `train_loss` / `validation_loss` average the
//! minibatch objective, whose KL_z carries the warm-up weight.

pub mod checkpoint;
pub mod exact;
pub mod history;
pub mod loader;
pub mod progress;
pub mod run_dir;
pub mod split;

use crate::data::SparseRows;
/// The optimiser's settings are the contract's (the engines run the update).
pub use crate::engine::AdamConfig;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::Precision;
use crate::rng::{Philox, Stream};
pub use history::{EpochRecord, History, LossSums};
pub use loader::{check_cell, for_each_minibatch, Covariates};
pub use progress::Progress;
use serde::{Deserialize, Serialize};
pub use split::{train_validation_split, Split};
use std::time::Instant;

/// Step indices of validation passes live above this, so their noise never repeats training's.
pub const EVAL_STEP_BASE: u64 = 1 << 48;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// None: scvi-tools' heuristic, `min(round(20000 / n_cells * 400), 400)`, at least 1.
    pub max_epochs: Option<usize>,
    pub batch_size: usize,
    pub train_size: f64,
    pub seed: u64,
    pub adam: AdamConfig,
    /// KL weight `min_kl + (max_kl - min_kl) * epoch / n_epochs_kl_warmup` until it reaches `max_kl`.
    pub n_epochs_kl_warmup: usize,
    pub max_kl_weight: f64,
    pub min_kl_weight: f64,
    pub early_stopping: bool,
    pub early_stopping_patience: usize,
    pub early_stopping_min_delta: f64,
    /// Stop after this many training steps in all (Lightning's `max_steps`), even mid-epoch.
    pub max_steps: Option<usize>,
    /// The arithmetic of the decoder output heads' products (absent in older model.json: f32).
    #[serde(default)]
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            max_epochs: None,
            batch_size: 128,
            train_size: 0.9,
            seed: 0,
            adam: AdamConfig::default(),
            n_epochs_kl_warmup: 400,
            max_kl_weight: 1.0,
            min_kl_weight: 0.0,
            early_stopping: false,
            early_stopping_patience: 45,
            early_stopping_min_delta: 0.0,
            max_steps: None,
            precision: Precision::F32,
        }
    }
}

/// scvi-tools' `get_max_epochs_heuristic(n_obs)`.
pub fn default_max_epochs(n_cells: usize) -> usize {
    // Python's round() halves to even.
    let e = (20000.0 / n_cells.max(1) as f64 * 400.0).round_ties_even() as usize;
    e.clamp(1, 400)
}

impl TrainConfig {
    pub fn epochs_for(&self, n_cells: usize) -> usize {
        self.max_epochs
            .unwrap_or_else(|| default_max_epochs(n_cells))
    }

    /// scvi-tools' `_compute_kl_weight` for an epoch (0-based).
    pub fn kl_weight(&self, epoch: usize) -> f64 {
        let slope = self.max_kl_weight - self.min_kl_weight;
        if self.n_epochs_kl_warmup > 0 && epoch < self.n_epochs_kl_warmup {
            slope * (epoch as f64 / self.n_epochs_kl_warmup as f64) + self.min_kl_weight
        } else {
            self.max_kl_weight
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.batch_size < 2 {
            return Err(Error::Config(format!(
                "batch_size must be at least 2, got {}",
                self.batch_size
            )));
        }
        if self.max_epochs == Some(0) {
            return Err(Error::Config("max_epochs must be at least 1".into()));
        }
        if self.max_steps == Some(0) {
            return Err(Error::Config("max_steps must be at least 1".into()));
        }
        if self.min_kl_weight > self.max_kl_weight {
            return Err(Error::Config(
                "min_kl_weight is larger than max_kl_weight".into(),
            ));
        }
        // What torch.optim.Adam refuses ("Invalid learning rate", ...), and what makes no sense.
        let a = &self.adam;
        let checks = [
            ("lr", a.lr, a.lr > 0.0, "a positive number"),
            (
                "weight_decay",
                a.weight_decay,
                a.weight_decay >= 0.0,
                "0 or more",
            ),
            ("eps", a.eps, a.eps >= 0.0, "0 or more"),
            ("beta1", a.beta1, (0.0..1.0).contains(&a.beta1), "in [0, 1)"),
            ("beta2", a.beta2, (0.0..1.0).contains(&a.beta2), "in [0, 1)"),
            (
                "train_size",
                self.train_size,
                self.train_size > 0.0 && self.train_size <= 1.0,
                "in (0, 1]",
            ),
            (
                "early_stopping_min_delta",
                self.early_stopping_min_delta,
                self.early_stopping_min_delta >= 0.0,
                "0 or more",
            ),
            (
                "min_kl_weight",
                self.min_kl_weight,
                self.min_kl_weight >= 0.0,
                "0 or more",
            ),
            (
                "max_kl_weight",
                self.max_kl_weight,
                self.max_kl_weight >= 0.0,
                "0 or more",
            ),
        ];
        for (name, v, ok, want) in checks {
            if !(ok && v.is_finite()) {
                return Err(Error::Config(format!(
                    "{name} must be {want} and finite, got {v}"
                )));
            }
        }
        Ok(())
    }
}

/// Sum the losses of `cells` in inference mode (the validation pass, `get_elbo`).
pub fn evaluate(
    engine: &mut dyn Engine,
    x: &dyn SparseRows,
    cov: &Covariates,
    cells: &[usize],
    batch_size: usize,
    kl_weight: f64,
    step_base: u64,
) -> Result<LossSums> {
    let mut sums = LossSums::default();
    let mut k = 0u64;
    for_each_minibatch(x, cov, cells, batch_size, |mb| {
        crate::interrupt::check()?;
        let p = engine.eval_loss(mb, step_base + k, kl_weight)?;
        k += 1;
        sums.add(&p);
        Ok(())
    })?;
    Ok(sums)
}

/// What [`fit`] calls after each epoch: the epoch's record, the number of epochs, the engine and
/// the progress after the epoch.
pub type BetweenEpochs<'a> =
    dyn FnMut(&EpochRecord, usize, &dyn Engine, &Progress) -> Result<()> + 'a;

/// Train `engine` on the `split.train` cells of `x` from where `progress` stands (a new run:
/// `Progress::default()`) until the run is over, validating on `split.validation` after every
/// epoch. `progress` moves with every step, so whenever this returns an error, in particular
/// [`Error::Interrupted`] (checked before each step: the step under way always finishes), the
/// engine and `progress` together describe a point from which [`fit`] continues to the same end,
/// bit for bit: a checkpoint. `between_epochs` sees each finished epoch's record with the engine
/// and the progress after it (progress bars, periodic checkpoints); an error from it stops the run.
pub fn fit(
    engine: &mut dyn Engine,
    x: &dyn SparseRows,
    cov: &Covariates,
    split: &Split,
    cfg: &TrainConfig,
    progress: &mut Progress,
    between_epochs: &mut BetweenEpochs,
) -> Result<()> {
    cfg.validate()?;
    let max_epochs = cfg.epochs_for(x.n_rows());
    x.expect_random_access();
    let rng = Philox::new(cfg.seed);
    let bs = cfg.batch_size;
    while !progress.finished && progress.epoch < max_epochs {
        let epoch = progress.epoch;
        let t0 = Instant::now();
        let kl_weight = cfg.kl_weight(epoch);
        // The epoch's order, less the minibatches already trained on (all of them full ones: only
        // the last can be short).
        let perm = rng.permutation(Stream::Shuffle, epoch as u64, split.train.len());
        let done = (progress.batches_done * bs).min(perm.len());
        let mut order: Vec<usize> = perm[done..].iter().map(|&i| split.train[i]).collect();
        if let Some(max) = cfg.max_steps {
            let left = max.saturating_sub(progress.step as usize);
            // Out of steps at an epoch's start: the run is over. Mid-epoch (a resumed run that
            // stopped after its last step), the epoch's validation and record are still to come.
            if left == 0 && progress.batches_done == 0 {
                break;
            }
            order.truncate(left.saturating_mul(bs));
        }
        let trained = for_each_minibatch(x, cov, &order, bs, |mb| {
            if mb.len() < 2 {
                // scvi-tools' split never leaves one; a BatchNorm cannot take it.
                progress.batches_done += 1;
                return Ok(());
            }
            crate::interrupt::check()?;
            let p = engine.train_step(mb, progress.step, kl_weight)?;
            if !p.loss.is_finite() {
                return Err(Error::Data(format!(
                    "the training loss became {} at epoch {epoch}, step {}; check the input for \
                     extreme values or lower the learning rate",
                    p.loss,
                    progress.step + 1
                )));
            }
            progress.step += 1;
            progress.batches_done += 1;
            progress.epoch_sums.add(&p);
            Ok(())
        });
        let validation = trained.and_then(|()| {
            if split.validation.is_empty() {
                return Ok(None);
            }
            evaluate(
                engine,
                x,
                cov,
                &split.validation,
                bs,
                kl_weight,
                EVAL_STEP_BASE + ((epoch as u64) << 20),
            )
            .map(Some)
        });
        let seconds = progress.epoch_seconds + t0.elapsed().as_secs_f64();
        let validation = match validation {
            Ok(v) => v,
            Err(e) => {
                // Stopped inside the epoch: keep its time for the record the resumed run makes.
                progress.epoch_seconds = seconds;
                return Err(e);
            }
        };
        let rec = EpochRecord::new(
            epoch,
            kl_weight,
            &progress.epoch_sums,
            validation.as_ref(),
            seconds,
        );
        // Like the training loss: a held-out ELBO that is not a number means the model diverged,
        // and a model that computes NaN is not one to save.
        if let Some(v) = rec.elbo_validation.filter(|v| !v.is_finite()) {
            return Err(Error::Data(format!(
                "the validation ELBO became {v} at epoch {epoch}; the model diverged: lower the \
                 learning rate (--lr) or check the input for extreme values"
            )));
        }
        progress.end_epoch(rec.clone(), cfg);
        between_epochs(&rec, max_epochs, engine, progress)?;
        // A gentle stop an embedder asked for (the Python package's first Ctrl-C): the run ends
        // here, with the model of this epoch.
        if crate::interrupt::take_after_epoch() {
            progress.history.interrupted = true;
            progress.finished = true;
        }
    }
    progress.finished = true;
    Ok(())
}
