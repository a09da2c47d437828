//! The GPU engine: scVI's forward and backward passes as fused kernels (kernels/*.cu) and cuBLAS
//! products, over the same flat parameter layout as the CPU reference (src/cpu/engine.rs, whose
//! structure this file mirrors function for function), with the same noise.
//!
//! One training step, B cells (H hidden, L latent, G genes), all on one stream:
//! ```text
//! upload the minibatch (CSR rows, codes, log library) from a pinned staging buffer, one copy
//! transpose_fwd            W1 [H, G] -> [G, H] (after each Adam step; first-layer weights)
//! sparse_log1p_linear_fwd  z encoder layer 0 on the sparse counts
//! fc_post_fwd              + bias + one-hot, BatchNorm (batch stats, running stats), ReLU, dropout
//! sgemm x (n_layers - 1)   further layers, each followed by fc_post_fwd
//! sgemm x 2                q_m and q_v heads
//! reparam_kl_fwd           q_v = exp(u) + VAR_EPS, z = q_m + sqrt(q_v) eps, KL_z  (ln: softmax)
//! library_fwd              observed log library, or the l encoder's sample and KL_l
//! sgemm, fc_post_fwd       decoder layers on [z, onehot]
//! sgemm x 2-3              rho, pi (ZINB), r (gene-cell) heads: [B, G] logits
//! decoder_output_bwd       softmax, likelihood, dloss/drho, dloss/dpi, dloss/dr, dloss/dlibrary
//! sgemm, column_sum_bwd    head weight and bias gradients, dloss/dh_d
//! fc_post_bwd, sgemm       decoder layers back to dloss/dz
//! reparam_kl_bwd           dloss/dq_m, dloss/du (with the KL's own gradient)
//! sgemm, fc_post_bwd       encoder layers; sparse_log1p_linear_bwd for the first layer's weight
//! (library_bwd and the l encoder, for a latent library)
//! adam_step                over the flat buffer, trainable tensors only
//! download the per-cell losses (the step's one synchronisation)
//! ```
//! Parameter gradients accumulate into a flat buffer in the parameters' layout; every kernel that
//! sums over cells does it in a fixed order, so a run is reproducible bit for bit on one GPU.

use super::device::{as_bytes, DevBuf, Gpu, PinnedBuf};
use super::kernels::*;
use super::ops;
use crate::batch::Minibatch;
use crate::engine::{
    validate_minibatch, AdamConfig, Engine, LossParts, Mode, OptimizerState, Pass,
};
use crate::error::{Error, Result};
use crate::model::config::{Dispersion, LatentDistribution, ModelConfig};
use crate::model::init::ModelState;
use crate::model::layout::{EncoderIds, FcLayerIds, Layout, LinearIds};
use crate::rng::Stream;

mod resident;

/// What one FCLayers layer keeps for its backward pass.
struct LayerBufs {
    lin: DevBuf,
    xhat: DevBuf,
    inv_std: DevBuf,
    ln_inv: DevBuf,
    pre: DevBuf,
    out: DevBuf,
}

struct EncoderBufs {
    layers: Vec<LayerBufs>,
    q_m: DevBuf,
    u: DevBuf,
    q_v: DevBuf,
    d_q_m: DevBuf,
    d_u: DevBuf,
    d_h: DevBuf,
    d_h2: DevBuf,
}

/// Activations and gradients for up to `cap` cells.
struct Work {
    cap: usize,
    z_enc: EncoderBufs,
    l_enc: Option<EncoderBufs>,
    dec: Vec<LayerBufs>,
    z: DevBuf,
    eps_z: DevBuf,
    d_z: DevBuf,
    library: DevBuf,
    eps_l: DevBuf,
    d_hd: DevBuf,
    d_hd2: DevBuf,
    rho: DevBuf,
    d_rho: DevBuf,
    pi: DevBuf,
    r: DevBuf,
    d_library: DevBuf,
    /// Per cell, f64: reconstruction loss [cap], KL_z [cap], KL_l [cap].
    losses: DevBuf,
}

/// The minibatch on the device: one buffer of 4-byte words and the offsets of its sections.
#[derive(Clone, Copy, Default)]
struct BatchPtrs {
    indptr: DevPtr,
    indices: DevPtr,
    values: DevPtr,
    batch: DevPtr,
    labels: DevPtr,
    log_library: DevPtr,
}

impl BatchPtrs {
    /// The sections of a minibatch of `b` cells and `nnz` non-zeros, one after another from
    /// `base` in this order (4 bytes an element): indptr `[b + 1]`, indices and values `[nnz]`,
    /// batch codes, label codes and log library `[b]`; and the bytes they take.
    fn laid_out(base: DevPtr, b: usize, nnz: usize) -> (BatchPtrs, usize) {
        let at = |words: usize| base + 4 * words as u64;
        let p = BatchPtrs {
            indptr: at(0),
            indices: at(b + 1),
            values: at(b + 1 + nnz),
            batch: at(b + 1 + 2 * nnz),
            labels: at(2 * b + 1 + 2 * nnz),
            log_library: at(3 * b + 1 + 2 * nnz),
        };
        (p, 4 * (4 * b + 1 + 2 * nnz))
    }
}

/// The GPU engine for one model (see the module documentation).
pub struct CudaEngine {
    gpu: Gpu,
    layout: Layout,
    seed: u64,
    adam_cfg: AdamConfig,
    adam_step: u64,
    params: DevBuf,
    buffers: DevBuf,
    grads: DevBuf,
    adam_m: DevBuf,
    adam_v: DevBuf,
    mask: DevBuf,
    /// Transposed first-layer gene weights of the z and l encoders, `[G, H]`.
    wt_z: DevBuf,
    wt_l: Option<DevBuf>,
    wt_valid: bool,
    work: Option<Work>,
    staging: Option<PinnedBuf>,
    batch_dev: Option<DevBuf>,
    bp: BatchPtrs,
    rec: Vec<f64>,
    kl_z: Vec<f64>,
    kl_l: Vec<f64>,
    last_b: usize,
    /// The data set held on the device, when the caller asked for it (`hold_data`).
    data: Option<resident::DeviceData>,
}

/// Which encoder.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Z,
    L,
}

fn f32_bytes(n: usize) -> usize {
    n * 4
}

impl CudaEngine {
    /// An engine on `gpu` holding `state` (uploaded), with Adam's state at zero.
    pub fn new(gpu: Gpu, state: &ModelState<f32>, seed: u64, adam: AdamConfig) -> Result<Self> {
        check_config(&state.layout.config)?;
        gpu.bind()?;
        let layout = state.layout.clone();
        let np = layout.n_param_elems;
        let nb = layout.n_buffer_elems;
        let params = gpu.alloc(f32_bytes(np), "the parameters")?;
        let buffers = gpu.alloc(f32_bytes(nb), "the BatchNorm statistics")?;
        let grads = gpu.alloc(f32_bytes(np), "the gradients")?;
        let adam_m = gpu.alloc(f32_bytes(np), "Adam's first moments")?;
        let adam_v = gpu.alloc(f32_bytes(np), "Adam's second moments")?;
        let mask = gpu.alloc(np, "the trainable mask")?;
        gpu.upload_f32(params.ptr(), &state.params)?;
        gpu.upload_f32(buffers.ptr(), &state.buffers)?;
        gpu.zero(grads.ptr(), grads.bytes())?;
        gpu.zero(adam_m.ptr(), adam_m.bytes())?;
        gpu.zero(adam_v.ptr(), adam_v.bytes())?;
        gpu.upload(mask.ptr(), &layout.trainable_mask())?;
        let cfg = &layout.config;
        let wt_bytes = |ids: &EncoderIds| f32_bytes(cfg.n_input * ids.layers[0].linear.n_out);
        let wt_z = gpu.alloc(
            wt_bytes(&layout.z_encoder),
            "the transposed encoder weights",
        )?;
        let wt_l = if cfg.use_observed_lib_size {
            None
        } else {
            Some(gpu.alloc(
                wt_bytes(&layout.l_encoder),
                "the transposed encoder weights",
            )?)
        };
        gpu.sync()?;
        Ok(CudaEngine {
            gpu,
            layout,
            seed,
            adam_cfg: adam,
            adam_step: 0,
            params,
            buffers,
            grads,
            adam_m,
            adam_v,
            mask,
            wt_z,
            wt_l,
            wt_valid: false,
            work: None,
            staging: None,
            batch_dev: None,
            bp: BatchPtrs::default(),
            rec: Vec::new(),
            kl_z: Vec::new(),
            kl_l: Vec::new(),
            last_b: 0,
            data: None,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    fn p(&self, id: usize) -> DevPtr {
        self.params.at::<f32>(self.layout.params[id].offset)
    }
    fn g(&self, id: usize) -> DevPtr {
        self.grads.at::<f32>(self.layout.params[id].offset)
    }
    fn buf(&self, id: usize) -> DevPtr {
        self.buffers.at::<f32>(self.layout.buffers[id].offset)
    }

    fn alloc_layer(gpu: &Gpu, cap: usize, n: usize) -> Result<LayerBufs> {
        let a = |len: usize| gpu.alloc(f32_bytes(len), "layer activations");
        Ok(LayerBufs {
            lin: a(cap * n)?,
            xhat: a(cap * n)?,
            inv_std: a(n)?,
            ln_inv: a(cap)?,
            pre: a(cap * n)?,
            out: a(cap * n)?,
        })
    }

    fn alloc_encoder(gpu: &Gpu, cap: usize, ids: &EncoderIds, h: usize) -> Result<EncoderBufs> {
        let n_out = ids.mean.n_out;
        let a = |len: usize| gpu.alloc(f32_bytes(len), "encoder activations");
        Ok(EncoderBufs {
            layers: ids
                .layers
                .iter()
                .map(|l| Self::alloc_layer(gpu, cap, l.linear.n_out))
                .collect::<Result<_>>()?,
            q_m: a(cap * n_out)?,
            u: a(cap * n_out)?,
            q_v: a(cap * n_out)?,
            d_q_m: a(cap * n_out)?,
            d_u: a(cap * n_out)?,
            d_h: a(cap * h)?,
            d_h2: a(cap * h)?,
        })
    }

    /// Device buffers for `b` cells (grown, never shrunk).
    fn reserve(&mut self, b: usize) -> Result<()> {
        if self.work.as_ref().is_some_and(|w| w.cap >= b) {
            return Ok(());
        }
        let cap = b.max(self.work.as_ref().map_or(0, |w| w.cap));
        // Free the old buffers first, so their memory can be reused.
        self.work = None;
        let gpu = &self.gpu;
        let cfg = &self.layout.config;
        let (h, l, g) = (cfg.n_hidden, cfg.n_latent, cfg.n_input);
        let a = |len: usize, what: &str| gpu.alloc(f32_bytes(len), what);
        let plane = |used: bool| {
            let len = if used { cap * g } else { 0 };
            a(len, "the [cells, genes] output planes")
        };
        self.work = Some(Work {
            cap,
            z_enc: Self::alloc_encoder(gpu, cap, &self.layout.z_encoder, h)?,
            l_enc: if cfg.use_observed_lib_size {
                None
            } else {
                Some(Self::alloc_encoder(gpu, cap, &self.layout.l_encoder, h)?)
            },
            dec: self
                .layout
                .decoder
                .layers
                .iter()
                .map(|li| Self::alloc_layer(gpu, cap, li.linear.n_out))
                .collect::<Result<_>>()?,
            z: a(cap * l, "z")?,
            eps_z: a(cap * l, "noise")?,
            d_z: a(cap * l, "dz")?,
            library: a(cap, "library")?,
            eps_l: a(cap, "noise")?,
            d_hd: a(cap * h, "decoder gradients")?,
            d_hd2: a(cap * h, "decoder gradients")?,
            rho: plane(true)?,
            d_rho: plane(true)?,
            pi: plane(cfg.gene_likelihood.has_pi())?,
            r: plane(cfg.gene_likelihood.has_theta())?,
            d_library: a(cap, "library gradient")?,
            losses: gpu.alloc(3 * cap * 8, "per-cell losses")?,
        });
        Ok(())
    }

    /// Copy the minibatch to the device in one transfer from pinned memory.
    /// The minibatch's device buffer and its pinned staging twin, at least `bytes` each.
    fn reserve_batch(&mut self, bytes: usize) -> Result<()> {
        if self.staging.as_ref().is_none_or(|s| s.len() < bytes) {
            let want = bytes.max(1024) * 5 / 4;
            self.batch_dev = None;
            self.staging = None;
            self.batch_dev = Some(self.gpu.alloc(want, "the minibatch")?);
            self.staging = Some(self.gpu.alloc_pinned(want)?);
        }
        Ok(())
    }

    fn upload(&mut self, batch: &Minibatch) -> Result<()> {
        let b = batch.len();
        let nnz = batch.indices.len();
        let (_, bytes) = BatchPtrs::laid_out(0, b, nnz);
        self.reserve_batch(bytes)?;
        let st = self.staging.as_mut().expect("staging").as_mut_slice();
        let mut o = 0usize;
        let mut put = |v: &[u8]| {
            st[o..o + v.len()].copy_from_slice(v);
            o += v.len();
        };
        let indptr: Vec<u32> = batch.indptr.iter().map(|&v| v as u32).collect();
        put(as_bytes(&indptr));
        put(as_bytes(&batch.indices));
        put(as_bytes(&batch.values));
        put(as_bytes(&batch.batch[..b]));
        put(as_bytes(&batch.labels[..b]));
        let loglib: Vec<f32> = batch.log_library[..b].iter().map(|&v| v as f32).collect();
        put(as_bytes(&loglib));
        debug_assert_eq!(o, bytes);
        let base = self.batch_dev.as_ref().expect("batch buffer").ptr();
        self.gpu.upload(base, &st[..bytes])?;
        self.bp = BatchPtrs::laid_out(base, b, nnz).0;
        Ok(())
    }

    /// Refresh the transposed first-layer weights after the parameters changed.
    fn refresh_transposes(&mut self) -> Result<()> {
        if self.wt_valid {
            return Ok(());
        }
        let g = self.layout.config.n_input;
        for which in [Which::Z, Which::L] {
            let (ids, wt) = match which {
                Which::Z => (&self.layout.z_encoder, &self.wt_z),
                Which::L => match &self.wt_l {
                    Some(w) => (&self.layout.l_encoder, w),
                    None => continue,
                },
            };
            let first = &ids.layers[0];
            ops::transpose(
                &self.gpu,
                &TransposeArgs {
                    src: self.p(first.linear.weight),
                    dst: wt.ptr(),
                    rows_src: first.linear.n_out as u32,
                    cols_src: g as u32,
                    ld_src: (g + first.n_cat) as u32,
                    pad: 0,
                },
            )?;
        }
        self.wt_valid = true;
        Ok(())
    }

    fn fc_args(
        &self,
        lb: &LayerBufs,
        ids: &FcLayerIds,
        (b, train): (usize, bool),
        key: PhiloxKey,
    ) -> FcPostArgs {
        let bn = ids.batch_norm.as_ref();
        let dropout = train && ids.dropout > 0.0;
        let flags = FcPass::flags(bn.is_some(), train, ids.layer_norm, dropout);
        FcPostArgs {
            lin: lb.lin.ptr(),
            bias: self.p(ids.linear.bias),
            weight: self.p(ids.linear.weight),
            dweight: self.g(ids.linear.weight),
            dbias: self.g(ids.linear.bias),
            cats: self.bp.batch,
            gamma: bn.map_or(0, |x| self.p(x.weight)),
            beta: bn.map_or(0, |x| self.p(x.bias)),
            dgamma: bn.map_or(0, |x| self.g(x.weight)),
            dbeta: bn.map_or(0, |x| self.g(x.bias)),
            running_mean: bn.map_or(0, |x| self.buf(x.running_mean)),
            running_var: bn.map_or(0, |x| self.buf(x.running_var)),
            num_batches_tracked: bn.map_or(0, |x| self.buf(x.num_batches_tracked)),
            xhat: lb.xhat.ptr(),
            inv_std: lb.inv_std.ptr(),
            pre: lb.pre.ptr(),
            out: lb.out.ptr(),
            pass: FcPass {
                key,
                dropout_p: ids.dropout,
                dropout_scale: (1.0 / (1.0 - ids.dropout)) as f32,
                flags,
                rows: b as u32,
                n: ids.linear.n_out as u32,
            },
            n_in: ids.linear.n_in as u32,
            n_cat: ids.n_cat as u32,
            ldw: (ids.linear.n_in + ids.n_cat) as u32,
            pad: 0,
        }
    }

    /// A layer's post-product part, as `fc_post` on the CPU. Forward (`d` None): `lb.lin` holds
    /// the product. Backward: `d` holds dloss/dout and becomes dloss/dlin; the bias, one-hot
    /// column and BatchNorm gradients accumulate.
    fn fc_post(
        &self,
        lb: &LayerBufs,
        ids: &FcLayerIds,
        (b, train): (usize, bool),
        key: PhiloxKey,
        d: Option<DevPtr>,
    ) -> Result<()> {
        let mut a = self.fc_args(lb, ids, (b, train), key);
        let ln = ids.layer_norm;
        match d {
            None => {
                ops::fc_post(&self.gpu, &a, false)?;
                if ln {
                    ops::layer_norm(&self.gpu, &a.layer_norm(0, lb.ln_inv.ptr()), false)?;
                }
                Ok(())
            }
            Some(d) => {
                a.lin = d;
                if ln {
                    ops::layer_norm(&self.gpu, &a.layer_norm(d, lb.ln_inv.ptr()), true)?;
                }
                ops::fc_post(&self.gpu, &a, true)
            }
        }
    }

    fn dropout_key(&self, stream: Stream, step: u64, layer: usize, train: bool) -> PhiloxKey {
        if train {
            PhiloxKey::new(
                self.seed,
                stream,
                step.wrapping_mul(16).wrapping_add(layer as u64),
            )
        } else {
            PhiloxKey::default()
        }
    }

    /// An encoder's ids, device buffers and dropout stream.
    fn encoder(&self, which: Which) -> (&EncoderIds, &EncoderBufs, Stream) {
        let w = self.work.as_ref().expect("work");
        match which {
            Which::Z => (&self.layout.z_encoder, &w.z_enc, Stream::EncoderDropout),
            Which::L => (
                &self.layout.l_encoder,
                w.l_enc.as_ref().expect("l encoder"),
                Stream::LibraryEncoderDropout,
            ),
        }
    }

    fn encoder_forward(&self, which: Which, b: usize, train: bool, step: u64) -> Result<()> {
        let (ids, enc, stream) = self.encoder(which);
        let wt = match which {
            Which::Z => &self.wt_z,
            Which::L => self.wt_l.as_ref().expect("l encoder weights"),
        };
        let first = &ids.layers[0];
        ops::sparse_linear_fwd(
            &self.gpu,
            &SparseLinearArgs {
                lin: enc.layers[0].lin.ptr(),
                wt: wt.ptr(),
                ..self.sparse_args(first, b)
            },
        )?;
        let key0 = self.dropout_key(stream, step, 0, train);
        self.fc_post(&enc.layers[0], first, (b, train), key0, None)?;
        for (i, li) in ids.layers.iter().enumerate().skip(1) {
            let key = self.dropout_key(stream, step, i, train);
            let x = enc.layers[i - 1].out.ptr();
            self.layer_forward(&enc.layers[i], li, x, (b, train), key)?;
        }
        let h = enc.layers.last().expect("a layer").out.ptr();
        for (head, out) in [(&ids.mean, &enc.q_m), (&ids.var, &enc.u)] {
            self.head_forward(head, h, out.ptr(), b)?;
        }
        Ok(())
    }

    fn encoder_backward(&self, which: Which, b: usize, train: bool, step: u64) -> Result<()> {
        let (ids, enc, stream) = self.encoder(which);
        let h = enc.layers.last().expect("a layer").out.ptr();
        for (k, (head, d)) in [(&ids.mean, &enc.d_q_m), (&ids.var, &enc.d_u)]
            .into_iter()
            .enumerate()
        {
            self.head_backward(head, d.ptr(), h, enc.d_h.ptr(), k > 0, b)?;
        }
        let (mut d, mut d_next) = (enc.d_h.ptr(), enc.d_h2.ptr());
        for i in (1..ids.layers.len()).rev() {
            let key = self.dropout_key(stream, step, i, train);
            let (lb, x) = (&enc.layers[i], enc.layers[i - 1].out.ptr());
            self.layer_backward(lb, &ids.layers[i], (d, x, d_next), (b, train), key)?;
            std::mem::swap(&mut d, &mut d_next);
        }
        let first = &ids.layers[0];
        let key0 = self.dropout_key(stream, step, 0, train);
        self.fc_post(&enc.layers[0], first, (b, train), key0, Some(d))?;
        ops::sparse_linear_bwd(
            &self.gpu,
            &SparseLinearArgs {
                d,
                dweight: self.g(first.linear.weight),
                ..self.sparse_args(first, b)
            },
        )
    }

    /// A head `y = x W^T + bias` backward: `dW += d^T x`, `dbias += sum_b d`, `dx (+)= d W`.
    fn head_backward(
        &self,
        ids: &LinearIds,
        d: DevPtr,
        x: DevPtr,
        dx: DevPtr,
        accumulate: bool,
        b: usize,
    ) -> Result<()> {
        let s = ids.shape(b);
        ops::linear_wgrad(&self.gpu, self.g(ids.weight), d, x, s)?;
        ops::column_sum(
            &self.gpu,
            &ColumnArgs {
                d,
                out: self.g(ids.bias),
                rows: b as u32,
                n: ids.n_out as u32,
                ..Default::default()
            },
        )?;
        ops::linear_dgrad(&self.gpu, dx, d, self.p(ids.weight), s, accumulate)
    }

    /// A head's product `y = x W^T` (its bias is added by the kernel that reads `y`).
    fn head_forward(&self, ids: &LinearIds, x: DevPtr, y: DevPtr, b: usize) -> Result<()> {
        ops::linear_fwd(&self.gpu, y, x, self.p(ids.weight), ids.shape(b))
    }

    /// One FCLayers layer on the dense input `x` for `b` cells: the product into `lb.lin`, then the
    /// fused rest.
    fn layer_forward(
        &self,
        lb: &LayerBufs,
        li: &FcLayerIds,
        x: DevPtr,
        (b, train): (usize, bool),
        key: PhiloxKey,
    ) -> Result<()> {
        let s = li.shape(b);
        ops::linear_fwd(&self.gpu, lb.lin.ptr(), x, self.p(li.linear.weight), s)?;
        self.fc_post(lb, li, (b, train), key, None)
    }

    /// Backward through [`Self::layer_forward`] with `(d, x, dx)`: `d` holds dloss/dout (used as
    /// scratch), `x` the layer's input; the weight gradients accumulate and `dx` receives
    /// dloss/dx.
    fn layer_backward(
        &self,
        lb: &LayerBufs,
        li: &FcLayerIds,
        (d, x, dx): (DevPtr, DevPtr, DevPtr),
        (b, train): (usize, bool),
        key: PhiloxKey,
    ) -> Result<()> {
        self.fc_post(lb, li, (b, train), key, Some(d))?;
        let (s, w) = (li.shape(b), li.linear.weight);
        ops::linear_wgrad(&self.gpu, self.g(w), d, x, s)?;
        ops::linear_dgrad(&self.gpu, dx, d, self.p(w), s, false)
    }

    /// The sparse first layer's arguments for `b` cells of the minibatch on the device.
    fn sparse_args(&self, first: &FcLayerIds, b: usize) -> SparseLinearArgs {
        let g = self.layout.config.n_input;
        SparseLinearArgs {
            indptr: self.bp.indptr,
            indices: self.bp.indices,
            values: self.bp.values,
            rows: b as u32,
            h: first.linear.n_out as u32,
            genes: g as u32,
            ldw: (g + first.n_cat) as u32,
            ..Default::default()
        }
    }

    fn latent_args(&self, which: Which, b: usize) -> LatentArgs {
        let w = self.work.as_ref().expect("work");
        let losses = &w.losses;
        let cap = w.cap;
        match which {
            Which::Z => {
                let ids = &self.layout.z_encoder;
                let e = &w.z_enc;
                LatentArgs {
                    q_m: e.q_m.ptr(),
                    b_m: self.p(ids.mean.bias),
                    u: e.u.ptr(),
                    b_v: self.p(ids.var.bias),
                    q_v: e.q_v.ptr(),
                    z: w.z.ptr(),
                    eps: w.eps_z.ptr(),
                    kl: losses.at::<f64>(cap),
                    dz: w.d_z.ptr(),
                    d_q_m: e.d_q_m.ptr(),
                    d_u: e.d_u.ptr(),
                    codes: self.bp.batch,
                    flags: if self.layout.config.latent_distribution == LatentDistribution::Ln {
                        LAT_LN
                    } else {
                        0
                    },
                    rows: b as u32,
                    n: self.layout.config.n_latent as u32,
                    ..Default::default()
                }
            }
            Which::L => {
                let ids = &self.layout.l_encoder;
                let mut a = LatentArgs {
                    z: w.library.ptr(),
                    eps: w.eps_l.ptr(),
                    kl: losses.at::<f64>(2 * cap),
                    dz: w.d_library.ptr(),
                    log_library: self.bp.log_library,
                    codes: self.bp.batch,
                    flags: LAT_OBSERVED,
                    rows: b as u32,
                    n: 1,
                    ..Default::default()
                };
                if let Some(e) = &w.l_enc {
                    a.flags = 0;
                    a.q_m = e.q_m.ptr();
                    a.b_m = self.p(ids.mean.bias);
                    a.u = e.u.ptr();
                    a.b_v = self.p(ids.var.bias);
                    a.q_v = e.q_v.ptr();
                    a.d_q_m = e.d_q_m.ptr();
                    a.d_u = e.d_u.ptr();
                    a.prior_means = self.buf(self.layout.library_log_means.expect("prior"));
                    a.prior_vars = self.buf(self.layout.library_log_vars.expect("prior"));
                }
                a
            }
        }
    }

    fn output_args(&self, b: usize) -> OutputArgs {
        let w = self.work.as_ref().expect("work");
        let cfg = &self.layout.config;
        let dec = &self.layout.decoder;
        let lik = cfg.gene_likelihood;
        let (theta_mode, n_cat, codes) = if !lik.has_theta() {
            (THETA_NONE, 0, 0)
        } else {
            match cfg.dispersion {
                Dispersion::Gene => (THETA_GENE, 0, 0),
                Dispersion::GeneBatch => (THETA_CATEGORY, cfg.n_batch, self.bp.batch),
                Dispersion::GeneLabel => (THETA_CATEGORY, cfg.n_labels, self.bp.labels),
                Dispersion::GeneCell => (THETA_CELL, 0, 0),
            }
        };
        OutputArgs {
            rho: w.rho.ptr(),
            b_rho: self.p(dec.scale.bias),
            d_rho: w.d_rho.ptr(),
            pi: w.pi.ptr(),
            b_pi: self.p(dec.dropout.bias),
            r: w.r.ptr(),
            b_r: self.p(dec.r.bias),
            px_r: self.layout.px_r.map_or(0, |id| self.p(id)),
            codes,
            library: w.library.ptr(),
            indptr: self.bp.indptr,
            indices: self.bp.indices,
            values: self.bp.values,
            rec: w.losses.ptr(),
            d_library: w.d_library.ptr(),
            grad_scale: 1.0 / b as f64,
            likelihood: likelihood_code(lik),
            theta_mode,
            n_cat: n_cat as u32,
            rows: b as u32,
            genes: cfg.n_input as u32,
            pad: 0,
        }
    }

    /// The gradient buffer (parameters' layout) of the last backward pass.
    pub fn gradients(&self) -> Result<Vec<f32>> {
        self.gpu.bind()?;
        let mut v = vec![0f32; self.layout.n_param_elems];
        self.gpu.download_f32(&mut v, self.grads.ptr())?;
        Ok(v)
    }

    /// Download `[B, n]` rows of a work buffer.
    fn fetch(&self, f: impl Fn(&Work) -> DevPtr, n: usize) -> Result<Vec<f32>> {
        let w = self
            .work
            .as_ref()
            .ok_or_else(|| Error::Cuda("no forward pass yet".into()))?;
        let mut v = vec![0f32; self.last_b * n];
        self.gpu.download_f32(&mut v, f(w))?;
        Ok(v)
    }

    /// `q_m`, `q_v` of the z encoder from the last forward pass (`[B, L]` each).
    pub fn posterior(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let l = self.layout.config.n_latent;
        Ok((
            self.fetch(|w| w.z_enc.q_m.ptr(), l)?,
            self.fetch(|w| w.z_enc.q_v.ptr(), l)?,
        ))
    }

    /// The decoder input z (`[B, L]`) and the library (`[B]`) of the last forward pass.
    pub fn z_and_library(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let l = self.layout.config.n_latent;
        Ok((
            self.fetch(|w| w.z.ptr(), l)?,
            self.fetch(|w| w.library.ptr(), 1)?,
        ))
    }

    /// The standard normals of the last forward pass: eps_z (`[B, L]`) and eps_l (`[B]`, latent
    /// library only, else empty).
    pub fn noise(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let l = self.layout.config.n_latent;
        let el = if self.layout.config.use_observed_lib_size {
            Vec::new()
        } else {
            self.fetch(|w| w.eps_l.ptr(), 1)?
        };
        Ok((self.fetch(|w| w.eps_z.ptr(), l)?, el))
    }
}

/// Whether the GPU engine supports `cfg`: every option of the CPU engine is implemented; the only
/// limits are the kernels' sizes.
pub fn check_config(cfg: &ModelConfig) -> Result<()> {
    cfg.validate()?;
    if cfg.n_input >= (1 << 31) || cfg.n_hidden > 12288 {
        return Err(Error::Config(format!(
            "the GPU engine supports up to 2^31 genes and 12,288 hidden units (got {} and {})",
            cfg.n_input, cfg.n_hidden
        )));
    }
    Ok(())
}

impl CudaEngine {
    /// Queue one pass over the `b` cells of the minibatch at `self.bp` (uploaded, or gathered on
    /// the device): forward, and with `pass.grads` the backward pass into the gradient buffer
    /// (zeroed first). Nothing waits for the device; the per-cell losses are left in the work
    /// buffer (`losses`: reconstruction `[cap]`, KL_z `[cap]`, KL_l `[cap]`, f64).
    pub(super) fn launch_pass(&mut self, b: usize, pass: Pass) -> Result<()> {
        let (step, kl_weight, mode, grads) = (pass.step, pass.kl_weight, pass.mode, pass.grads);
        self.refresh_transposes()?;
        let train = mode == Mode::Train;
        let cfg = self.layout.config.clone();
        let g = cfg.n_input;
        if grads {
            self.gpu.zero(self.grads.ptr(), self.grads.bytes())?;
        }

        // Encoders, reparameterisation, library.
        self.encoder_forward(Which::Z, b, train, step)?;
        let mut za = self.latent_args(Which::Z, b);
        za.key = PhiloxKey::new(self.seed, Stream::LatentNoise, step);
        ops::latent(&self.gpu, REPARAM_KL_FWD, &za)?;
        if !cfg.use_observed_lib_size {
            self.encoder_forward(Which::L, b, train, step)?;
        }
        let mut la = self.latent_args(Which::L, b);
        la.key = PhiloxKey::new(self.seed, Stream::LibraryNoise, step);
        ops::latent(&self.gpu, LIBRARY_FWD, &la)?;

        // Decoder.
        let w = self.work.as_ref().expect("work");
        let dec = &self.layout.decoder;
        for (i, li) in dec.layers.iter().enumerate() {
            let x = if i == 0 {
                w.z.ptr()
            } else {
                w.dec[i - 1].out.ptr()
            };
            self.layer_forward(&w.dec[i], li, x, (b, train), PhiloxKey::default())?;
        }
        let hd = w.dec.last().expect("a layer").out.ptr();
        let head = |ids: &LinearIds, y: DevPtr| self.head_forward(ids, hd, y, b);
        head(&dec.scale, w.rho.ptr())?;
        if cfg.gene_likelihood.has_pi() {
            head(&dec.dropout, w.pi.ptr())?;
        }
        let cell_theta = cfg.gene_likelihood.has_theta() && cfg.dispersion == Dispersion::GeneCell;
        if cell_theta {
            head(&dec.r, w.r.ptr())?;
        }
        let oa = self.output_args(b);
        ops::decoder_output(&self.gpu, &oa, grads)?;

        if grads {
            // Output heads -> h_d.
            self.head_backward(&dec.scale, w.d_rho.ptr(), hd, w.d_hd.ptr(), false, b)?;
            if cfg.gene_likelihood.has_pi() {
                self.head_backward(&dec.dropout, w.pi.ptr(), hd, w.d_hd.ptr(), true, b)?;
            }
            if cfg.gene_likelihood.has_theta() {
                if cell_theta {
                    self.head_backward(&dec.r, w.r.ptr(), hd, w.d_hd.ptr(), true, b)?;
                } else {
                    ops::column_sum(
                        &self.gpu,
                        &ColumnArgs {
                            d: w.r.ptr(),
                            out: self.g(self.layout.px_r.expect("px_r")),
                            codes: oa.codes,
                            rows: b as u32,
                            n: g as u32,
                            n_cat: oa.n_cat,
                            pad: 0,
                        },
                    )?;
                }
            }
            // Decoder layers -> dz.
            let (mut d, mut d_next) = (w.d_hd.ptr(), w.d_hd2.ptr());
            for i in (0..dec.layers.len()).rev() {
                let (x, dx) = if i == 0 {
                    (w.z.ptr(), w.d_z.ptr())
                } else {
                    (w.dec[i - 1].out.ptr(), d_next)
                };
                let key = PhiloxKey::default();
                self.layer_backward(&w.dec[i], &dec.layers[i], (d, x, dx), (b, train), key)?;
                if i > 0 {
                    std::mem::swap(&mut d, &mut d_next);
                }
            }
            // Reparameterisation and KL, then the z encoder.
            let mut zb = self.latent_args(Which::Z, b);
            zb.kl_w = (kl_weight / b as f64) as f32;
            ops::latent(&self.gpu, REPARAM_KL_BWD, &zb)?;
            self.encoder_backward(Which::Z, b, train, step)?;
            if !cfg.use_observed_lib_size {
                let mut lb = self.latent_args(Which::L, b);
                lb.kl_w = (1.0 / b as f64) as f32;
                ops::latent(&self.gpu, LIBRARY_BWD, &lb)?;
                self.encoder_backward(Which::L, b, train, step)?;
            }
        }

        Ok(())
    }

    /// Read the per-cell losses of the last pass over `b` cells back (waiting for the device),
    /// keep them for `per_cell_losses`, and sum them.
    fn read_losses(&mut self, b: usize, kl_weight: f64) -> Result<LossParts> {
        let cfg = &self.layout.config;
        let cap = self.work.as_ref().expect("work").cap;
        let mut losses = vec![0f64; 3 * cap];
        let lp = self.work.as_ref().expect("work").losses.ptr();
        self.gpu.download_f64(&mut losses, lp)?;
        self.rec = losses[..b].to_vec();
        self.kl_z = losses[cap..cap + b].to_vec();
        self.kl_l = losses[2 * cap..2 * cap + b].to_vec();
        self.last_b = b;
        let rec_sum: f64 = self.rec.iter().sum();
        let kl_z_sum: f64 = self.kl_z.iter().sum();
        let kl_l_sum: f64 = if cfg.use_observed_lib_size {
            0.0
        } else {
            self.kl_l.iter().sum()
        };
        Ok(LossParts::from_sums(
            b, rec_sum, kl_z_sum, kl_l_sum, kl_weight,
        ))
    }
}

impl Engine for CudaEngine {
    /// As `CpuEngine::forward_backward`, as a sequence of launches (see the module documentation),
    /// then the per-cell losses read back: the step's one wait for the device.
    fn forward_backward(&mut self, batch: &Minibatch, pass: Pass) -> Result<LossParts> {
        self.gpu.bind()?;
        validate_minibatch(batch, &self.layout, pass.mode)?;
        let b = batch.len();
        self.reserve(b)?;
        self.upload(batch)?;
        self.launch_pass(b, pass)?;
        self.read_losses(b, pass.kl_weight)
    }

    fn adam_update(&mut self) -> Result<()> {
        self.adam_step += 1;
        ops::adam(
            &self.gpu,
            &AdamArgs {
                params: self.params.ptr(),
                grads: self.grads.ptr(),
                m: self.adam_m.ptr(),
                v: self.adam_v.ptr(),
                mask: self.mask.ptr(),
                ..AdamArgs::new(&self.adam_cfg, self.adam_step, self.layout.n_param_elems)
            },
        )?;
        self.wt_valid = false;
        Ok(())
    }

    fn per_cell_losses(&self, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let n = n.min(self.last_b);
        (
            self.rec[..n].to_vec(),
            self.kl_z[..n].to_vec(),
            self.kl_l[..n].to_vec(),
        )
    }

    fn encode(&mut self, batch: &Minibatch) -> Result<(Vec<f32>, Vec<f32>)> {
        self.gpu.bind()?;
        validate_minibatch(batch, &self.layout, Mode::Eval)?;
        let b = batch.len();
        self.reserve(b)?;
        self.upload(batch)?;
        self.refresh_transposes()?;
        self.encoder_forward(Which::Z, b, false, 0)?;
        let mut za = self.latent_args(Which::Z, b);
        za.key = PhiloxKey::new(self.seed, Stream::LatentNoise, 0);
        ops::latent(&self.gpu, REPARAM_KL_FWD, &za)?;
        self.last_b = b;
        self.posterior()
    }

    /// Waits for every queued launch (the last Adam step is never synchronised by the training
    /// loop), then reads the values back, each copy checked: a device fault is an error here,
    /// never a model of zeros. Values that are not finite are refused too: a fault that
    /// corrupted memory without an error code must not become a saved model either.
    fn state(&self) -> Result<ModelState<f32>> {
        self.gpu.bind()?;
        self.gpu.sync()?;
        let mut s = ModelState::<f32>::zeros(self.layout.clone());
        self.gpu.download_f32(&mut s.params, self.params.ptr())?;
        self.gpu.download_f32(&mut s.buffers, self.buffers.ptr())?;
        for (tensors, values) in [
            (&self.layout.params, &s.params),
            (&self.layout.buffers, &s.buffers),
        ] {
            for t in tensors {
                if let Some(i) = values[t.range()].iter().position(|v| !v.is_finite()) {
                    return Err(Error::Cuda(format!(
                        "the model read back from {} is corrupt: {}[{i}] is {}",
                        self.name(),
                        t.name,
                        values[t.range()][i]
                    )));
                }
            }
        }
        Ok(s)
    }

    fn optimizer_state(&self) -> Result<OptimizerState> {
        let mut s = OptimizerState::zeros(&self.layout);
        self.gpu.bind()?;
        self.gpu.download_f32(&mut s.m, self.adam_m.ptr())?;
        self.gpu.download_f32(&mut s.v, self.adam_v.ptr())?;
        s.step = self.adam_step;
        Ok(s)
    }

    fn set_optimizer_state(&mut self, state: &OptimizerState) -> Result<()> {
        state.check(&self.layout)?;
        self.gpu.bind()?;
        self.gpu.upload_f32(self.adam_m.ptr(), &state.m)?;
        self.gpu.upload_f32(self.adam_v.ptr(), &state.v)?;
        // The copies read the caller's memory: wait for them before it can go.
        self.gpu.sync()?;
        self.adam_step = state.step;
        Ok(())
    }

    fn name(&self) -> String {
        if self.gpu.is_emulated() {
            "cuda-emulated (host)".to_string()
        } else {
            format!("cuda:{} ({})", self.gpu.info.index, self.gpu.info.name)
        }
    }
}
