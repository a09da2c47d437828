//! Every parameter gradient of the CPU engine against central finite differences of its own loss, in
//! f64, for each likelihood, each dispersion, both latent distributions, 1 and 2 layers, with and
//! without batches, and the other options (latent library, layer norm, covariates in the encoder,
//! no deep injection, dropout).

use scvi_rs::batch::Minibatch;
use scvi_rs::cpu::{CpuEngine, StepNoise};
use scvi_rs::engine::Mode;
use scvi_rs::model::init::ModelState;
use scvi_rs::model::{
    Dispersion, GeneLikelihood, LatentDistribution, Layout, ModelConfig, NormPlacement,
};
use scvi_rs::rng::{Philox, Stream};

const B: usize = 7;
const G: usize = 11;

fn minibatch(n_batch: usize, n_labels: usize) -> Minibatch {
    let rng = Philox::new(99);
    let mut x = vec![0.0; B * G];
    for (i, v) in x.iter_mut().enumerate() {
        let u = rng.uniform_at(Stream::Init, 1000, i as u64);
        // About 45% zeros, some large counts.
        *v = if u < 0.45 {
            0.0
        } else {
            ((u - 0.45) * 40.0).powf(1.6).floor()
        };
    }
    for i in 0..B {
        x[i * G + i % G] += 3.0; // no empty cell
    }
    let batch = (0..B).map(|i| (i % n_batch) as u32).collect();
    let labels = (0..B).map(|i| ((i * 2) % n_labels) as u32).collect();
    Minibatch::from_dense(&x, G, batch, labels)
}

fn state_for(cfg: &ModelConfig) -> ModelState<f64> {
    let mut s = ModelState::<f64>::init(Layout::new(cfg), 5);
    let rng = Philox::new(17);
    // Move BatchNorm affine parameters and running statistics away from 1 / 0 so they matter.
    let layout = s.layout.clone();
    for (id, t) in layout.params.iter().enumerate() {
        if t.name.contains(".1.") || t.name == "px_r" {
            for (k, v) in s.params[t.range()].iter_mut().enumerate() {
                *v += 0.3 * (rng.uniform_at(Stream::Init, 5000 + id as u64, k as u64) - 0.5);
            }
        }
    }
    for (id, t) in layout.buffers.iter().enumerate() {
        for (k, v) in s.buffers[t.range()].iter_mut().enumerate() {
            let u = rng.uniform_at(Stream::Init, 9000 + id as u64, k as u64);
            if t.name.ends_with("running_var") {
                *v = 0.5 + u;
            } else if t.name.ends_with("running_mean") {
                *v = u - 0.5;
            } else if t.name == "library_log_means" {
                *v = 3.0 + u;
            } else if t.name == "library_log_vars" {
                *v = 0.5 + u;
            }
        }
    }
    s
}

fn check(cfg: ModelConfig, mode: Mode) {
    let name = format!("{cfg:?} {mode:?}");
    let layout = Layout::new(&cfg);
    let batch = minibatch(cfg.n_batch, cfg.n_labels);
    let rng = Philox::new(3);
    let mut eps_z = vec![0.0; B * cfg.n_latent];
    rng.fill_normal(Stream::LatentNoise, 0, &mut eps_z);
    let mut eps_l = vec![0.0; B];
    rng.fill_normal(Stream::LibraryNoise, 0, &mut eps_l);
    let noise = StepNoise {
        eps_z: &eps_z,
        eps_l: &eps_l,
        dropout: Some((rng, 0)),
    };
    let kl_weight = 0.7;
    let base = state_for(&cfg);
    let mut engine = CpuEngine::<f64>::new(layout.clone());
    let mut grads = vec![0.0; layout.n_param_elems];
    let mut s = base.clone();
    engine
        .forward_backward(&mut s, Some(&mut grads), &batch, &noise, kl_weight, mode)
        .unwrap();
    let loss_at = |engine: &mut CpuEngine<f64>, params: &[f64]| {
        let mut s = base.clone();
        s.params.copy_from_slice(params);
        engine
            .forward_backward(&mut s, None, &batch, &noise, kl_weight, mode)
            .unwrap()
            .loss
    };
    let mut params = base.params.clone();
    for t in &layout.params {
        if !t.trainable {
            continue;
        }
        let analytic = &grads[t.range()];
        let mut fd = vec![0.0; t.len];
        for (k, i) in t.range().enumerate() {
            let h = 1e-5 * params[i].abs().max(1.0);
            let orig = params[i];
            params[i] = orig + h;
            let up = loss_at(&mut engine, &params);
            params[i] = orig - h;
            let down = loss_at(&mut engine, &params);
            params[i] = orig;
            fd[k] = (up - down) / (2.0 * h);
        }
        let diff: f64 = analytic
            .iter()
            .zip(&fd)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = fd.iter().map(|b| b * b).sum::<f64>().sqrt();
        // Absolute part: central differences of a loss of size ~1e2 carry ~1e-9 of rounding per
        // element (a Linear bias that feeds a BatchNorm has an exact gradient of zero).
        let atol = 1e-8 * (t.len as f64).sqrt();
        assert!(
            diff <= 1e-6 * norm + atol,
            "{name}\n  tensor {}: |analytic - fd| = {diff:e}, |fd| = {norm:e}\n  analytic {:?}\n  fd       {:?}",
            t.name,
            &analytic[..analytic.len().min(6)],
            &fd[..fd.len().min(6)]
        );
    }
}

fn small(
    lik: GeneLikelihood,
    disp: Dispersion,
    latent: LatentDistribution,
    layers: usize,
    n_batch: usize,
) -> ModelConfig {
    ModelConfig {
        n_input: G,
        n_batch,
        n_labels: 3,
        n_hidden: 6,
        n_latent: 3,
        n_layers: layers,
        dropout_rate: 0.0,
        dispersion: disp,
        gene_likelihood: lik,
        latent_distribution: latent,
        ..ModelConfig::default()
    }
}

#[test]
fn every_likelihood_dispersion_latent_layers_and_batches() {
    for lik in [
        GeneLikelihood::Zinb,
        GeneLikelihood::Nb,
        GeneLikelihood::Poisson,
    ] {
        for disp in [
            Dispersion::Gene,
            Dispersion::GeneBatch,
            Dispersion::GeneLabel,
            Dispersion::GeneCell,
        ] {
            for latent in [LatentDistribution::Normal, LatentDistribution::Ln] {
                for layers in [1, 2] {
                    for n_batch in [1, 3] {
                        check(small(lik, disp, latent, layers, n_batch), Mode::Train);
                    }
                }
            }
        }
    }
}

#[test]
fn latent_library_covariates_norms_and_dropout() {
    let base = small(
        GeneLikelihood::Zinb,
        Dispersion::Gene,
        LatentDistribution::Normal,
        2,
        3,
    );
    let variants = [
        ModelConfig {
            use_observed_lib_size: false,
            ..base.clone()
        },
        ModelConfig {
            use_observed_lib_size: false,
            encode_covariates: true,
            ..base.clone()
        },
        ModelConfig {
            encode_covariates: true,
            deeply_inject_covariates: false,
            ..base.clone()
        },
        ModelConfig {
            use_batch_norm: NormPlacement::None,
            use_layer_norm: NormPlacement::Both,
            ..base.clone()
        },
        ModelConfig {
            use_batch_norm: NormPlacement::Encoder,
            use_layer_norm: NormPlacement::Decoder,
            ..base.clone()
        },
        ModelConfig {
            use_batch_norm: NormPlacement::Decoder,
            ..base.clone()
        },
        ModelConfig {
            dropout_rate: 0.3,
            ..base.clone()
        },
        ModelConfig {
            dropout_rate: 0.2,
            use_observed_lib_size: false,
            n_layers: 1,
            ..base.clone()
        },
    ];
    for cfg in variants {
        check(cfg, Mode::Train);
    }
}

#[test]
fn eval_mode_gradients() {
    // Inference-mode BatchNorm (running statistics) has its own backward.
    let cfg = small(
        GeneLikelihood::Nb,
        Dispersion::GeneBatch,
        LatentDistribution::Normal,
        2,
        3,
    );
    check(
        ModelConfig {
            use_observed_lib_size: false,
            ..cfg
        },
        Mode::Eval,
    );
}
