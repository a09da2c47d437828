//! The flat parameter layout: every tensor of scvi-tools' `VAE` under its `state_dict` name, with its
//! shape and offset in one contiguous buffer. Parameters and buffers (BatchNorm running statistics,
//! the latent library prior) live in two buffers; gradients and Adam moments share the parameters'
//! layout. The engines address tensors through the ids recorded here, never by name.
//!
//! Shapes follow PyTorch: a `Linear(in, out)` weight is `[out, in]`, row-major; the one-hot covariate
//! columns come after the input columns (`torch.cat((x, one_hot), -1)`).

use super::config::{Dispersion, GeneLikelihood, ModelConfig};

/// One named tensor in a flat buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
    /// Whether this configuration gives the tensor a gradient (PyTorch: `.grad is not None`). Adam
    /// leaves the others untouched, weight decay included, as `torch.optim.Adam` does.
    pub trainable: bool,
}

impl Tensor {
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
}

/// A `Linear` layer: ids of its weight and bias in the parameter buffer.
#[derive(Clone, Debug)]
pub struct LinearIds {
    pub weight: usize,
    pub bias: usize,
    pub n_in: usize,
    pub n_out: usize,
}

impl LinearIds {
    /// The shape of this head's products on `b` rows (no one-hot columns).
    pub fn shape(&self, b: usize) -> LinearShape {
        LinearShape {
            b,
            n_in: self.n_in,
            ldw: self.n_in,
            n_out: self.n_out,
        }
    }
}

/// The shape of a Linear's products, as both engines run them: `b` rows of `n_in` inputs, `n_out`
/// outputs, the weight `[n_out, ldw]` row-major (`ldw = n_in + n_cat`: the one-hot columns follow
/// the inputs, and the products leave them alone).
#[derive(Clone, Copy, Debug)]
pub struct LinearShape {
    pub b: usize,
    pub n_in: usize,
    pub ldw: usize,
    pub n_out: usize,
}

/// One `FCLayers` layer: `Linear([x, onehot]) -> BatchNorm -> LayerNorm -> ReLU -> Dropout`.
#[derive(Clone, Debug)]
pub struct FcLayerIds {
    pub linear: LinearIds,
    /// Width of the injected one-hot (0 when this layer gets no covariate).
    pub n_cat: usize,
    /// BatchNorm weight and bias (parameters), running mean and variance (buffers).
    pub batch_norm: Option<BatchNormIds>,
    pub layer_norm: bool,
    pub dropout: f64,
}

impl FcLayerIds {
    /// The shape of this layer's products on `b` rows (its weight carries the one-hot columns).
    pub fn shape(&self, b: usize) -> LinearShape {
        LinearShape {
            b,
            n_in: self.linear.n_in,
            ldw: self.linear.n_in + self.n_cat,
            n_out: self.linear.n_out,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BatchNormIds {
    pub weight: usize,
    pub bias: usize,
    pub running_mean: usize,
    pub running_var: usize,
    pub num_batches_tracked: usize,
}

/// scvi-tools' `Encoder`: `FCLayers` then the mean and variance heads.
#[derive(Clone, Debug)]
pub struct EncoderIds {
    pub layers: Vec<FcLayerIds>,
    pub mean: LinearIds,
    pub var: LinearIds,
}

/// scvi-tools' `DecoderSCVI`.
#[derive(Clone, Debug)]
pub struct DecoderIds {
    pub layers: Vec<FcLayerIds>,
    pub scale: LinearIds,
    pub r: LinearIds,
    pub dropout: LinearIds,
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub config: ModelConfig,
    pub params: Vec<Tensor>,
    pub buffers: Vec<Tensor>,
    pub n_param_elems: usize,
    pub n_buffer_elems: usize,
    pub z_encoder: EncoderIds,
    pub l_encoder: EncoderIds,
    pub decoder: DecoderIds,
    pub px_r: Option<usize>,
    /// Buffers `[1, n_batch]` of the latent library prior (latent library only).
    pub library_log_means: Option<usize>,
    pub library_log_vars: Option<usize>,
}

struct Builder {
    params: Vec<Tensor>,
    buffers: Vec<Tensor>,
    n_p: usize,
    n_b: usize,
}

impl Builder {
    fn param(&mut self, name: String, shape: Vec<usize>, trainable: bool) -> usize {
        let len = shape.iter().product();
        self.params.push(Tensor {
            name,
            shape,
            offset: self.n_p,
            len,
            trainable,
        });
        self.n_p += len;
        self.params.len() - 1
    }
    fn buffer(&mut self, name: String, shape: Vec<usize>) -> usize {
        let len = shape.iter().product();
        self.buffers.push(Tensor {
            name,
            shape,
            offset: self.n_b,
            len,
            trainable: false,
        });
        self.n_b += len;
        self.buffers.len() - 1
    }
    fn linear(&mut self, prefix: &str, n_in: usize, n_out: usize, trainable: bool) -> LinearIds {
        let weight = self.param(format!("{prefix}.weight"), vec![n_out, n_in], trainable);
        let bias = self.param(format!("{prefix}.bias"), vec![n_out], trainable);
        LinearIds {
            weight,
            bias,
            n_in,
            n_out,
        }
    }

    /// `FCLayers(n_in, n_out, n_cat_list=[n_cat], n_layers, n_hidden, ...)`.
    #[allow(clippy::too_many_arguments)]
    fn fc_layers(
        &mut self,
        prefix: &str,
        n_in: usize,
        n_out: usize,
        n_cat: usize,
        n_layers: usize,
        n_hidden: usize,
        inject: bool,
        batch_norm: bool,
        layer_norm: bool,
        dropout: f64,
        trainable: bool,
    ) -> Vec<FcLayerIds> {
        let mut dims = vec![n_in];
        dims.extend(std::iter::repeat_n(n_hidden, n_layers - 1));
        dims.push(n_out);
        (0..n_layers)
            .map(|i| {
                let p = format!("{prefix}.fc_layers.Layer {i}");
                let cat = if i == 0 || inject { n_cat } else { 0 };
                let linear = self.linear(&format!("{p}.0"), dims[i] + cat, dims[i + 1], trainable);
                let linear = LinearIds {
                    n_in: dims[i],
                    ..linear
                };
                let bn = batch_norm.then(|| BatchNormIds {
                    weight: self.param(format!("{p}.1.weight"), vec![dims[i + 1]], trainable),
                    bias: self.param(format!("{p}.1.bias"), vec![dims[i + 1]], trainable),
                    running_mean: self.buffer(format!("{p}.1.running_mean"), vec![dims[i + 1]]),
                    running_var: self.buffer(format!("{p}.1.running_var"), vec![dims[i + 1]]),
                    num_batches_tracked: self.buffer(format!("{p}.1.num_batches_tracked"), vec![]),
                });
                FcLayerIds {
                    linear,
                    n_cat: cat,
                    batch_norm: bn,
                    layer_norm,
                    dropout,
                }
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn encoder(
        &mut self,
        prefix: &str,
        cfg: &ModelConfig,
        n_out: usize,
        n_layers: usize,
        trainable: bool,
    ) -> EncoderIds {
        let n_cat = if cfg.encode_covariates {
            cfg.batch_onehot_width()
        } else {
            0
        };
        let layers = self.fc_layers(
            &format!("{prefix}.encoder"),
            cfg.n_input,
            cfg.n_hidden,
            n_cat,
            n_layers,
            cfg.n_hidden,
            cfg.deeply_inject_covariates,
            cfg.use_batch_norm.encoder(),
            cfg.use_layer_norm.encoder(),
            cfg.dropout_rate,
            trainable,
        );
        let mean = self.linear(
            &format!("{prefix}.mean_encoder"),
            cfg.n_hidden,
            n_out,
            trainable,
        );
        let var = self.linear(
            &format!("{prefix}.var_encoder"),
            cfg.n_hidden,
            n_out,
            trainable,
        );
        EncoderIds { layers, mean, var }
    }
}

impl Layout {
    /// The tensors of `scvi.module.VAE(**cfg)`, in `state_dict` order.
    pub fn new(cfg: &ModelConfig) -> Layout {
        let mut b = Builder {
            params: vec![],
            buffers: vec![],
            n_p: 0,
            n_b: 0,
        };
        let g = cfg.n_input;
        let uses_theta = cfg.gene_likelihood.has_theta();
        let px_r = match cfg.dispersion {
            Dispersion::Gene => Some(vec![g]),
            Dispersion::GeneBatch => Some(vec![g, cfg.n_batch]),
            Dispersion::GeneLabel => Some(vec![g, cfg.n_labels]),
            Dispersion::GeneCell => None,
        }
        .map(|shape| b.param("px_r".into(), shape, uses_theta));
        let (library_log_means, library_log_vars) = if cfg.use_observed_lib_size {
            (None, None)
        } else {
            (
                Some(b.buffer("library_log_means".into(), vec![1, cfg.n_batch])),
                Some(b.buffer("library_log_vars".into(), vec![1, cfg.n_batch])),
            )
        };
        let z_encoder = b.encoder("z_encoder", cfg, cfg.n_latent, cfg.n_layers, true);
        let l_encoder = b.encoder("l_encoder", cfg, 1, 1, !cfg.use_observed_lib_size);
        let dec_layers = b.fc_layers(
            "decoder.px_decoder",
            cfg.n_latent,
            cfg.n_hidden,
            cfg.batch_onehot_width(),
            cfg.n_layers,
            cfg.n_hidden,
            cfg.deeply_inject_covariates,
            cfg.use_batch_norm.decoder(),
            cfg.use_layer_norm.decoder(),
            0.0,
            true,
        );
        let scale = b.linear("decoder.px_scale_decoder.0", cfg.n_hidden, g, true);
        let r = b.linear(
            "decoder.px_r_decoder",
            cfg.n_hidden,
            g,
            cfg.dispersion == Dispersion::GeneCell && uses_theta,
        );
        let dropout = b.linear(
            "decoder.px_dropout_decoder",
            cfg.n_hidden,
            g,
            cfg.gene_likelihood == GeneLikelihood::Zinb,
        );
        let decoder = DecoderIds {
            layers: dec_layers,
            scale,
            r,
            dropout,
        };
        Layout {
            config: cfg.clone(),
            n_param_elems: b.n_p,
            n_buffer_elems: b.n_b,
            params: b.params,
            buffers: b.buffers,
            z_encoder,
            l_encoder,
            decoder,
            px_r,
            library_log_means,
            library_log_vars,
        }
    }

    pub fn param(&self, name: &str) -> Option<&Tensor> {
        self.params.iter().find(|t| t.name == name)
    }
    pub fn buffer(&self, name: &str) -> Option<&Tensor> {
        self.buffers.iter().find(|t| t.name == name)
    }

    /// Every BatchNorm layer of the model.
    pub fn batch_norms(&self) -> impl Iterator<Item = &BatchNormIds> {
        self.z_encoder
            .layers
            .iter()
            .chain(&self.l_encoder.layers)
            .chain(&self.decoder.layers)
            .filter_map(|l| l.batch_norm.as_ref())
    }

    /// Per parameter element, 1 where its tensor receives gradients (`Tensor::trainable`), else 0:
    /// the mask of the GPU's Adam kernel.
    pub fn trainable_mask(&self) -> Vec<u8> {
        let mut m = vec![0u8; self.n_param_elems];
        for t in self.params.iter().filter(|t| t.trainable) {
            m[t.range()].iter_mut().for_each(|v| *v = 1);
        }
        m
    }
}
