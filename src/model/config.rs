//! The model's hyper-parameters, with scvi-tools' `SCVI` defaults, and the constants of its modules
//! that are not options (every engine uses these; the CUDA kernels get them from here at compile
//! time).

use crate::error::{Error, Result};
pub use crate::math::likelihood::GeneLikelihood;
use serde::{Deserialize, Serialize};

/// scvi-tools' `Encoder.var_eps`: `q_v = exp(u) + VAR_EPS`.
pub const VAR_EPS: f64 = 1e-4;
/// `nn.BatchNorm1d(momentum=0.01, eps=0.001)` in `FCLayers`.
pub const BN_EPS: f64 = 1e-3;
pub const BN_MOMENTUM: f64 = 0.01;
/// `nn.LayerNorm(elementwise_affine=False)`: torch's default eps.
pub const LN_EPS: f64 = 1e-5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dispersion {
    /// One `theta` per gene (`px_r: [G]`).
    Gene,
    /// One per gene and batch (`px_r: [G, n_batch]`).
    GeneBatch,
    /// One per gene and label (`px_r: [G, n_labels]`).
    GeneLabel,
    /// Per gene and cell, from a decoder head (`decoder.px_r_decoder`).
    GeneCell,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatentDistribution {
    Normal,
    /// Logistic normal: `z = softmax(q_m + sqrt(q_v) eps)`.
    Ln,
}

/// The arithmetic of the decoder output heads' products (`--precision`). `F32` everywhere is the
/// default and the reference; `Bf16` gives the heads' three products (forward, weight and input
/// gradients) bf16 operands with f32 accumulation and keeps everything else f32: master weights,
/// optimiser state, the likelihood and its gradient (src/cpu/gemm_bf16.rs; BENCHMARKS.md has the
/// speed and the quality guard).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

/// Where a normalisation applies (`use_batch_norm` / `use_layer_norm`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormPlacement {
    Encoder,
    Decoder,
    Both,
    None,
}

impl NormPlacement {
    pub fn encoder(self) -> bool {
        matches!(self, NormPlacement::Encoder | NormPlacement::Both)
    }
    pub fn decoder(self) -> bool {
        matches!(self, NormPlacement::Decoder | NormPlacement::Both)
    }
}

/// Everything that fixes the shapes and the function of the model (scvi-tools' `VAE` arguments).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Genes.
    pub n_input: usize,
    /// Batch categories (1 when there is no batch key).
    pub n_batch: usize,
    /// Label categories (1 when there is no labels key).
    pub n_labels: usize,
    pub n_hidden: usize,
    pub n_latent: usize,
    pub n_layers: usize,
    pub dropout_rate: f64,
    pub dispersion: Dispersion,
    pub gene_likelihood: GeneLikelihood,
    pub latent_distribution: LatentDistribution,
    pub encode_covariates: bool,
    pub deeply_inject_covariates: bool,
    pub use_batch_norm: NormPlacement,
    pub use_layer_norm: NormPlacement,
    /// Observed library size `log(sum x)` (true) or a latent one with its own encoder (false).
    pub use_observed_lib_size: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            n_input: 0,
            n_batch: 1,
            n_labels: 1,
            n_hidden: 128,
            n_latent: 10,
            n_layers: 1,
            dropout_rate: 0.1,
            dispersion: Dispersion::Gene,
            gene_likelihood: GeneLikelihood::Zinb,
            latent_distribution: LatentDistribution::Normal,
            encode_covariates: false,
            deeply_inject_covariates: true,
            use_batch_norm: NormPlacement::Both,
            use_layer_norm: NormPlacement::None,
            use_observed_lib_size: true,
        }
    }
}

/// The largest hidden layer accepted (`--n-hidden`, `n_hidden` in a model file): scvi-tools
/// uses 128; 16,384 is already 128 times that, and bounds every tensor to 2^46 values.
pub const MAX_HIDDEN: usize = 1 << 14;
/// The largest latent space accepted (`--n-latent`; scvi-tools' default is 10).
pub const MAX_LATENT: usize = 1 << 14;
/// The most hidden layers accepted (`--n-layers`; scvi-tools' default is 1).
pub const MAX_LAYERS: usize = 64;
/// The most batch or label categories a model can have (each is a column of the covariate
/// one-hot, so a model with more is mostly covariates).
pub const MAX_CATEGORIES: usize = 1 << 20;
/// The most genes: gene indices are 32-bit.
pub const MAX_GENES: usize = 1 << 32;

impl ModelConfig {
    /// One-hot width of the batch covariate: scvi-tools' `FCLayers` drops a category list of one.
    pub fn batch_onehot_width(&self) -> usize {
        if self.n_batch > 1 {
            self.n_batch
        } else {
            0
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.n_input == 0 {
            return bad("the model needs at least one gene".into());
        }
        if self.n_hidden == 0 || self.n_latent == 0 || self.n_layers == 0 {
            return bad(format!(
                "n_hidden ({}), n_latent ({}) and n_layers ({}) must be at least 1",
                self.n_hidden, self.n_latent, self.n_layers
            ));
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return bad(format!(
                "dropout_rate must be in [0, 1), got {}",
                self.dropout_rate
            ));
        }
        if self.n_batch == 0 || self.n_labels == 0 {
            return bad("n_batch and n_labels must be at least 1".into());
        }
        for (name, v, max) in [
            ("n_input (genes)", self.n_input, MAX_GENES),
            ("n_hidden", self.n_hidden, MAX_HIDDEN),
            ("n_latent", self.n_latent, MAX_LATENT),
            ("n_layers", self.n_layers, MAX_LAYERS),
            ("n_batch", self.n_batch, MAX_CATEGORIES),
            ("n_labels", self.n_labels, MAX_CATEGORIES),
        ] {
            if v > max {
                return bad(format!("{name} is {v}; at most {max} is supported"));
            }
        }
        Ok(())
    }
}
