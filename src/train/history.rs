//! The training history: one record per epoch with scvi-tools' column names, written as CSV. The
//! records and the loss sums they come from are kept in checkpoints exactly (`super::exact`).

use super::exact;
use crate::engine::LossParts;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Loss parts summed over minibatches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossSums {
    pub n_cells: usize,
    /// Sum over minibatches of `loss * n_cells` (the objective, KL warm-up weight included).
    #[serde(with = "exact")]
    pub weighted_loss: f64,
    #[serde(with = "exact")]
    pub reconstruction: f64,
    #[serde(with = "exact")]
    pub kl_z: f64,
    #[serde(with = "exact")]
    pub kl_l: f64,
}

impl LossSums {
    pub fn add(&mut self, p: &LossParts) {
        self.n_cells += p.n_cells;
        self.weighted_loss += p.loss * p.n_cells as f64;
        self.reconstruction += p.reconstruction_sum;
        self.kl_z += p.kl_z_sum;
        self.kl_l += p.kl_l_sum;
    }
    fn per_cell(&self, v: f64) -> f64 {
        v / self.n_cells.max(1) as f64
    }
    /// The negative ELBO per cell (reconstruction + unweighted KL), scvi-tools' `elbo_*`.
    pub fn elbo(&self) -> f64 {
        self.per_cell(self.reconstruction + self.kl_z + self.kl_l)
    }
    pub fn loss(&self) -> f64 {
        self.per_cell(self.weighted_loss)
    }
    pub fn reconstruction_loss(&self) -> f64 {
        self.per_cell(self.reconstruction)
    }
    pub fn kl_local(&self) -> f64 {
        self.per_cell(self.kl_z + self.kl_l)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    #[serde(with = "exact")]
    pub kl_weight: f64,
    #[serde(with = "exact")]
    pub train_loss: f64,
    #[serde(with = "exact")]
    pub elbo_train: f64,
    #[serde(with = "exact")]
    pub reconstruction_loss_train: f64,
    #[serde(with = "exact")]
    pub kl_local_train: f64,
    #[serde(with = "exact::option")]
    pub validation_loss: Option<f64>,
    #[serde(with = "exact::option")]
    pub elbo_validation: Option<f64>,
    #[serde(with = "exact::option")]
    pub reconstruction_loss_validation: Option<f64>,
    #[serde(with = "exact::option")]
    pub kl_local_validation: Option<f64>,
    /// Wall-clock time of the epoch (an interrupted one: the time before and after the stop).
    #[serde(with = "exact")]
    pub seconds: f64,
    /// The cells trained on in this epoch: the whole training split, or fewer when `--max-steps`
    /// stopped the epoch part-way (so that `cells_per_second` counts only cells trained). Absent
    /// in checkpoints written before it existed: 0.
    #[serde(default)]
    pub cells: usize,
}

impl EpochRecord {
    pub fn new(
        epoch: usize,
        kl_weight: f64,
        train: &LossSums,
        val: Option<&LossSums>,
        seconds: f64,
    ) -> Self {
        EpochRecord {
            epoch,
            kl_weight,
            train_loss: train.loss(),
            elbo_train: train.elbo(),
            reconstruction_loss_train: train.reconstruction_loss(),
            kl_local_train: train.kl_local(),
            validation_loss: val.map(|v| v.loss()),
            elbo_validation: val.map(|v| v.elbo()),
            reconstruction_loss_validation: val.map(|v| v.reconstruction_loss()),
            kl_local_validation: val.map(|v| v.kl_local()),
            seconds,
            cells: train.n_cells,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub epochs: Vec<EpochRecord>,
    pub stopped_early: bool,
    /// Training stopped after an epoch because [`crate::interrupt::request_after_epoch`] asked.
    #[serde(default)]
    pub interrupted: bool,
}

impl History {
    pub const COLUMNS: [&'static str; 14] = [
        "epoch",
        "train_loss",
        "elbo_train",
        "reconstruction_loss_train",
        "kl_local_train",
        "kl_global_train",
        "validation_loss",
        "elbo_validation",
        "reconstruction_loss_validation",
        "kl_local_validation",
        "kl_global_validation",
        "kl_weight",
        "seconds",
        "cells_per_second",
    ];

    /// CSV with scvi-tools' column names; missing validation values are empty. `cells_per_second`
    /// is the cells trained on in the epoch over the epoch's time (its validation pass included).
    pub fn to_csv(&self) -> String {
        let mut s = Self::COLUMNS.join(",");
        s.push('\n');
        let opt = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
        for r in &self.epochs {
            let has_val = r.elbo_validation.is_some();
            let _ = writeln!(
                s,
                "{},{},{},{},{},0,{},{},{},{},{},{},{:.4},{:.1}",
                r.epoch,
                r.train_loss,
                r.elbo_train,
                r.reconstruction_loss_train,
                r.kl_local_train,
                opt(r.validation_loss),
                opt(r.elbo_validation),
                opt(r.reconstruction_loss_validation),
                opt(r.kl_local_validation),
                if has_val { "0" } else { "" },
                r.kl_weight,
                r.seconds,
                r.cells as f64 / r.seconds.max(1e-9)
            );
        }
        s
    }
}
