//! The contract every engine implements (the CPU reference in `cpu/`, the GPU engine in `cuda/`), so
//! the trainer, the inference code, the CLI and the tests do not know which one runs: the
//! [`Engine`] trait and the types it speaks ([`LossParts`], [`Pass`], [`Mode`], [`AdamConfig`]),
//! and the checks every engine makes on a minibatch before it computes ([`validate_minibatch`]).
//!
//! An engine owns the model's values, the optimiser state and its buffers; noise comes from the
//! shared Philox streams (src/rng.rs) keyed by the step, so both engines draw the same numbers. The
//! engines stand side by side below this file: neither imports the other.

use crate::batch::Minibatch;
use crate::error::{Error, Result};
use crate::model::init::ModelState;
use crate::model::layout::Layout;
use serde::{Deserialize, Serialize};

pub trait Engine {
    /// The forward pass over `batch` and, with `pass.grads`, the backward pass into the engine's
    /// gradient buffer (zeroed first). In `Mode::Train` BatchNorm uses and updates batch
    /// statistics and dropout is on. The per-cell losses are kept for [`Engine::per_cell_losses`].
    fn forward_backward(&mut self, batch: &Minibatch, pass: Pass) -> Result<LossParts>;
    /// One Adam update of the parameters with the gradients of the last backward pass.
    fn adam_update(&mut self) -> Result<()>;
    /// Forward, backward and one Adam update on a training minibatch; `step` keys the noise.
    fn train_step(&mut self, batch: &Minibatch, step: u64, kl_weight: f64) -> Result<LossParts> {
        let parts = self.forward_backward(batch, Pass::train(step, kl_weight))?;
        self.adam_update()?;
        Ok(parts)
    }
    /// The loss in inference mode (running BatchNorm statistics, no dropout), noise keyed by `step`.
    fn eval_loss(&mut self, batch: &Minibatch, step: u64, kl_weight: f64) -> Result<LossParts> {
        self.forward_backward(batch, Pass::eval(step, kl_weight))
    }
    /// Per-cell reconstruction loss, KL_z and KL_l of the last `eval_loss` / `train_step`.
    fn per_cell_losses(&self, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>);
    /// The posterior `q_m`, `q_v` (`[B, L]` each, row-major) in inference mode.
    fn encode(&mut self, batch: &Minibatch) -> Result<(Vec<f32>, Vec<f32>)>;
    /// Both encoders' posteriors in inference mode (no noise): what the after-training methods
    /// (`crate::infer`) sample from. Engines that lack it say so.
    fn posteriors(&mut self, batch: &Minibatch, out: &mut Posteriors) -> Result<()> {
        let _ = (batch, out);
        Err(not_implemented(
            &self.name(),
            "the posteriors of both encoders",
        ))
    }
    /// scvi-tools' `generative` in inference mode on given latents (`crate::infer`): row `r` of
    /// `rows` is decoded from `z[r]` (`[R, L]`, after the logistic normal's softmax) with log
    /// library `library[r]` under its batch and label codes; `what` says what to fill in `out`.
    fn generative(
        &mut self,
        rows: &Minibatch,
        z: &[f32],
        library: &[f32],
        what: GenerativeOutputs,
        out: &mut Generative,
    ) -> Result<()> {
        let _ = (rows, z, library, what, out);
        Err(not_implemented(
            &self.name(),
            "the decoder on given latents",
        ))
    }
    /// The model's current values, in f32.
    fn state(&self) -> ModelState<f32>;
    /// A short name for messages ("cpu", "cuda:0").
    fn name(&self) -> String;
}

/// The error of an engine without an after-training entry (the GPU engine, for now).
fn not_implemented(engine: &str, what: &str) -> Error {
    Error::Cuda(format!(
        "{engine}: {what} (evaluate, normalize, de, sample) is not implemented on the GPU yet; \
         run these commands with --device cpu"
    ))
}

/// The posteriors of a minibatch's cells in inference mode (f32, row-major).
#[derive(Clone, Debug, Default)]
pub struct Posteriors {
    /// `q_m` and `q_v` of z, `[B, L]` each.
    pub z_mean: Vec<f32>,
    pub z_var: Vec<f32>,
    /// `q_m` and `q_v` of the log library, `[B]` each; empty with the observed library.
    pub library_mean: Vec<f32>,
    pub library_var: Vec<f32>,
}

/// What [`Engine::generative`] fills in [`Generative`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerativeOutputs {
    /// `px_scale` only (normalized expression, differential expression).
    Scale,
    /// `px_scale` and each row's reconstruction loss `-log p(x | z, l)` (the marginal likelihood).
    Likelihood,
    /// Those and the likelihood's parameters `theta` and the zero-inflation logits (posterior
    /// predictive samples).
    Parameters,
}

/// The decoder's outputs for R rows, reused from call to call. `[R, G]` planes are row-major.
#[derive(Clone, Debug, Default)]
pub struct Generative {
    /// `px_scale = softmax(rho)`; `px_rate = exp(library) px_scale`.
    pub px_scale: Vec<f32>,
    /// `-sum_g log p(x_g | z, l)` per row (`Likelihood`, `Parameters`).
    pub reconstruction: Vec<f64>,
    /// `theta` per row and gene (`Parameters`, NB and ZINB; empty for Poisson).
    pub theta: Vec<f32>,
    /// Zero-inflation logits `pi` per row and gene (`Parameters`, ZINB only).
    pub zi_logits: Vec<f32>,
}

/// The parts of a minibatch's loss, summed over its cells.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossParts {
    pub n_cells: usize,
    /// The minibatch objective: `mean(rec + kl_weight KL_z + KL_l)`.
    pub loss: f64,
    pub reconstruction_sum: f64,
    pub kl_z_sum: f64,
    pub kl_l_sum: f64,
    pub kl_weight: f64,
}

impl LossParts {
    /// The parts of `b` cells from their sums: `loss = (rec + kl_weight KL_z + KL_l) / b`.
    pub fn from_sums(b: usize, rec_sum: f64, kl_z_sum: f64, kl_l_sum: f64, kl_weight: f64) -> Self {
        LossParts {
            n_cells: b,
            loss: (rec_sum + kl_weight * kl_z_sum + kl_l_sum) / b as f64,
            reconstruction_sum: rec_sum,
            kl_z_sum,
            kl_l_sum,
            kl_weight,
        }
    }
}

/// One pass over a minibatch: the step index that keys its noise, the KL weight, the mode, and
/// whether the backward pass runs too.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pass {
    pub step: u64,
    pub kl_weight: f64,
    pub mode: Mode,
    pub grads: bool,
}

impl Pass {
    /// A training pass with gradients.
    pub fn train(step: u64, kl_weight: f64) -> Pass {
        Pass {
            step,
            kl_weight,
            mode: Mode::Train,
            grads: true,
        }
    }
    /// An inference pass, loss only.
    pub fn eval(step: u64, kl_weight: f64) -> Pass {
        Pass {
            step,
            kl_weight,
            mode: Mode::Eval,
            grads: false,
        }
    }
}

/// Whether the network runs as in training (batch statistics, dropout) or inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// Adam exactly as `torch.optim.Adam(params, lr, eps, weight_decay)` under scvi-tools'
/// `TrainingPlan`: lr 1e-3, betas (0.9, 0.999), eps 0.01, weight_decay 1e-6 added to the gradient,
/// no amsgrad. The update itself is `cpu::adam` (and its kernel twin, kernels/adam.cu).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 0.01,
            weight_decay: 1e-6,
        }
    }
}

impl AdamConfig {
    /// The bias corrections of update `t` (1-based), in f64 on the host for every engine:
    /// `(lr / (1 - b1^t), sqrt(1 - b2^t))`.
    pub fn step_constants(&self, t: u64) -> (f64, f64) {
        let t = t as i32;
        (
            self.lr / (1.0 - self.beta1.powi(t)),
            (1.0 - self.beta2.powi(t)).sqrt(),
        )
    }
}

/// What every engine checks before it computes on `batch` (the GPU kernels rely on all of it; the
/// CPU engine would index out of bounds or compute garbage without it): the gene count, at least
/// one cell (two for a BatchNorm in training), covariates for every cell, batch and label codes in
/// range, CSR arrays that agree with each other, fewer than 2^32 non-zeros, and column indices
/// strictly increasing and below the gene count in every row. The index check reads every non-zero
/// once, a few microseconds against a step's milliseconds.
pub fn validate_minibatch(batch: &Minibatch, layout: &Layout, mode: Mode) -> Result<()> {
    let cfg = &layout.config;
    if batch.n_genes != cfg.n_input {
        return Err(Error::Shape(format!(
            "minibatch has {} genes, the model {}",
            batch.n_genes, cfg.n_input
        )));
    }
    if batch.is_empty() {
        return Err(Error::Data("empty minibatch".into()));
    }
    if mode == Mode::Train && batch.len() < 2 && layout.batch_norms().next().is_some() {
        return Err(Error::Data(
            "BatchNorm cannot train on a minibatch of one cell".to_string(),
        ));
    }
    let b = batch.len();
    if batch.batch.len() < b || batch.labels.len() < b || batch.log_library.len() < b {
        return Err(Error::Shape(
            "minibatch covariates shorter than its rows".into(),
        ));
    }
    let out_of_range =
        |codes: &[u32], n: usize| codes[..b].iter().copied().find(|&s| s as usize >= n);
    if let Some(s) = out_of_range(&batch.batch, cfg.n_batch) {
        return Err(Error::Data(format!(
            "batch code {s} out of range (n_batch {})",
            cfg.n_batch
        )));
    }
    if let Some(s) = out_of_range(&batch.labels, cfg.n_labels) {
        return Err(Error::Data(format!(
            "label code {s} out of range (n_labels {})",
            cfg.n_labels
        )));
    }
    if batch.indptr.len() != b + 1
        || batch.indices.len() != batch.values.len()
        || batch.indptr[b] != batch.indices.len()
        || batch.indptr.windows(2).any(|w| w[0] > w[1])
    {
        return Err(Error::Shape("minibatch CSR arrays disagree".into()));
    }
    if batch.indices.len() > u32::MAX as usize {
        return Err(Error::Data("minibatch has more than 2^32 non-zeros".into()));
    }
    for i in 0..b {
        let (idx, _) = batch.row(i);
        let ok = idx.windows(2).all(|w| w[0] < w[1])
            && idx.last().is_none_or(|&g| (g as usize) < cfg.n_input);
        if !ok {
            return Err(Error::Data(format!(
                "minibatch row {i}: column indices must be strictly increasing and below {}",
                cfg.n_input
            )));
        }
    }
    Ok(())
}
