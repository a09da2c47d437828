//! Flags shared by several commands: the model's hyper-parameters and the training settings, with
//! scvi-tools' defaults.

use clap::{Args, ValueEnum};
use scvi_rs::model::config::{MAX_HIDDEN, MAX_LATENT, MAX_LAYERS};
use scvi_rs::model::{
    Dispersion, GeneLikelihood, LatentDistribution, ModelConfig, NormPlacement, Precision,
};
use scvi_rs::train::{AdamConfig, TrainConfig};

// ------------------------------------------------------------------------------------------------
// Value parsers: a flag with a value that makes no sense, or one that would ask for more than any
// machine has, is refused before any work, with the allowed range (clap prints "invalid value
// '0' for '--n-hidden <N_HIDDEN>': must be a whole number from 1 to 16384").

/// A whole number in `lo..=hi`.
pub fn whole(s: &str, lo: usize, hi: usize) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ if hi == usize::MAX => Err(format!("must be a whole number, {lo} or more")),
        _ => Err(format!("must be a whole number from {lo} to {hi}")),
    }
}

/// A finite number that `ok` accepts; `want` says which, for the message.
fn real(s: &str, ok: fn(f64) -> bool, want: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && ok(v) => Ok(v),
        _ => Err(format!("must be {want}")),
    }
}

/// The largest minibatch accepted: scvi-tools' default is 128, GPU users go to a few thousand;
/// beyond 65,536 cells a step's `B x G` intermediates alone take gigabytes.
pub const MAX_BATCH_SIZE: usize = 1 << 16;

/// A seed: any 64-bit whole number.
pub fn seed(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| format!("must be a whole number from 0 to {}", u64::MAX))
}

/// A count that may be 0.
pub fn count(s: &str) -> Result<usize, String> {
    whole(s, 0, usize::MAX)
}

pub fn positive_count(s: &str) -> Result<usize, String> {
    whole(s, 1, usize::MAX)
}
fn hidden(s: &str) -> Result<usize, String> {
    whole(s, 1, MAX_HIDDEN)
}
fn latent(s: &str) -> Result<usize, String> {
    whole(s, 1, MAX_LATENT)
}
fn layers(s: &str) -> Result<usize, String> {
    whole(s, 1, MAX_LAYERS)
}
fn batch_size(s: &str) -> Result<usize, String> {
    whole(s, 2, MAX_BATCH_SIZE)
}
pub fn positive_real(s: &str) -> Result<f64, String> {
    real(s, |v| v > 0.0, "a positive finite number")
}
fn non_negative_real(s: &str) -> Result<f64, String> {
    real(s, |v| v >= 0.0, "a finite number, 0 or more")
}
fn fraction(s: &str) -> Result<f64, String> {
    real(s, |v| v > 0.0 && v <= 1.0, "a fraction in (0, 1]")
}
fn dropout(s: &str) -> Result<f64, String> {
    real(s, |v| (0.0..1.0).contains(&v), "a rate in [0, 1)")
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LikelihoodArg {
    Zinb,
    Nb,
    Poisson,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DispersionArg {
    Gene,
    GeneBatch,
    GeneLabel,
    GeneCell,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LatentArg {
    Normal,
    Ln,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PrecisionArg {
    F32,
    Bf16,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NormArg {
    Encoder,
    Decoder,
    Both,
    None,
}

impl From<NormArg> for NormPlacement {
    fn from(n: NormArg) -> Self {
        match n {
            NormArg::Encoder => NormPlacement::Encoder,
            NormArg::Decoder => NormPlacement::Decoder,
            NormArg::Both => NormPlacement::Both,
            NormArg::None => NormPlacement::None,
        }
    }
}

/// scvi-tools' `SCVI(...)` arguments.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    #[arg(long, default_value_t = 128, value_parser = hidden, allow_negative_numbers = true)]
    pub n_hidden: usize,
    #[arg(long, default_value_t = 10, value_parser = latent, allow_negative_numbers = true)]
    pub n_latent: usize,
    #[arg(long, default_value_t = 1, value_parser = layers, allow_negative_numbers = true)]
    pub n_layers: usize,
    #[arg(long, default_value_t = 0.1, value_parser = dropout, allow_hyphen_values = true)]
    pub dropout_rate: f64,
    #[arg(long, value_enum, default_value = "zinb")]
    pub gene_likelihood: LikelihoodArg,
    #[arg(long, value_enum, default_value = "gene")]
    pub dispersion: DispersionArg,
    #[arg(long, value_enum, default_value = "normal")]
    pub latent_distribution: LatentArg,
    #[arg(long, value_enum, default_value = "both")]
    pub use_batch_norm: NormArg,
    #[arg(long, value_enum, default_value = "none")]
    pub use_layer_norm: NormArg,
    /// Give the encoders the batch one-hot too.
    #[arg(long)]
    pub encode_covariates: bool,
    /// Inject the covariates into every hidden layer (scvi-tools' default: true).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub deeply_inject_covariates: bool,
    /// Learn a latent library size (`use_observed_lib_size=False`) instead of the observed one.
    #[arg(long)]
    pub latent_library: bool,
}

impl ModelArgs {
    pub fn config(&self) -> ModelConfig {
        ModelConfig {
            n_hidden: self.n_hidden,
            n_latent: self.n_latent,
            n_layers: self.n_layers,
            dropout_rate: self.dropout_rate,
            gene_likelihood: match self.gene_likelihood {
                LikelihoodArg::Zinb => GeneLikelihood::Zinb,
                LikelihoodArg::Nb => GeneLikelihood::Nb,
                LikelihoodArg::Poisson => GeneLikelihood::Poisson,
            },
            dispersion: match self.dispersion {
                DispersionArg::Gene => Dispersion::Gene,
                DispersionArg::GeneBatch => Dispersion::GeneBatch,
                DispersionArg::GeneLabel => Dispersion::GeneLabel,
                DispersionArg::GeneCell => Dispersion::GeneCell,
            },
            latent_distribution: match self.latent_distribution {
                LatentArg::Normal => LatentDistribution::Normal,
                LatentArg::Ln => LatentDistribution::Ln,
            },
            use_batch_norm: self.use_batch_norm.into(),
            use_layer_norm: self.use_layer_norm.into(),
            encode_covariates: self.encode_covariates,
            deeply_inject_covariates: self.deeply_inject_covariates,
            use_observed_lib_size: !self.latent_library,
            ..ModelConfig::default()
        }
    }
}

/// scvi-tools' `model.train(...)` arguments.
#[derive(Args, Clone, Debug)]
pub struct TrainArgs {
    /// Epochs; default scvi-tools' heuristic min(round(20000 / n_cells * 400), 400).
    #[arg(long, value_parser = positive_count, allow_negative_numbers = true)]
    pub max_epochs: Option<usize>,
    #[arg(long, default_value_t = 128, value_parser = batch_size, allow_negative_numbers = true)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0.9, value_parser = fraction, allow_hyphen_values = true)]
    pub train_size: f64,
    #[arg(long, default_value_t = 0, value_parser = seed, allow_negative_numbers = true)]
    pub seed: u64,
    #[arg(long, default_value_t = 1e-3, value_parser = positive_real, allow_hyphen_values = true)]
    pub lr: f64,
    #[arg(long, default_value_t = 1e-6, value_parser = non_negative_real, allow_hyphen_values = true)]
    pub weight_decay: f64,
    /// Epochs over which the KL weight rises from 0 to 1 (scvi-tools: 400).
    #[arg(long, default_value_t = 400, value_parser = count, allow_negative_numbers = true)]
    pub n_epochs_kl_warmup: usize,
    /// Stop when elbo_validation has not improved for --early-stopping-patience epochs.
    #[arg(long)]
    pub early_stopping: bool,
    #[arg(long, default_value_t = 45, value_parser = count, allow_negative_numbers = true)]
    pub early_stopping_patience: usize,
    #[arg(long, default_value_t = 0.0, value_parser = non_negative_real, allow_hyphen_values = true)]
    pub early_stopping_min_delta: f64,
    /// Stop after this many training steps in all, even mid-epoch (for benchmarks).
    #[arg(long, value_parser = positive_count, allow_negative_numbers = true)]
    pub max_steps: Option<usize>,
    /// The decoder output heads' products: f32, or bf16 operands with f32 accumulation (CPU;
    /// AMX-BF16 where the CPU has it, else emulated at f32 speed, as the log says).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
}

impl TrainArgs {
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            max_epochs: self.max_epochs,
            batch_size: self.batch_size,
            train_size: self.train_size,
            seed: self.seed,
            adam: AdamConfig {
                lr: self.lr,
                weight_decay: self.weight_decay,
                ..AdamConfig::default()
            },
            n_epochs_kl_warmup: self.n_epochs_kl_warmup,
            early_stopping: self.early_stopping,
            early_stopping_patience: self.early_stopping_patience,
            early_stopping_min_delta: self.early_stopping_min_delta,
            max_steps: self.max_steps,
            precision: match self.precision {
                PrecisionArg::F32 => Precision::F32,
                PrecisionArg::Bf16 => Precision::Bf16,
            },
            ..TrainConfig::default()
        }
    }
}
