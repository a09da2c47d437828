//! Device faults are errors, wherever they surface, and never become a model: on the host emulation
//! of the kernels a fault is planted (`Gpu::plant_fault`) the way CUDA reports a kernel's illegal
//! address: launches are accepted, the next synchronisation fails, and every call after it. The
//! GPU engine's `state()` synchronises before it reads anything back, so the last Adam step of a
//! training run, which no loss read-back waits for, is covered too.

mod common;

use common::gpu::emulated_or_skip;
use scvi_rs::cuda::{CudaEngine, Gpu};
use scvi_rs::data::simulate::{simulate, SimConfig};
use scvi_rs::data::Dataset;
use scvi_rs::engine::{AdamConfig, Engine};
use scvi_rs::model::init::ModelState;
use scvi_rs::model::ModelConfig;
use scvi_rs::train::{self, Covariates, TrainConfig};
use scvi_rs::{Error, Scvi, Setup};

/// A small simulated data set and a model for it (small enough for the emulation).
fn small() -> (Dataset, ModelState<f32>) {
    let data = simulate(&SimConfig {
        n_cells: 160,
        n_genes: 40,
        ..SimConfig::default()
    });
    let cfg = ModelConfig {
        n_hidden: 16,
        n_latent: 4,
        ..ModelConfig::default()
    };
    let model = Scvi::new(&data, Setup::default(), cfg, 0).expect("model");
    (data, model.state)
}

/// `epochs` epochs of `fit` on the emulated engine, batch 64.
fn fit(eng: &mut CudaEngine, data: &Dataset, epochs: usize) -> scvi_rs::Result<()> {
    let n = data.n_cells();
    let zeros = vec![0u32; n];
    let cov = Covariates {
        batch: &zeros,
        labels: &zeros,
    };
    let cfg = TrainConfig {
        max_epochs: Some(epochs),
        batch_size: 64,
        ..TrainConfig::default()
    };
    let split = train::train_validation_split(n, cfg.train_size, cfg.batch_size, 0)?;
    train::fit(
        eng,
        data.counts.as_ref(),
        &cov,
        &split,
        &cfg,
        &mut train::Progress::default(),
        &mut |_, _, _, _| Ok(()),
    )
}

fn engine(gpu: Gpu, state: &ModelState<f32>) -> CudaEngine {
    CudaEngine::new(gpu, state, 0, AdamConfig::default()).expect("emulated engine")
}

fn expect_fault<T: std::fmt::Debug>(r: scvi_rs::Result<T>, what: &str) -> String {
    match r {
        Err(Error::Cuda(m)) => {
            println!("{what}: {m}");
            assert!(m.contains("planted"), "{what}: the planted fault: {m}");
            m
        }
        other => panic!("{what}: expected the device fault as Error::Cuda, got {other:?}"),
    }
}

#[test]
fn a_fault_after_the_last_step_is_an_error_not_a_model() {
    let Some(gpu) = emulated_or_skip("a_fault_after_the_last_step_is_an_error_not_a_model") else {
        return;
    };
    let (data, state) = small();
    let mut eng = engine(gpu, &state);
    fit(&mut eng, &data, 2).expect("training without a fault");
    // What training left queued (the last Adam step) faults: state() waits for it and fails.
    eng.gpu().plant_fault(0);
    expect_fault(
        eng.state().map(|_| ()),
        "state() after a fault in the last step",
    );
    // The fault is sticky, as on a device: the engine never works again.
    expect_fault(eng.state().map(|_| ()), "state() again");
    expect_fault(fit(&mut eng, &data, 1), "training on after the fault");
}

#[test]
fn a_fault_during_training_stops_it_with_an_error() {
    let Some(gpu) = emulated_or_skip("a_fault_during_training_stops_it_with_an_error") else {
        return;
    };
    let (data, state) = small();
    // Training syncs once per step (its losses) and per validation minibatch: plant the fault a
    // few synchronisations in, inside the first epoch.
    gpu.plant_fault(1);
    let mut eng = engine(gpu, &state);
    expect_fault(fit(&mut eng, &data, 2), "training with a fault in step 2");
    expect_fault(eng.state().map(|_| ()), "state() after it");
}

#[test]
fn without_a_fault_the_state_reads_back_exactly() {
    let Some(gpu) = emulated_or_skip("without_a_fault_the_state_reads_back_exactly") else {
        return;
    };
    let (_, state) = small();
    let eng = engine(gpu, &state);
    let back = eng.state().expect("state");
    assert_eq!(back.params, state.params);
    assert_eq!(back.buffers, state.buffers);
}

#[test]
fn a_non_finite_value_read_back_is_refused() {
    let Some(gpu) = emulated_or_skip("a_non_finite_value_read_back_is_refused") else {
        return;
    };
    let (_, mut state) = small();
    let t = state
        .layout
        .params
        .iter()
        .find(|t| t.name == "px_r")
        .expect("px_r");
    let at = t.range().start + 3;
    state.params[at] = f32::NAN;
    let eng = engine(gpu, &state);
    match eng.state().map(|_| ()) {
        Err(Error::Cuda(m)) => {
            println!("{m}");
            assert!(
                m.contains("px_r[3] is NaN"),
                "names the tensor and element: {m}"
            );
        }
        other => panic!("expected Error::Cuda, got {other:?}"),
    }
}
