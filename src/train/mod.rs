//! The training loop, as scvi-tools' `TrainingPlan` runs it: Adam, KL warm-up over 400 epochs,
//! minibatches of 128 reshuffled every epoch, a seeded train / validation split, the validation loss
//! every epoch, optional early stopping on `elbo_validation`.
//!
//! History columns keep scvi-tools' names and signs: `elbo_*`, `reconstruction_loss_*` and
//! `kl_local_*` are per-cell averages over the epoch of the *negative* ELBO and its parts (positive
//! numbers, lower is better), the KL unweighted; `train_loss` / `validation_loss` average the
//! minibatch objective, whose KL_z carries the warm-up weight.

pub mod history;
pub mod loader;
pub mod split;

use crate::data::SparseRows;
/// The optimiser's settings are the contract's (the engines run the update).
pub use crate::engine::AdamConfig;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::rng::{Philox, Stream};
pub use history::{EpochRecord, History, LossSums};
pub use loader::{for_each_minibatch, Covariates};
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

/// Train `engine` on the `split.train` cells of `x`, validating on `split.validation` after every
/// epoch. `on_epoch` sees each finished epoch (for progress bars and checkpoints).
pub fn fit(
    engine: &mut dyn Engine,
    x: &dyn SparseRows,
    cov: &Covariates,
    split: &Split,
    cfg: &TrainConfig,
    on_epoch: &mut dyn FnMut(&EpochRecord, usize),
) -> Result<History> {
    cfg.validate()?;
    let max_epochs = cfg.epochs_for(x.n_rows());
    x.expect_random_access();
    let rng = Philox::new(cfg.seed);
    let mut history = History::default();
    let mut step = 0u64;
    let mut best = f64::INFINITY;
    let mut since_best = 0usize;
    for epoch in 0..max_epochs {
        let t0 = Instant::now();
        let kl_weight = cfg.kl_weight(epoch);
        let perm = rng.permutation(Stream::Shuffle, epoch as u64, split.train.len());
        let mut order: Vec<usize> = perm.iter().map(|&i| split.train[i]).collect();
        if let Some(max) = cfg.max_steps {
            let left = max.saturating_sub(step as usize);
            if left == 0 {
                break;
            }
            order.truncate(left * cfg.batch_size);
        }
        let mut train = LossSums::default();
        for_each_minibatch(x, cov, &order, cfg.batch_size, |mb| {
            if mb.len() < 2 {
                return Ok(()); // scvi-tools' split never leaves one; a BatchNorm cannot take it.
            }
            crate::interrupt::check()?;
            let p = engine.train_step(mb, step, kl_weight)?;
            step += 1;
            if !p.loss.is_finite() {
                return Err(Error::Data(format!(
                    "the training loss became {} at epoch {epoch}, step {step}; check the input for \
                     extreme values or lower the learning rate",
                    p.loss
                )));
            }
            train.add(&p);
            Ok(())
        })?;
        let validation = if split.validation.is_empty() {
            None
        } else {
            Some(evaluate(
                engine,
                x,
                cov,
                &split.validation,
                cfg.batch_size,
                kl_weight,
                EVAL_STEP_BASE + ((epoch as u64) << 20),
            )?)
        };
        let rec = EpochRecord::new(
            epoch,
            kl_weight,
            &train,
            validation.as_ref(),
            t0.elapsed().as_secs_f64(),
        );
        on_epoch(&rec, max_epochs);
        let monitored = rec.elbo_validation;
        history.epochs.push(rec);
        if crate::interrupt::take_after_epoch() {
            history.interrupted = true;
            break;
        }
        if cfg.early_stopping {
            if let Some(v) = monitored {
                if v < best - cfg.early_stopping_min_delta {
                    best = v;
                    since_best = 0;
                } else {
                    since_best += 1;
                    if since_best >= cfg.early_stopping_patience {
                        history.stopped_early = true;
                        break;
                    }
                }
            }
        }
    }
    Ok(history)
}
