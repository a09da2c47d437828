//! Where a training run stands between two steps: everything its future depends on besides the
//! model's values and the optimiser's state (which the engine holds) and the split. With those
//! three, a checkpoint continues to the same model, bit for bit, as a run that never stopped:
//! the shuffled order of an epoch is a function of (seed, epoch), the noise of a step of (seed,
//! step), the KL weight of the epoch, so counters are the whole generator state.

use super::exact;
use super::history::{History, LossSums};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The epoch under way (0-based), which is also the number of epochs finished.
    pub epoch: usize,
    /// Minibatches of this epoch's shuffled order already trained on. Equal to the epoch's
    /// minibatch count when only its validation pass is left.
    pub batches_done: usize,
    /// Training steps taken in all: the index that keys the next step's noise, and what
    /// `max_steps` counts.
    pub step: u64,
    /// This epoch's training losses so far (its history row is made from them).
    pub epoch_sums: LossSums,
    /// Seconds this epoch ran before the run stopped; its record adds the time after the resume.
    #[serde(with = "exact")]
    pub epoch_seconds: f64,
    /// The records of the finished epochs.
    pub history: History,
    /// Early stopping: the best `elbo_validation` so far (`inf` before the first) ...
    #[serde(with = "exact")]
    pub best: f64,
    /// ... and the epochs since it last improved.
    pub since_best: usize,
    /// No step is left: the epochs or the steps ran out, or early stopping stopped the run.
    pub finished: bool,
}

impl Default for Progress {
    /// A run that has not started.
    fn default() -> Self {
        Progress {
            epoch: 0,
            batches_done: 0,
            step: 0,
            epoch_sums: LossSums::default(),
            epoch_seconds: 0.0,
            history: History::default(),
            best: f64::INFINITY,
            since_best: 0,
            finished: false,
        }
    }
}

impl Progress {
    /// Close the epoch under way with its record: the history grows, early stopping looks at the
    /// held-out ELBO, and the position moves to the start of the next epoch.
    pub(super) fn end_epoch(&mut self, record: super::EpochRecord, cfg: &super::TrainConfig) {
        let monitored = record.elbo_validation;
        self.history.epochs.push(record);
        self.epoch += 1;
        self.batches_done = 0;
        self.epoch_sums = LossSums::default();
        self.epoch_seconds = 0.0;
        if let (true, Some(v)) = (cfg.early_stopping, monitored) {
            if v < self.best - cfg.early_stopping_min_delta {
                self.best = v;
                self.since_best = 0;
            } else {
                self.since_best += 1;
                if self.since_best >= cfg.early_stopping_patience {
                    self.history.stopped_early = true;
                    self.finished = true;
                }
            }
        }
    }
}
