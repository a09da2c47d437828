//! What a trained model is used for after training, with scvi-tools 1.4.2's definitions
//! (`VAEMixin`, `RNASeqMixin`, `DifferentialComputation`, `VAE.marginal_ll` / `generative` /
//! `sample`), computed by batched Monte Carlo forward passes through an [`Engine`]:
//!
//! ```text
//! posterior.rs    the draws: encode a chunk of cells once, decode many (cell, sample) rows at once
//! marginal_ll.rs  get_marginal_ll: importance sampling with the posterior as proposal
//! normalize.rs    get_normalized_expression
//! de.rs           differential_expression, vanilla and change modes, its table
//! predictive.rs   posterior_predictive_sample: gamma-Poisson counts, zero inflation
//! metrics.rs      latent-space quality (kNN label accuracy, batch mixing)
//! output.rs       .npy / .csv matrices
//! h5ad_out.rs     the input plus a result, as an .h5ad
//! ```
//!
//! # The quantities, exactly as scvi-tools 1.4.2 computes them
//!
//! Notation: a cell's counts `x` (G genes), its observed batch `s`, the encoder's posterior
//! `q(z | x) = N(m, diag v)` (`v = exp(u) + 1e-4`), the decoder's `px_scale = softmax(rho(z, s))`,
//! the log library `l` (observed: `log sum_g x_g`; latent: a draw from `q(l | x) = N(m_l, v_l)`),
//! `px_rate = exp(l) px_scale`. Every method runs the module in inference mode (BatchNorm running
//! statistics, no dropout). `z` below is the decoder's input: for the logistic normal
//! (`latent_distribution = "ln"`) the softmax of the normal draw, and scvi-tools evaluates the
//! densities of `marginal_ll` at that transformed `z` too; we do the same.
//!
//! - `elbo` = `get_elbo()` = `-mean_cells(rec + KL_z + KL_l)`: a negative number, higher is
//!   better. `rec = -sum_g log p(x_g | z, l)` for one posterior draw of z (and l); `KL_z` (and
//!   `KL_l` against the batch's log-normal prior) in closed form, unweighted.
//! - `reconstruction_error` = `get_reconstruction_error()["reconstruction_loss"]` =
//!   `mean_cells(rec)`: positive (scvi-tools' docstring says "higher is better"; the number it
//!   returns is this positive mean negative log-likelihood).
//! - `kl_local` = `mean_cells(KL_z + KL_l)`: positive; `elbo = -(reconstruction_error + kl_local)`
//!   when both come from the same draw, as here.
//! - `marginal_ll` = `get_marginal_ll(n_mc_samples=S)`: per cell
//!   `log p(x) ~= logsumexp_s [log p(z_s) + log p(x | z_s, l_s) - log q(z_s | x)
//!   (+ log p(l_s) - log q(l_s | x))] - log S`, with `z_s ~ q(z | x)` independent draws; negative,
//!   higher is better. With `return_mean`, scvi-tools averages the per-minibatch means of its data
//!   loader (minibatches of `scvi.settings.batch_size` = 128 cells in order), so a short last
//!   minibatch weighs more than its cells: [`marginal_ll::scvi_tools_mean`] reproduces that.
//! - normalized expression (`get_normalized_expression`): for each of `n_samples` draws of z (a
//!   draw, not the mean, even for one sample) and each `transform_batch` category `t` (decoded with
//!   batch `t`; `None` is the cell's own), `px_scale * library_size`, or with
//!   `library_size = "latent"` `px_rate` (rows then sum to the cell's library), averaged over the
//!   categories and, with `return_mean`, over the draws. Each category gets its own draws of z.
//! - differential expression: see [`de`].
//! - posterior predictive samples (`posterior_predictive_sample`): per draw of z (and l), counts
//!   from the likelihood: Poisson(`min(px_rate, 1e8)`); NB as a gamma-Poisson mixture,
//!   `Poisson(min(Gamma(theta, theta / px_rate), 1e8))`; ZINB that, set to 0 with probability
//!   `sigmoid(pi)`.
//!
//! # Randomness
//!
//! scvi-tools draws from torch's global generator; we draw from the seeded Philox streams
//! (src/rng.rs): the draw of z for (cell, `transform_batch` slot, sample) is a pure function of the
//! seed, so results do not depend on the chunking or the thread count, and the same seed gives the
//! same outputs. Results agree with scvi-tools' in distribution, within Monte Carlo error.
//!
//! [`Engine`]: crate::engine::Engine

pub mod de;
pub mod h5ad_out;
pub mod marginal_ll;
pub mod metrics;
pub mod normalize;
pub mod output;
pub mod posterior;
pub mod predictive;
