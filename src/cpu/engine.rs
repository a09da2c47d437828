//! One scVI step on the CPU: encoders, reparameterisation, KL, decoder, likelihood, and the backward
//! pass through all of them. Shapes: B cells, G genes, H hidden units, L latent dimensions,
//! K batch categories.
//!
//! ```text
//! h_e = FC(log1p x [, onehot s])           q_m = h_e W_m^T + b_m     q_v = exp(h_e W_v^T + b_v) + VAR_EPS
//! z   = q_m + sqrt(q_v) eps_z   (ln: softmax of it)
//! h_d = FC(z, onehot s)                    rho = h_d W_s^T + b_s     pi = h_d W_pi^T + b_pi
//! loss = mean_b [ -sum_g log p(x_bg | exp(lib_b) softmax(rho_b), theta, pi) + kl_weight KL_z + KL_l ]
//! ```
//! Gradients accumulate into a flat buffer in the parameters' layout; only tensors that this
//! configuration uses (`Tensor::trainable`) receive any.
//!
//! This file strings the op families together, as src/cuda/engine.rs does with their kernels; the
//! maths of each lives in its own module (`sparse`, `fc`, `latent`, `output`, `gemm`), the twin of a
//! kernel file.

use super::fc::{
    fc_post_backward, fc_post_forward, linear_backward, linear_forward, BnStats, DropoutKey,
    FcCache, FcGrads, FcParams,
};
use super::gemm::linear_fwd;
use super::latent::{
    library_backward, library_forward, library_observed_forward, posterior_variance,
    reparam_kl_backward, reparam_kl_forward, LibraryPrior, Posterior, PosteriorGrads,
};
use super::output::{
    decoder_output, dispersion_category_backward, HeadBiases, OutputPlanes, ThetaSource, ThetaTable,
};
use super::simd::{exp_shift_sum, lane_max};
use super::sparse::{
    sparse_log1p_linear_backward, sparse_log1p_linear_forward, SparseInput, SparseScratch,
};
use crate::batch::Minibatch;
use crate::engine::{validate_minibatch, LossParts, Mode};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::model::config::{Dispersion, LatentDistribution};
use crate::model::init::ModelState;
use crate::model::layout::{EncoderIds, FcLayerIds, Layout, LinearIds, LinearShape};
use crate::rng::{Philox, Stream};
use std::ops::Range;
use std::sync::Arc;

/// The noise of one step: reparameterisation draws and the dropout key.
pub struct StepNoise<'a, T> {
    /// `[B, L]` standard normals for z.
    pub eps_z: &'a [T],
    /// `[B]` standard normals for the latent library (ignored with the observed library).
    pub eps_l: &'a [T],
    /// The generator and step index that key the dropout masks (None: no dropout).
    pub dropout: Option<(Philox, u64)>,
}

/// Owned noise buffers drawn from the Philox streams, so every engine draws the same numbers.
#[derive(Default)]
pub struct NoiseBuffers<T> {
    pub eps_z: Vec<T>,
    pub eps_l: Vec<T>,
    scratch: Vec<f64>,
}

impl<T: Float> NoiseBuffers<T> {
    pub fn draw(&mut self, rng: &Philox, step: u64, b: usize, n_latent: usize) {
        self.scratch.resize(b * n_latent, 0.0);
        rng.fill_normal(Stream::LatentNoise, step, &mut self.scratch);
        self.eps_z.clear();
        self.eps_z
            .extend(self.scratch.iter().map(|&v| T::from_f64(v)));
        self.scratch.resize(b, 0.0);
        rng.fill_normal(Stream::LibraryNoise, step, &mut self.scratch);
        self.eps_l.clear();
        self.eps_l
            .extend(self.scratch.iter().map(|&v| T::from_f64(v)));
    }

    pub fn as_step(&self, dropout: Option<(Philox, u64)>) -> StepNoise<'_, T> {
        StepNoise {
            eps_z: &self.eps_z,
            eps_l: &self.eps_l,
            dropout,
        }
    }
}

/// Which encoder.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Z,
    L,
}

#[derive(Default)]
struct EncoderWork<T> {
    layers: Vec<FcCache<T>>,
    lin: Vec<T>,
    q_m: Vec<T>,
    u: Vec<T>,
    q_v: Vec<T>,
    d_q_m: Vec<T>,
    d_u: Vec<T>,
    d_h: Vec<T>,
    d_h2: Vec<T>,
}

impl<T> EncoderWork<T> {
    /// The posterior of the minibatch's first `n` elements (`B * n_out`).
    fn posterior(&self, n: usize) -> Posterior<'_, T> {
        Posterior {
            q_m: &self.q_m[..n],
            u: &self.u[..n],
            q_v: &self.q_v[..n],
        }
    }

    /// The posterior and, beside it, its gradients to write.
    fn posterior_and_grads(&mut self, n: usize) -> (Posterior<'_, T>, PosteriorGrads<'_, T>) {
        (
            Posterior {
                q_m: &self.q_m[..n],
                u: &self.u[..n],
                q_v: &self.q_v[..n],
            },
            PosteriorGrads {
                d_q_m: &mut self.d_q_m[..n],
                d_u: &mut self.d_u[..n],
            },
        )
    }
}

/// The latent library's prior for the cells of `batch` (latent library only).
fn library_prior<'a, T: Float>(
    state: &'a ModelState<T>,
    layout: &Layout,
    batch: &'a Minibatch,
) -> LibraryPrior<'a, T> {
    LibraryPrior {
        codes: &batch.batch,
        means: state.buffer(layout.library_log_means.expect("latent library prior")),
        vars: state.buffer(layout.library_log_vars.expect("latent library prior")),
    }
}

/// The CPU engine for one model layout; its buffers grow to the largest minibatch seen and are
/// reused, so a warmed-up step allocates nothing.
pub struct CpuEngine<T> {
    layout: Arc<Layout>,
    z_enc: EncoderWork<T>,
    l_enc: EncoderWork<T>,
    dec_layers: Vec<FcCache<T>>,
    dec_lin: Vec<T>,
    /// Decoder input `[B, L]` (z, after the softmax for `ln`).
    z: Vec<T>,
    d_z: Vec<T>,
    d_hd: Vec<T>,
    d_hd2: Vec<T>,
    planes: OutputPlanes<T>,
    theta_table: ThetaTable<T>,
    /// `log1p` of the minibatch's counts (shared by both encoders) and the sparse layer's scratch.
    input: SparseInput<T>,
    sparse: SparseScratch<T>,
    library: Vec<T>,
    kl_z: Vec<f64>,
    kl_l: Vec<f64>,
    capacity: usize,
}

/// Disjoint mutable views of several tensors of one flat buffer.
fn split_mut<T, const N: usize>(buf: &mut [T], ranges: [Range<usize>; N]) -> [&mut [T]; N] {
    for i in 0..N {
        assert!(ranges[i].end <= buf.len());
        for j in 0..i {
            assert!(ranges[i].end <= ranges[j].start || ranges[j].end <= ranges[i].start);
        }
    }
    let p = buf.as_mut_ptr();
    // SAFETY: the ranges are in bounds and pairwise disjoint (checked above).
    ranges.map(|r| unsafe { std::slice::from_raw_parts_mut(p.add(r.start), r.len()) })
}

impl<T: Float> CpuEngine<T> {
    pub fn new(layout: Layout) -> Self {
        CpuEngine {
            layout: Arc::new(layout),
            z_enc: EncoderWork::default(),
            l_enc: EncoderWork::default(),
            dec_layers: Vec::new(),
            dec_lin: Vec::new(),
            z: Vec::new(),
            d_z: Vec::new(),
            d_hd: Vec::new(),
            d_hd2: Vec::new(),
            planes: OutputPlanes::default(),
            theta_table: ThetaTable::default(),
            input: SparseInput::default(),
            sparse: SparseScratch::default(),
            library: Vec::new(),
            kl_z: Vec::new(),
            kl_l: Vec::new(),
            capacity: 0,
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn reserve(&mut self, b: usize) {
        if b <= self.capacity {
            return;
        }
        let cfg = &self.layout.config;
        let (h, l, g) = (cfg.n_hidden, cfg.n_latent, cfg.n_input);
        let reserve_enc = |w: &mut EncoderWork<T>, ids: &EncoderIds, n_out: usize| {
            w.layers.resize_with(ids.layers.len(), FcCache::default);
            for (c, li) in w.layers.iter_mut().zip(&ids.layers) {
                c.resize(b, li.linear.n_out);
            }
            for v in [&mut w.lin, &mut w.d_h, &mut w.d_h2] {
                v.resize(b * h, T::ZERO);
            }
            for v in [&mut w.q_m, &mut w.u, &mut w.q_v, &mut w.d_q_m, &mut w.d_u] {
                v.resize(b * n_out, T::ZERO);
            }
        };
        reserve_enc(&mut self.z_enc, &self.layout.z_encoder, l);
        if !cfg.use_observed_lib_size {
            reserve_enc(&mut self.l_enc, &self.layout.l_encoder, 1);
        }
        self.dec_layers
            .resize_with(self.layout.decoder.layers.len(), FcCache::default);
        for (c, li) in self.dec_layers.iter_mut().zip(&self.layout.decoder.layers) {
            c.resize(b, li.linear.n_out);
        }
        for v in [&mut self.dec_lin, &mut self.d_hd, &mut self.d_hd2] {
            v.resize(b * h, T::ZERO);
        }
        self.z.resize(b * l, T::ZERO);
        self.d_z.resize(b * l, T::ZERO);
        self.planes.resize(b, g);
        self.library.resize(b, T::ZERO);
        self.kl_z.resize(b, 0.0);
        self.kl_l.resize(b, 0.0);
        self.capacity = b;
    }

    /// Per-cell reconstruction loss, KL_z and KL_l of the last forward pass.
    pub fn per_cell(&self, b: usize) -> (&[f64], &[f64], &[f64]) {
        (
            &self.planes.reconstruction[..b],
            &self.kl_z[..b],
            &self.kl_l[..b],
        )
    }

    /// `q_m` and `q_v` of the z encoder from the last forward pass (`[B, L]`).
    pub fn posterior(&self, b: usize) -> (&[T], &[T]) {
        let l = self.layout.config.n_latent;
        (&self.z_enc.q_m[..b * l], &self.z_enc.q_v[..b * l])
    }

    /// The decoder input z (`[B, L]`) and `px_scale` (`[B, G]`) of the last forward pass.
    pub fn z_and_scale(&self, b: usize) -> (&[T], &[T]) {
        let (l, g) = (self.layout.config.n_latent, self.layout.config.n_input);
        (&self.z[..b * l], &self.planes.scale[..b * g])
    }

    /// The z (`Which::Z`) or library (`Which::L`) encoder's forward pass, on the prepared input.
    fn encoder_forward(
        &mut self,
        which: Which,
        state: &mut ModelState<T>,
        batch: &Minibatch,
        mode: Mode,
        dropout: Option<(Philox, u64)>,
    ) {
        let (w, ids, stream) = match which {
            Which::Z => (
                &mut self.z_enc,
                &self.layout.z_encoder,
                Stream::EncoderDropout,
            ),
            Which::L => (
                &mut self.l_enc,
                &self.layout.l_encoder,
                Stream::LibraryEncoderDropout,
            ),
        };
        let input = (&self.input, &mut self.sparse);
        encoder_forward(w, ids, state, batch, input, mode, dropout, stream);
    }

    /// Backward through an encoder from its `d_q_m` and `d_u`.
    fn encoder_backward(
        &mut self,
        which: Which,
        state: &ModelState<T>,
        grads: &mut [T],
        batch: &Minibatch,
        mode: Mode,
    ) {
        let (w, ids) = match which {
            Which::Z => (&mut self.z_enc, &self.layout.z_encoder),
            Which::L => (&mut self.l_enc, &self.layout.l_encoder),
        };
        let input = (&self.input, &mut self.sparse);
        encoder_backward(w, ids, state, grads, batch, input, mode);
    }

    /// The encoders only, in eval mode: fills the posterior (`posterior()`).
    pub fn encode(&mut self, state: &mut ModelState<T>, batch: &Minibatch) -> Result<()> {
        validate_minibatch(batch, &self.layout, Mode::Eval)?;
        self.reserve(batch.len());
        self.input.prepare(batch);
        self.encoder_forward(Which::Z, state, batch, Mode::Eval, None);
        Ok(())
    }

    /// A forward pass and, when `grads` is given, the backward pass, accumulating `d loss` into
    /// `grads` (the parameters' layout). In `Mode::Train` BatchNorm uses (and updates) batch
    /// statistics and dropout is on.
    pub fn forward_backward(
        &mut self,
        state: &mut ModelState<T>,
        grads: Option<&mut [T]>,
        batch: &Minibatch,
        noise: &StepNoise<T>,
        kl_weight: f64,
        mode: Mode,
    ) -> Result<LossParts> {
        validate_minibatch(batch, &self.layout, mode)?;
        let b = batch.len();
        self.reserve(b);
        let layout = self.layout.clone();
        let cfg = &layout.config;
        let (l, g) = (cfg.n_latent, cfg.n_input);
        if noise.eps_z.len() < b * l || (!cfg.use_observed_lib_size && noise.eps_l.len() < b) {
            return Err(Error::Shape("step noise smaller than the minibatch".into()));
        }
        let dropout = if mode == Mode::Train {
            noise.dropout
        } else {
            None
        };

        // Encoders.
        self.input.prepare(batch);
        self.encoder_forward(Which::Z, state, batch, mode, dropout);
        let ln = cfg.latent_distribution == LatentDistribution::Ln;
        let kl_z_sum = reparam_kl_forward(
            &mut self.z[..b * l],
            &mut self.kl_z[..b],
            self.z_enc.posterior(b * l),
            &noise.eps_z[..b * l],
            l,
            ln,
        );
        let kl_l_sum = if cfg.use_observed_lib_size {
            library_observed_forward(
                &mut self.library[..b],
                &mut self.kl_l[..b],
                &batch.log_library[..b],
            );
            0.0
        } else {
            self.encoder_forward(Which::L, state, batch, mode, dropout);
            library_forward(
                &mut self.library[..b],
                &mut self.kl_l[..b],
                self.l_enc.posterior(b),
                &noise.eps_l[..b],
                library_prior(state, &layout, batch),
            )
        };

        // Decoder.
        let grad_scale = 1.0 / b as f64;
        self.decoder_forward(
            state,
            batch,
            mode,
            DecoderPass::Likelihood {
                grads: grads.is_some(),
                grad_scale,
            },
        );
        let rec_sum: f64 = self.planes.reconstruction[..b].iter().sum();
        let parts = LossParts::from_sums(b, rec_sum, kl_z_sum, kl_l_sum, kl_weight);
        let Some(grads) = grads else { return Ok(parts) };

        // Backward: output heads -> h_d.
        let dec = &layout.decoder;
        let hd = &self.dec_layers.last().unwrap().out;
        let cell_theta = cfg.gene_likelihood.has_theta() && cfg.dispersion == Dispersion::GeneCell;
        {
            let mut head = |ids: &LinearIds, d: &[T], sums: Option<&[T]>, accumulate: bool| {
                let dx = &mut self.d_hd;
                head_backward(grads, &layout, ids, d, sums, hd, state, dx, accumulate, b)
            };
            head(
                &dec.scale,
                &self.planes.d_rho,
                Some(&self.planes.sum_d_rho),
                false,
            );
            if cfg.gene_likelihood.has_pi() {
                head(
                    &dec.dropout,
                    &self.planes.pi,
                    Some(&self.planes.sum_d_pi),
                    true,
                );
            }
            if cell_theta {
                head(&dec.r, &self.planes.r, None, true);
            }
        }
        if cfg.gene_likelihood.has_theta() && !cell_theta {
            let t = &layout.params[layout.px_r.unwrap()];
            let dpx = &mut grads[t.range()];
            let dr = &self.planes.r;
            match cfg.dispersion {
                Dispersion::Gene => dpx[..g]
                    .iter_mut()
                    .zip(&self.planes.sum_d_r[..g])
                    .for_each(|(o, &v)| *o += v),
                Dispersion::GeneBatch | Dispersion::GeneLabel => {
                    let (codes, k) = if cfg.dispersion == Dispersion::GeneBatch {
                        (&batch.batch, cfg.n_batch)
                    } else {
                        (&batch.labels, cfg.n_labels)
                    };
                    dispersion_category_backward(dpx, &dr[..b * g], &codes[..b], g, k);
                }
                Dispersion::GeneCell => unreachable!(),
            }
        }
        // Decoder FC stack -> dz.
        fc_stack_backward(
            &mut self.dec_layers,
            &layout.decoder.layers,
            state,
            grads,
            &mut self.d_hd,
            &mut self.d_hd2,
            Some(&mut self.d_z),
            &self.z,
            batch,
            mode,
        );
        // Through the softmax (ln), the reparameterisation and the KL.
        let (post, post_grads) = self.z_enc.posterior_and_grads(b * l);
        reparam_kl_backward(
            post_grads,
            &mut self.d_z[..b * l],
            &self.z[..b * l],
            post,
            &noise.eps_z[..b * l],
            T::from_f64(kl_weight / b as f64),
            l,
            ln,
        );
        self.encoder_backward(Which::Z, state, grads, batch, mode);
        if !cfg.use_observed_lib_size {
            let (post, post_grads) = self.l_enc.posterior_and_grads(b);
            library_backward(
                post_grads,
                &self.planes.d_library[..b],
                post,
                &noise.eps_l[..b],
                library_prior(state, &layout, batch),
                T::from_f64(1.0 / b as f64),
            );
            self.encoder_backward(Which::L, state, grads, batch, mode);
        }
        Ok(parts)
    }

    /// The decoder on `self.z[..B * L]` and `self.library[..B]` (B = `batch.len()`, whose batch and
    /// label codes select the one-hot and a per-category dispersion): the FC stack, the heads'
    /// products, then either the fused output (softmax, likelihood and, with `grads`, their
    /// gradients) or, for [`DecoderPass::Scale`], the softmax of the scale logits alone (the same
    /// operations in the same order, so `px_scale` is the same either way).
    fn decoder_forward(
        &mut self,
        state: &mut ModelState<T>,
        batch: &Minibatch,
        mode: Mode,
        pass: DecoderPass,
    ) {
        let layout = self.layout.clone();
        let cfg = &layout.config;
        let (b, g, h) = (batch.len(), cfg.n_input, cfg.n_hidden);
        fc_stack_forward(
            &mut self.dec_layers,
            &mut self.dec_lin,
            &layout.decoder.layers,
            state,
            &self.z,
            batch,
            mode,
            LayerNoise {
                dropout: None,
                stream: Stream::EncoderDropout,
                layer: 0,
            },
        );
        let hd = &self.dec_layers.last().unwrap().out;
        let dec = &layout.decoder;
        // The heads' products only: their biases are added by the output kernel as it reads the
        // rows (one pass less over the [B, G] planes).
        head_product(
            &mut self.planes.scale,
            hd,
            state.param(dec.scale.weight),
            b,
            h,
            g,
        );
        let DecoderPass::Likelihood { grads, grad_scale } = pass else {
            scale_softmax(&mut self.planes.scale[..b * g], state.param(dec.scale.bias));
            return;
        };
        let mut biases = HeadBiases {
            rho: state.param(dec.scale.bias),
            pi: None,
            r: None,
        };
        if cfg.gene_likelihood.has_pi() {
            head_product(
                &mut self.planes.pi,
                hd,
                state.param(dec.dropout.weight),
                b,
                h,
                g,
            );
            biases.pi = Some(state.param(dec.dropout.bias));
        }
        let theta = if !cfg.gene_likelihood.has_theta() {
            ThetaSource::None
        } else if cfg.dispersion == Dispersion::GeneCell {
            head_product(&mut self.planes.r, hd, state.param(dec.r.weight), b, h, g);
            biases.r = Some(state.param(dec.r.bias));
            ThetaSource::Cell
        } else {
            let px_r = state.param(layout.px_r.unwrap());
            let (n_cat, codes) = match cfg.dispersion {
                Dispersion::Gene => (1, None),
                Dispersion::GeneBatch => (cfg.n_batch, Some(&batch.batch[..])),
                _ => (cfg.n_labels, Some(&batch.labels[..])),
            };
            self.theta_table.fill(px_r, g, n_cat);
            ThetaSource::Table {
                table: &self.theta_table,
                codes,
            }
        };
        decoder_output(
            &mut self.planes,
            batch,
            cfg.gene_likelihood,
            theta,
            biases,
            &self.library[..b],
            grads,
            grad_scale,
        );
    }

    /// Both encoders in inference mode (the library's only for a latent library): fills what
    /// [`posterior`](Self::posterior) and [`library_posterior`](Self::library_posterior) read.
    pub fn encode_all(&mut self, state: &mut ModelState<T>, batch: &Minibatch) -> Result<()> {
        self.encode(state, batch)?;
        if !self.layout.config.use_observed_lib_size {
            self.encoder_forward(Which::L, state, batch, Mode::Eval, None);
        }
        Ok(())
    }

    /// `q_m` and `q_v` of the library encoder from the last [`encode_all`](Self::encode_all)
    /// (`[B]`; a latent library only).
    pub fn library_posterior(&self, b: usize) -> (&[T], &[T]) {
        (&self.l_enc.q_m[..b], &self.l_enc.q_v[..b])
    }

    /// scvi-tools' `generative` in inference mode, on given latents: row `r` of `rows` is decoded
    /// from `z[r]` (`[R, L]`, after the logistic normal's softmax) with log library `library[r]`,
    /// under its batch code (a `transform_batch` is a code here) and label code. With
    /// `likelihood`, the fused output runs too: the reconstruction loss of the row's counts, the
    /// zero-inflation logits (the `pi` plane, biases added) and, for `gene-cell`, the dispersion
    /// logits (the `r` plane); [`output`](Self::output) reads them.
    pub fn generative(
        &mut self,
        state: &mut ModelState<T>,
        rows: &Minibatch,
        z: &[T],
        library: &[T],
        likelihood: bool,
    ) -> Result<()> {
        validate_minibatch(rows, &self.layout, Mode::Eval)?;
        let (r, l) = (rows.len(), self.layout.config.n_latent);
        if z.len() != r * l || library.len() != r {
            return Err(Error::Shape(format!(
                "generative: {} latent values and {} libraries for {r} rows of {l} dimensions",
                z.len(),
                library.len()
            )));
        }
        self.reserve(r);
        self.z[..r * l].copy_from_slice(z);
        self.library[..r].copy_from_slice(library);
        let pass = if likelihood {
            DecoderPass::Likelihood {
                grads: false,
                grad_scale: 1.0,
            }
        } else {
            DecoderPass::Scale
        };
        self.decoder_forward(state, rows, Mode::Eval, pass);
        Ok(())
    }

    /// The output planes and the dispersion table of the last pass.
    pub fn output(&self) -> (&OutputPlanes<T>, &ThetaTable<T>) {
        (&self.planes, &self.theta_table)
    }
}

/// What the decoder computes after its heads.
#[derive(Clone, Copy)]
enum DecoderPass {
    /// The softmax of the scale logits alone.
    Scale,
    /// The fused softmax and likelihood, with gradients (divided by `1 / grad_scale` cells) or not.
    Likelihood { grads: bool, grad_scale: f64 },
}

/// `px_scale = softmax(rho + bias)` per row of `[R, G]` logits, in place and in parallel over
/// rows, with the operations `cpu::output` uses for it (so the two paths agree to the bit).
fn scale_softmax<T: Float>(rho: &mut [T], bias: &[T]) {
    use rayon::prelude::*;
    let g = bias.len();
    rho.par_chunks_mut(g).for_each(|row| {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
        let mx = lane_max(row);
        let inv = T::ONE / exp_shift_sum(row, mx);
        for v in row.iter_mut() {
            *v *= inv;
        }
    });
}

/// `y = x W^T` for a decoder head (`x` `[B, H]`, W `[G, H]`), without the bias.
fn head_product<T: Float>(y: &mut [T], x: &[T], weight: &[T], b: usize, h: usize, g: usize) {
    let s = LinearShape {
        b,
        n_in: h,
        ldw: h,
        n_out: g,
    };
    linear_fwd(y, x, weight, s, T::ZERO);
}

fn layer_params<'a, T: Float>(state: &'a ModelState<T>, ids: &FcLayerIds) -> FcParams<'a, T> {
    FcParams {
        weight: state.param(ids.linear.weight),
        bias: state.param(ids.linear.bias),
        bn_weight: ids.batch_norm.as_ref().map(|bn| state.param(bn.weight)),
        bn_bias: ids.batch_norm.as_ref().map(|bn| state.param(bn.bias)),
    }
}

/// Where a layer's dropout mask comes from: the step's generator and index (None: no dropout),
/// the stack's stream, and the layer's index in its stack (`step * 16 + layer` keys the mask).
#[derive(Clone, Copy)]
struct LayerNoise {
    dropout: Option<(Philox, u64)>,
    stream: Stream,
    layer: usize,
}

impl LayerNoise {
    /// The noise of the layer `i` places further down the stack.
    fn at(self, i: usize) -> Self {
        LayerNoise {
            layer: self.layer + i,
            ..self
        }
    }
}

/// Forward through (part of) an FCLayers stack whose first layer takes the dense `x0`; `noise` is
/// that of its first layer.
#[allow(clippy::too_many_arguments)]
fn fc_stack_forward<T: Float>(
    caches: &mut [FcCache<T>],
    lin: &mut [T],
    layers: &[FcLayerIds],
    state: &mut ModelState<T>,
    x0: &[T],
    batch: &Minibatch,
    mode: Mode,
    noise: LayerNoise,
) {
    let b = batch.len();
    for (i, ids) in layers.iter().enumerate() {
        let (prev, rest) = caches.split_at_mut(i);
        let x = if i == 0 { x0 } else { &prev[i - 1].out };
        let p = layer_params(state, ids);
        linear_forward(
            lin,
            x,
            &batch.batch,
            p.weight,
            p.bias,
            b,
            ids.linear.n_in,
            ids.n_cat,
            ids.linear.n_out,
        );
        fc_post(&mut rest[0], lin, ids, state, mode, noise.at(i), b);
    }
}

/// Everything after a layer's product (`lin`): the normalisations, ReLU and dropout, with the
/// running statistics (and their step count) updated in training.
fn fc_post<T: Float>(
    cache: &mut FcCache<T>,
    lin: &mut [T],
    ids: &FcLayerIds,
    state: &mut ModelState<T>,
    mode: Mode,
    noise: LayerNoise,
    b: usize,
) {
    let ModelState {
        layout,
        params,
        buffers,
    } = state;
    let p = |id: usize| &params[layout.params[id].range()];
    let fp = FcParams {
        weight: p(ids.linear.weight),
        bias: p(ids.linear.bias),
        bn_weight: ids.batch_norm.as_ref().map(|bn| p(bn.weight)),
        bn_bias: ids.batch_norm.as_ref().map(|bn| p(bn.bias)),
    };
    let stats = ids.batch_norm.as_ref().map(|bn| {
        let [mean, var, count] = split_mut(
            buffers,
            [
                layout.buffers[bn.running_mean].range(),
                layout.buffers[bn.running_var].range(),
                layout.buffers[bn.num_batches_tracked].range(),
            ],
        );
        if mode == Mode::Train {
            count[0] += T::ONE;
        }
        BnStats { mean, var }
    });
    let key = noise.dropout.map(|(rng, step)| DropoutKey {
        rng,
        stream: noise.stream,
        index: step * 16 + noise.layer as u64,
    });
    fc_post_forward(cache, lin, ids, &fp, stats, mode, key, b);
}

/// A head `y = x W^T + bias` (`x` `[B, n_in]`, no covariate).
fn head_forward<T: Float>(y: &mut [T], x: &[T], ids: &LinearIds, state: &ModelState<T>, b: usize) {
    let (w, bias) = (state.param(ids.weight), state.param(ids.bias));
    linear_forward(y, x, &[], w, bias, b, ids.n_in, 0, ids.n_out);
}

#[allow(clippy::too_many_arguments)]
fn encoder_forward<T: Float>(
    w: &mut EncoderWork<T>,
    ids: &EncoderIds,
    state: &mut ModelState<T>,
    batch: &Minibatch,
    (input, sparse): (&SparseInput<T>, &mut SparseScratch<T>),
    mode: Mode,
    dropout: Option<(Philox, u64)>,
    stream: Stream,
) {
    let b = batch.len();
    let first = &ids.layers[0];
    sparse_log1p_linear_forward(
        &mut w.lin,
        batch,
        input,
        state.param(first.linear.weight),
        state.param(first.linear.bias),
        first.n_cat,
        first.linear.n_out,
        sparse,
    );
    let noise = LayerNoise {
        dropout,
        stream,
        layer: 0,
    };
    fc_post(&mut w.layers[0], &mut w.lin, first, state, mode, noise, b);
    // The layers above the first are dense.
    let (l0, above) = w.layers.split_at_mut(1);
    let (x0, rest) = (&l0[0].out, &ids.layers[1..]);
    fc_stack_forward(above, &mut w.lin, rest, state, x0, batch, mode, noise.at(1));
    let h = &w.layers.last().unwrap().out;
    head_forward(&mut w.q_m, h, &ids.mean, state, b);
    head_forward(&mut w.u, h, &ids.var, state, b);
    let n = ids.mean.n_out;
    posterior_variance(&mut w.q_v[..b * n], &w.u[..b * n]);
}

/// Backward through a head `y = x W^T + b` with upstream `d` (`[B, n_out]`): weight gradients and
/// `dx (+)= d W`.
#[allow(clippy::too_many_arguments)]
fn head_backward<T: Float>(
    grads: &mut [T],
    layout: &Layout,
    ids: &LinearIds,
    d: &[T],
    bias_sums: Option<&[T]>,
    x: &[T],
    state: &ModelState<T>,
    dx: &mut [T],
    accumulate: bool,
    b: usize,
) {
    let [dw, db] = split_mut(
        grads,
        [
            layout.params[ids.weight].range(),
            layout.params[ids.bias].range(),
        ],
    );
    linear_backward(
        Some(dx),
        accumulate,
        dw,
        db,
        bias_sums,
        d,
        x,
        &[],
        state.param(ids.weight),
        b,
        ids.n_in,
        0,
        ids.n_out,
    );
}

/// Backward through (part of) an FCLayers stack. `d` holds the gradient of the stack's output (it
/// is used as scratch); the gradient of the first layer's dense input goes to `dx0` when given,
/// else to `d`.
#[allow(clippy::too_many_arguments)]
fn fc_stack_backward<T: Float>(
    caches: &mut [FcCache<T>],
    layers: &[FcLayerIds],
    state: &ModelState<T>,
    grads: &mut [T],
    d: &mut Vec<T>,
    d_next: &mut Vec<T>,
    dx0: Option<&mut [T]>,
    x0: &[T],
    batch: &Minibatch,
    mode: Mode,
) {
    let b = batch.len();
    let layout = &state.layout;
    let mut dx0 = dx0;
    for i in (0..layers.len()).rev() {
        let ids = &layers[i];
        let p = layer_params(state, ids);
        let mut g = layer_grads(grads, layout, ids);
        fc_post_backward(d, &mut caches[i], ids, &p, &mut g, mode, b);
        let x = if i == 0 { x0 } else { &caches[i - 1].out };
        let to_dx0 = i == 0 && dx0.is_some();
        let dx: &mut [T] = match (i, dx0.as_deref_mut()) {
            (0, Some(dx0)) => dx0,
            _ => &mut d_next[..],
        };
        linear_backward(
            Some(dx),
            false,
            g.weight,
            g.bias,
            None,
            d,
            x,
            &batch.batch,
            p.weight,
            b,
            ids.linear.n_in,
            ids.n_cat,
            ids.linear.n_out,
        );
        if !to_dx0 {
            std::mem::swap(d, d_next);
        }
    }
}

fn layer_grads<'a, T>(grads: &'a mut [T], layout: &Layout, ids: &FcLayerIds) -> FcGrads<'a, T> {
    let r = |id: usize| layout.params[id].range();
    match &ids.batch_norm {
        Some(bn) => {
            let [w, bias, gw, gb] = split_mut(
                grads,
                [
                    r(ids.linear.weight),
                    r(ids.linear.bias),
                    r(bn.weight),
                    r(bn.bias),
                ],
            );
            FcGrads {
                weight: w,
                bias,
                bn_weight: Some(gw),
                bn_bias: Some(gb),
            }
        }
        None => {
            let [w, bias] = split_mut(grads, [r(ids.linear.weight), r(ids.linear.bias)]);
            FcGrads {
                weight: w,
                bias,
                bn_weight: None,
                bn_bias: None,
            }
        }
    }
}

/// Backward through an encoder from `d_q_m` and `d_u` (the var head's pre-activation).
fn encoder_backward<T: Float>(
    w: &mut EncoderWork<T>,
    ids: &EncoderIds,
    state: &ModelState<T>,
    grads: &mut [T],
    batch: &Minibatch,
    (input, sparse): (&SparseInput<T>, &mut SparseScratch<T>),
    mode: Mode,
) {
    let b = batch.len();
    let layout = &state.layout;
    let h = &w.layers.last().unwrap().out;
    head_backward(
        grads, layout, &ids.mean, &w.d_q_m, None, h, state, &mut w.d_h, false, b,
    );
    head_backward(
        grads, layout, &ids.var, &w.d_u, None, h, state, &mut w.d_h, true, b,
    );
    // The layers above the first are dense.
    let (l0, above) = w.layers.split_at_mut(1);
    let (x0, rest) = (&l0[0].out, &ids.layers[1..]);
    let (d, d_next) = (&mut w.d_h, &mut w.d_h2);
    fc_stack_backward(above, rest, state, grads, d, d_next, None, x0, batch, mode);
    let first = &ids.layers[0];
    let p = layer_params(state, first);
    let mut g = layer_grads(grads, layout, first);
    fc_post_backward(&mut w.d_h, &mut w.layers[0], first, &p, &mut g, mode, b);
    sparse_log1p_linear_backward(
        g.weight,
        g.bias,
        &w.d_h,
        batch,
        input,
        first.n_cat,
        first.linear.n_out,
        sparse,
    );
}
