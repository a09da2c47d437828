//! One whole training step of the GPU engine against the CPU reference (`CpuEngine`, f32), on
//! fresh random weights, BatchNorm statistics and counts, with the same Philox noise and dropout:
//! every loss part, the per-cell losses, the posterior, z, every parameter gradient and every
//! BatchNorm running-statistics update, at 1e-4 relative (norm of the difference over the norm of
//! the reference, per tensor), for every option the CPU engine has. Then a few Adam steps and an
//! evaluation pass against `CpuTrainer`, and `encode`.
//!
//! Each test runs on the GPU when there is one (else prints why it skips) and on the host emulation
//! of the kernels (kernels/common.cuh, `SCVI_EMU`), which checks the engine's orchestration and the
//! kernels' arithmetic on any machine with a C++ compiler. Seeds are printed; the suite uses a
//! fixed one, `SCVI_RS_TEST_SEED=N` repeats a run and `SCVI_RS_TEST_SEED=random` explores.

mod common;

use common::gpu::{device_tests, Checker, Target, Tol};
use common::{f64s, Rng};
use scvi_rs::batch::Minibatch;
use scvi_rs::cpu::engine::NoiseBuffers;
use scvi_rs::cpu::{CpuEngine, CpuTrainer};
use scvi_rs::cuda::{Counts, CudaEngine};
use scvi_rs::data::simulate::{simulate, SimConfig};
use scvi_rs::engine::{AdamConfig, Engine, Mode, Pass};
use scvi_rs::model::config::{
    Dispersion, GeneLikelihood, LatentDistribution, ModelConfig, NormPlacement,
};
use scvi_rs::model::init::ModelState;
use scvi_rs::model::layout::Layout;
use scvi_rs::rng::{Philox, Stream};
use scvi_rs::Error;

/// PyTorch's initialisation, then BatchNorm affine parameters and running statistics, px_r and
/// the library prior moved off their defaults so that every term is exercised.
fn random_state(cfg: &ModelConfig, rng: &mut Rng) -> ModelState<f32> {
    let layout = Layout::new(cfg);
    let mut s = ModelState::<f32>::init(layout.clone(), rng.next());
    for t in &layout.params {
        let is_bn = t.name.contains(".fc_layers.") && t.name.contains(".1.");
        if is_bn || t.name == "px_r" {
            let leaf_w = t.name.ends_with("weight");
            for v in &mut s.params[t.range()] {
                let u = rng.uniform() as f32;
                *v = if is_bn && leaf_w {
                    0.5 + u
                } else {
                    2.0 * u - 1.0
                };
            }
        }
    }
    for t in &layout.buffers {
        for v in &mut s.buffers[t.range()] {
            let u = rng.uniform() as f32;
            *v = if t.name.ends_with("running_var") {
                0.5 + u
            } else if t.name.ends_with("running_mean") {
                0.4 * u - 0.2
            } else if t.name.ends_with("num_batches_tracked") {
                3.0
            } else if t.name.contains("library_log_means") {
                6.0 + u
            } else {
                0.3 + 0.5 * u
            };
        }
    }
    s
}

fn random_batch(cfg: &ModelConfig, b: usize, rng: &mut Rng) -> Minibatch {
    let g = cfg.n_input;
    let mut x = vec![0.0f64; b * g];
    for i in 0..b {
        let density = 0.1 + 0.4 * rng.uniform();
        for j in 0..g {
            if rng.uniform() < density {
                let u = rng.uniform();
                x[i * g + j] = (1.0 + (-u.ln() * 4.0)).floor();
            }
        }
        x[i * g + rng.below(g)] += 1.0;
    }
    let batch = (0..b).map(|_| rng.below(cfg.n_batch) as u32).collect();
    let labels = (0..b).map(|_| rng.below(cfg.n_labels) as u32).collect();
    Minibatch::from_dense(&x, g, batch, labels)
}

fn small(g: usize) -> ModelConfig {
    ModelConfig {
        n_input: g,
        n_hidden: 32,
        n_latent: 6,
        ..ModelConfig::default()
    }
}

/// The configurations: every likelihood, dispersion, latent distribution, normalisation placement,
/// covariate injection and library mode appears in at least one.
fn configs(g: usize) -> Vec<(&'static str, ModelConfig)> {
    vec![
        ("zinb-gene (defaults)", small(g)),
        (
            "nb-gene_batch-ln-2layers-layernorm-encode_covariates",
            ModelConfig {
                n_batch: 3,
                n_layers: 2,
                gene_likelihood: GeneLikelihood::Nb,
                dispersion: Dispersion::GeneBatch,
                latent_distribution: LatentDistribution::Ln,
                use_layer_norm: NormPlacement::Both,
                use_batch_norm: NormPlacement::Encoder,
                encode_covariates: true,
                ..small(g)
            },
        ),
        (
            "poisson-latent_library-batchnorm_decoder-no_deep_inject",
            ModelConfig {
                n_batch: 2,
                n_layers: 2,
                gene_likelihood: GeneLikelihood::Poisson,
                use_batch_norm: NormPlacement::Decoder,
                deeply_inject_covariates: false,
                use_observed_lib_size: false,
                ..small(g)
            },
        ),
        (
            "zinb-gene_cell-latent_library-no_norm",
            ModelConfig {
                n_batch: 2,
                dispersion: Dispersion::GeneCell,
                use_batch_norm: NormPlacement::None,
                use_observed_lib_size: false,
                dropout_rate: 0.3,
                ..small(g)
            },
        ),
        (
            "zinb-gene_label-layernorm_encoder",
            ModelConfig {
                n_labels: 4,
                dispersion: Dispersion::GeneLabel,
                use_layer_norm: NormPlacement::Encoder,
                ..small(g)
            },
        ),
    ]
}

/// Whether a tensor's exact gradient is zero (a Linear bias that feeds a BatchNorm): its computed
/// value is rounding only, so only an absolute bound makes sense.
fn feeds_batch_norm(layout: &Layout, name: &str) -> bool {
    if !name.ends_with(".0.bias") || !name.contains(".fc_layers.") {
        return false;
    }
    let bn = name.replace(".0.bias", ".1.weight");
    layout.param(&bn).is_some()
}

const REL: f64 = 1e-4;

/// One forward + backward on both engines; compare everything.
fn step_matches(target: Target, what: &str) {
    let Some((seed, mut rng)) = target.seeded(what) else {
        return;
    };
    let g = 150 + rng.below(60);
    let mut failures = Vec::new();
    for (name, cfg) in configs(g) {
        let b = 20 + rng.below(12);
        println!("{what} / {name}: B={b} G={g}");
        let state = random_state(&cfg, &mut rng);
        let batch = random_batch(&cfg, b, &mut rng);
        let run_seed = rng.next();
        let step = rng.next() % 1000;
        let kl_weight = 0.3 + 0.7 * rng.uniform();
        let layout = state.layout.clone();

        // CPU reference.
        let philox = Philox::new(run_seed);
        let mut noise = NoiseBuffers::<f32>::default();
        noise.draw(&philox, step, b, cfg.n_latent);
        let mut cpu_state = state.clone();
        let mut cpu = CpuEngine::<f32>::new(layout.clone());
        let mut cpu_grads = vec![0f32; layout.n_param_elems];
        let cp = cpu
            .forward_backward(
                &mut cpu_state,
                Some(&mut cpu_grads),
                &batch,
                &noise.as_step(Some((philox, step))),
                kl_weight,
                Mode::Train,
            )
            .expect("cpu step");

        // GPU.
        let gpu = target.open(what).expect("device");
        let mut eng =
            CudaEngine::new(gpu, &state, run_seed, AdamConfig::default()).expect("gpu engine");
        let gp = eng
            .forward_backward(&batch, Pass::train(step, kl_weight))
            .expect("gpu step");
        let mut c = Checker::new(format!("{what} / {name} (seed {seed})"));
        let loss_tol = Tol::new(1e-5, 1e-6, 1e-5);
        c.check(
            "loss parts (loss, rec, kl_z, kl_l)",
            &[gp.loss, gp.reconstruction_sum, gp.kl_z_sum, gp.kl_l_sum],
            &[cp.loss, cp.reconstruction_sum, cp.kl_z_sum, cp.kl_l_sum],
            loss_tol,
        );
        let (r, kz, kl) = eng.per_cell_losses(b);
        let (cr, ckz, ckl) = cpu.per_cell(b);
        c.check("per-cell reconstruction loss", &r, cr, loss_tol);
        c.check("per-cell KL_z", &kz, ckz, Tol::new(1e-4, 1e-6, 1e-5));
        c.check("per-cell KL_l", &kl, ckl, Tol::new(1e-4, 1e-6, 1e-5));
        let (eps_z, _) = eng.noise().expect("noise");
        c.check_exact(
            "eps_z (Philox normals)",
            &eps_z,
            &noise.eps_z[..b * cfg.n_latent],
        );
        let (qm, qv) = eng.posterior().expect("posterior");
        let (cqm, cqv) = cpu.posterior(b);
        let act = Tol::new(1e-3, 1e-5, REL);
        c.check_f32("q_m", &qm, cqm, act);
        c.check_f32("q_v", &qv, cqv, act);
        let (z, _) = eng.z_and_library().expect("z");
        let (cz, _) = cpu.z_and_scale(b);
        c.check_f32("z", &z, cz, act);

        // Gradients, per tensor.
        let gg = eng.gradients().expect("gradients");
        let scale = cp.loss.abs().max(1.0);
        for t in &layout.params {
            let (a, w) = (f64s(&gg[t.range()]), f64s(&cpu_grads[t.range()]));
            let tol = if feeds_batch_norm(&layout, &t.name) {
                Tol::new(0.0, 1e-5 * scale, f64::INFINITY)
            } else {
                let m = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                Tol::new(1e-2, 1e-4 * m + 1e-7 * scale, REL)
            };
            c.check(&format!("grad {}", t.name), &a, &w, tol);
        }
        // Running statistics (and num_batches_tracked) after the training-mode forward pass.
        let gs = eng.state().expect("state");
        for t in &layout.buffers {
            c.check_f32(
                &format!("buffer {}", t.name),
                &gs.buffers[t.range()],
                &cpu_state.buffers[t.range()],
                Tol::new(1e-5, 1e-6, 1e-5),
            );
        }
        failures.extend(c.failure());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Several Adam steps through the `Engine` interface, then an evaluation pass and `encode`.
fn training_matches(target: Target, what: &str) {
    let Some((seed, mut rng)) = target.seeded(what) else {
        return;
    };
    let g = 120 + rng.below(40);
    let mut failures = Vec::new();
    for (name, cfg) in configs(g).into_iter().take(4) {
        let state = random_state(&cfg, &mut rng);
        let run_seed = rng.next();
        let adam = AdamConfig::default();
        let mut cpu = CpuTrainer::<f32>::new(state.clone(), adam, run_seed);
        let device = target.open(what).expect("device");
        let mut gpu = CudaEngine::new(device, &state, run_seed, adam).expect("gpu engine");
        let mut c = Checker::new(format!("{what} / {name} (seed {seed})"));
        let mut losses = (Vec::new(), Vec::new());
        for step in 0..3u64 {
            let batch = random_batch(&cfg, 16 + rng.below(8), &mut rng);
            let kl = 0.5;
            losses
                .0
                .push(gpu.train_step(&batch, step, kl).expect("gpu").loss);
            losses
                .1
                .push(cpu.train_step(&batch, step, kl).expect("cpu").loss);
        }
        c.check(
            "train losses",
            &losses.0,
            &losses.1,
            Tol::new(1e-4, 1e-6, 1e-4),
        );
        let (gs, cs) = (
            gpu.state().expect("gpu state"),
            cpu.state().expect("cpu state"),
        );
        // After 3 Adam steps of lr 1e-3 the parameters differ by rounding of the updates only.
        c.check_f32(
            "params after 3 Adam steps",
            &gs.params,
            &cs.params,
            Tol::new(1e-4, 1e-6, 1e-6),
        );
        c.check_f32(
            "buffers after 3 steps",
            &gs.buffers,
            &cs.buffers,
            Tol::new(1e-4, 1e-6, 1e-5),
        );
        let batch = random_batch(&cfg, 9, &mut rng);
        let ge = gpu.eval_loss(&batch, 1 << 48, 1.0).expect("gpu eval");
        let ce = cpu.eval_loss(&batch, 1 << 48, 1.0).expect("cpu eval");
        c.check(
            "eval loss parts",
            &[ge.loss, ge.reconstruction_sum, ge.kl_z_sum, ge.kl_l_sum],
            &[ce.loss, ce.reconstruction_sum, ce.kl_z_sum, ce.kl_l_sum],
            Tol::new(1e-4, 1e-6, 1e-4),
        );
        let (gm, gv) = gpu.encode(&batch).expect("gpu encode");
        let (cm, cv) = cpu.encode(&batch).expect("cpu encode");
        c.check_f32("encode q_m", &gm, &cm, Tol::new(1e-3, 1e-5, 1e-4));
        c.check_f32("encode q_v", &gv, &cv, Tol::new(1e-3, 1e-5, 1e-4));
        failures.extend(c.failure());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What one training step asks of the device, counted by `Gpu::counts` (the counts the step floor
/// of docs/cuda.md is built on): the same launches and products every step, the dense products'
/// arithmetic exactly `12 B H G` (the two `[B, G]` output heads, forward, weight and input
/// gradients) `+ 18 B H L` (the q_m and q_v heads, the decoder layer on z) for scvi-tools' default
/// model with one layer, 18 launches and 15 products, and one wait for the device per step: the
/// per-cell losses read back.
/// Issue 14's sync-free loop changes the last figure to one per N steps.
fn step_counts(target: Target, what: &str) {
    let Some((seed, mut rng)) = target.seeded(what) else {
        return;
    };
    let g = 150 + rng.below(60);
    let cfg = ModelConfig {
        n_batch: 2,
        ..small(g)
    };
    let (h, l) = (cfg.n_hidden as u64, cfg.n_latent as u64);
    let state = random_state(&cfg, &mut rng);
    let device = target.open(what).expect("device");
    let mut gpu = CudaEngine::new(device, &state, rng.next(), AdamConfig::default()).expect("gpu");
    let b = 24;
    let batches: Vec<Minibatch> = (0..4).map(|_| random_batch(&cfg, b, &mut rng)).collect();
    let mut per_step = Vec::new();
    for (step, batch) in batches.iter().enumerate() {
        let before = gpu.gpu().counts();
        gpu.train_step(batch, step as u64, 0.5).expect("train step");
        per_step.push(gpu.gpu().counts().since(&before));
    }
    println!("{what} (seed {seed}), B={b} G={g}: per step {per_step:?}");
    // The first step sizes the work buffers; from the second on every step is alike, but for the
    // upload, which is the minibatch's size.
    let steady = per_step[1];
    let alike = |c: &Counts| {
        Counts { bytes_up: 0, ..*c }
            == Counts {
                bytes_up: 0,
                ..steady
            }
    };
    assert!(per_step[2..].iter().all(alike), "{per_step:?}");
    let (b, g) = (b as u64, g as u64);
    assert_eq!(
        steady.gemm_flops,
        12 * b * h * g + 18 * b * h * l,
        "{steady:?}"
    );
    assert_eq!(steady.syncs, 1, "one wait per step: {steady:?}");
    assert!(steady.bytes_down > 0 && steady.bytes_up > 0, "{steady:?}");
    // docs/cuda.md's floor counts these: 18 launches and memsets, 15 products.
    assert_eq!((steady.launches, steady.gemms), (18, 15), "{steady:?}");
}

/// Training on the data set held on the device (`hold_data`, `train_step_cells`: the minibatch
/// gathered there by kernels/gather.cu) computes exactly what training on uploaded minibatches
/// (`Minibatch::gather` on the host) computes: the same losses and the same state, bit for bit,
/// over steps of different sizes; a step sends only its cell ids; bad cell ids are errors.
fn device_data(target: Target, what: &str) {
    let Some((seed, mut rng)) = target.seeded(what) else {
        return;
    };
    let data = simulate(&SimConfig {
        n_cells: 400,
        n_genes: 90 + rng.below(40),
        n_batches: 3,
        seed: rng.next(),
        ..SimConfig::default()
    });
    let (codes, cats) = data
        .obs_column("batch")
        .and_then(|c| c.to_categorical("batch"))
        .expect("batch codes");
    let labels = vec![0u32; data.n_cells()];
    let cfg = ModelConfig {
        n_batch: cats.len(),
        ..small(data.n_genes())
    };
    let state = random_state(&cfg, &mut rng);
    let run_seed = rng.next();
    let adam = AdamConfig::default();
    let open = || {
        let device = target.open(what).expect("device");
        CudaEngine::new(device, &state, run_seed, adam).expect("gpu engine")
    };
    let (mut host, mut held) = (open(), open());
    let bytes = held
        .hold_data(data.counts.as_ref(), &codes, &labels)
        .expect("hold the data");
    assert!(bytes > 0);
    let perm = Philox::new(seed).permutation(Stream::Shuffle, 0, data.n_cells());
    let mut mb = Minibatch::default();
    let mut at = 0;
    // Sizes across the gather's scan chunk (256 threads), a small one and the smallest.
    for (step, b) in [40usize, 7, 300, 2].into_iter().enumerate() {
        let cells = &perm[at..at + b];
        at += b;
        mb.gather(data.counts.as_ref(), cells, &codes, &labels);
        let ids: Vec<u32> = cells.iter().map(|&c| c as u32).collect();
        let want = host
            .train_step(&mb, step as u64, 0.5)
            .expect("uploaded step");
        let before = held.gpu().counts();
        let got = held
            .train_step_cells(&ids, step as u64, 0.5)
            .expect("held step");
        let sent = held.gpu().counts().since(&before).bytes_up;
        println!(
            "{what} (seed {seed}): step {step}, B={}: {want:?}",
            ids.len()
        );
        assert_eq!(format!("{got:?}"), format!("{want:?}"), "step {step}");
        assert_eq!(sent, 4 * ids.len() as u64, "only the cell ids go up");
    }
    let (hs, gs) = (host.state().expect("state"), held.state().expect("state"));
    assert!(
        hs.params == gs.params && hs.buffers == gs.buffers,
        "states differ"
    );
    for bad in [vec![0u32, 400], vec![5u32]] {
        match held.train_step_cells(&bad, 9, 0.5) {
            Err(Error::Shape(m)) => println!("{m}"),
            other => panic!("expected a shape error for {bad:?}, got {other:?}"),
        }
    }
}

device_tests! {
    device_data_emulated, device_data_on_gpu => device_data;
    step_matches_cpu_emulated, step_matches_cpu_on_gpu => step_matches;
    training_matches_cpu_emulated, training_matches_cpu_on_gpu => training_matches;
    step_counts_emulated, step_counts_on_gpu => step_counts;
}
