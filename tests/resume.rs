//! Interrupt-and-resume equals a run that never stopped, bit for bit, through the library: the
//! training loop stopped at chosen points (mid-epoch, at an epoch's first step, at its last,
//! inside a validation pass, twice in one run, with early stopping counting), its state written
//! as a checkpoint file and read back, a fresh engine built from it, the loop continued. Also the
//! contract's optimiser state on the CPU engine and the host emulation of the CUDA engine, and
//! the checkpoint file's refusals (another format version, altered or truncated bytes).

mod common;

use common::files::tmpdir;
use common::gpu::emulated_or_skip;
use scvi_rs::batch::Minibatch;
use scvi_rs::cpu::CpuTrainer;
use scvi_rs::cuda::CudaEngine;
use scvi_rs::data::simulate::{simulate, SimConfig};
use scvi_rs::data::Dataset;
use scvi_rs::data::ObsColumn;
use scvi_rs::engine::{Engine, LossParts, Mode, OptimizerState, Pass};
use scvi_rs::model::init::ModelState;
use scvi_rs::model::{Layout, ModelConfig};
use scvi_rs::train::checkpoint::{checkpoint_bytes, Checkpoint, RunView};
use scvi_rs::train::{self, Progress, Split, TrainConfig};
use scvi_rs::training::{DataSource, Training};
use scvi_rs::{Device, Error, Result, Scvi, Setup};

/// Where a run is stopped: before training step `step`, or before its `eval`-th validation pass
/// (counted from 1 in this engine's life).
#[derive(Clone, Copy, Debug)]
enum Stop {
    Step(u64),
    Eval(usize),
}

/// The CPU engine, reporting an interruption at its stop point (as `interrupt::check` does
/// before a step: nothing of that pass runs).
struct Stopping {
    inner: CpuTrainer<f32>,
    stop: Option<Stop>,
    evals: usize,
}

impl Engine for Stopping {
    fn forward_backward(&mut self, batch: &Minibatch, pass: Pass) -> Result<LossParts> {
        let stop = match (self.stop, pass.mode) {
            (Some(Stop::Step(s)), Mode::Train) => s == pass.step,
            (Some(Stop::Eval(k)), Mode::Eval) => {
                self.evals += 1;
                self.evals == k
            }
            _ => false,
        };
        if stop {
            return Err(Error::Interrupted { signal: 2 });
        }
        self.inner.forward_backward(batch, pass)
    }
    fn adam_update(&mut self) -> Result<()> {
        self.inner.adam_update()
    }
    fn per_cell_losses(&self, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        self.inner.per_cell_losses(n)
    }
    fn encode(&mut self, batch: &Minibatch) -> Result<(Vec<f32>, Vec<f32>)> {
        self.inner.encode(batch)
    }
    fn state(&self) -> Result<ModelState<f32>> {
        self.inner.state()
    }
    fn optimizer_state(&self) -> Result<OptimizerState> {
        self.inner.optimizer_state()
    }
    fn set_optimizer_state(&mut self, s: &OptimizerState) -> Result<()> {
        self.inner.set_optimizer_state(s)
    }
    fn name(&self) -> String {
        "stopping cpu".into()
    }
}

struct Setting {
    data: Dataset,
    model: Scvi,
    batch: Vec<u32>,
    labels: Vec<u32>,
    split: Split,
    cfg: TrainConfig,
}

/// 700 simulated cells x 60 genes, 2 batches.
fn sim() -> Dataset {
    simulate(&SimConfig {
        n_cells: 700,
        n_genes: 60,
        n_batches: 2,
        n_cell_types: 3,
        seed: 5,
        ..SimConfig::default()
    })
}

/// [`sim`] (630 train cells: 5 minibatches an epoch, the last of 118) and a small model.
fn setting(cfg: TrainConfig) -> Setting {
    let data = sim();
    let setup = Setup {
        batch_key: Some("batch".into()),
        labels_key: None,
    };
    let config = ModelConfig {
        n_hidden: 32,
        n_latent: 6,
        ..ModelConfig::default()
    };
    let model = Scvi::new(&data, setup, config, 3).unwrap();
    let codes = model.codes_for(&data).unwrap();
    let split =
        train::train_validation_split(700, cfg.train_size, cfg.batch_size, cfg.seed).unwrap();
    Setting {
        data,
        batch: codes.batch,
        labels: codes.labels,
        model,
        split,
        cfg,
    }
}

/// What a run ends with: values, optimiser, history (times zeroed).
#[derive(Debug, PartialEq)]
struct End {
    params: Vec<u32>,
    buffers: Vec<u32>,
    optimizer: OptimizerState,
    progress: Progress,
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Train from `state` / `optimizer` / `progress` until the run ends or reaches `stop`; returns
/// whether it was interrupted, and the engine with the progress.
fn leg(
    s: &Setting,
    state: ModelState<f32>,
    optimizer: Option<&OptimizerState>,
    progress: &mut Progress,
    stop: Option<Stop>,
) -> (bool, Stopping) {
    let mut engine = Stopping {
        inner: CpuTrainer::new(state, s.cfg.adam, s.cfg.seed),
        stop,
        evals: 0,
    };
    if let Some(o) = optimizer {
        engine.set_optimizer_state(o).unwrap();
    }
    let cov = train::Covariates {
        batch: &s.batch,
        labels: &s.labels,
    };
    let r = train::fit(
        &mut engine,
        s.data.counts.as_ref(),
        &cov,
        &s.split,
        &s.cfg,
        progress,
        &mut |_, _, _, _| Ok(()),
    );
    let interrupted = match r {
        Ok(()) => false,
        Err(Error::Interrupted { .. }) => true,
        Err(e) => panic!("{e}"),
    };
    (interrupted, engine)
}

fn end_of(engine: &Stopping, progress: &Progress) -> End {
    let st = engine.state().unwrap();
    let mut progress = progress.clone();
    progress
        .history
        .epochs
        .iter_mut()
        .for_each(|e| e.seconds = 0.0);
    progress.epoch_seconds = 0.0;
    End {
        params: bits(&st.params),
        buffers: bits(&st.buffers),
        optimizer: engine.optimizer_state().unwrap(),
        progress,
    }
}

fn view<'a>(engine: &'a Stopping, progress: &'a Progress, split: &'a Split) -> RunView<'a> {
    RunView {
        engine,
        progress,
        split,
    }
}

/// Write the stopped run as a checkpoint file and read it back.
fn through_a_file(
    s: &Setting,
    engine: &Stopping,
    progress: &Progress,
    tag: &str,
) -> Checkpoint<ModelConfig> {
    let d = tmpdir("resume", tag);
    let path = d.join("checkpoint.safetensors");
    let bytes = checkpoint_bytes(s.model.config(), view(engine, progress, &s.split)).unwrap();
    std::fs::write(&path, bytes).unwrap();
    let ck = Checkpoint::<ModelConfig>::read(&path, |c| Ok(Layout::new(c))).unwrap();
    assert_eq!(&ck.progress, progress, "progress survives the file exactly");
    assert_eq!(ck.split, s.split);
    std::fs::remove_dir_all(&d).ok();
    ck
}

/// The run stopped at each of `stops` in turn, resumed from a file each time.
fn interrupted_run(s: &Setting, stops: &[Stop], tag: &str) -> End {
    let mut progress = Progress::default();
    let mut state = s.model.state.clone();
    let mut optimizer: Option<OptimizerState> = None;
    for (i, &stop) in stops.iter().enumerate() {
        let (interrupted, engine) = leg(s, state, optimizer.as_ref(), &mut progress, Some(stop));
        assert!(interrupted, "{tag}: the run ended before {stop:?}");
        let ck = through_a_file(s, &engine, &progress, &format!("{tag}-{i}"));
        state = ck.state;
        optimizer = Some(ck.optimizer);
        progress = ck.progress;
    }
    let (interrupted, engine) = leg(s, state, optimizer.as_ref(), &mut progress, None);
    assert!(!interrupted);
    end_of(&engine, &progress)
}

fn uninterrupted(s: &Setting) -> End {
    let mut progress = Progress::default();
    let (_, engine) = leg(s, s.model.state.clone(), None, &mut progress, None);
    end_of(&engine, &progress)
}

fn four_epochs() -> TrainConfig {
    TrainConfig {
        max_epochs: Some(4),
        seed: 7,
        ..TrainConfig::default()
    }
}

#[test]
fn stopped_anywhere_the_run_ends_the_same_bit_for_bit() {
    let s = setting(four_epochs());
    let want = uninterrupted(&s);
    assert_eq!(want.progress.history.epochs.len(), 4);
    assert_eq!(want.progress.step, 20, "5 steps an epoch");
    for (tag, stops) in [
        ("mid-epoch", vec![Stop::Step(7)]),
        ("at an epoch's first step", vec![Stop::Step(10)]),
        ("before the last step", vec![Stop::Step(19)]),
        ("in a validation pass", vec![Stop::Eval(2)]),
        ("after the last step", vec![Stop::Eval(4)]),
        ("twice", vec![Stop::Step(3), Stop::Step(13)]),
    ] {
        let got = interrupted_run(&s, &stops, tag);
        assert!(
            got == want,
            "{tag}: the resumed run differs from the uninterrupted one"
        );
        println!("{tag}: identical");
    }
}

#[test]
fn early_stopping_resumes_with_its_count() {
    // min_delta so large that no epoch after the first improves: stop after epoch 2 (patience 2).
    let s = setting(TrainConfig {
        max_epochs: Some(8),
        early_stopping: true,
        early_stopping_patience: 2,
        early_stopping_min_delta: 1e9,
        seed: 2,
        ..TrainConfig::default()
    });
    let want = uninterrupted(&s);
    assert!(want.progress.history.stopped_early);
    assert_eq!(want.progress.history.epochs.len(), 3);
    for (tag, stops) in [
        ("at the start of the stopping epoch", vec![Stop::Step(10)]),
        ("inside it", vec![Stop::Step(12)]),
        ("in its validation", vec![Stop::Eval(3)]),
    ] {
        let got = interrupted_run(&s, &stops, tag);
        assert!(got == want, "{tag}: the resumed run differs");
    }
}

#[test]
fn max_steps_mid_epoch_resumes_to_the_same_end() {
    let s = setting(TrainConfig {
        max_epochs: Some(4),
        max_steps: Some(12),
        ..four_epochs()
    });
    let want = uninterrupted(&s);
    assert_eq!(want.progress.step, 12);
    assert_eq!(want.progress.history.epochs.len(), 3);
    for stops in [vec![Stop::Step(11)], vec![Stop::Eval(3)]] {
        assert!(interrupted_run(&s, &stops, "max-steps") == want);
    }
}

/// Three steps on one engine; then a second engine from its values and optimiser state; two
/// more steps on each: the same numbers.
fn optimizer_state_carries_over(make: &dyn Fn(&ModelState<f32>) -> Box<dyn Engine>) {
    let s = setting(four_epochs());
    let mut mbs = Vec::new();
    for k in 0..5 {
        let mut mb = Minibatch::default();
        let cells: Vec<usize> = (k * 100..k * 100 + 100).collect();
        mb.gather(s.data.counts.as_ref(), &cells, &s.batch, &s.labels);
        mbs.push(mb);
    }
    let mut a = make(&s.model.state);
    for (k, mb) in mbs[..3].iter().enumerate() {
        a.train_step(mb, k as u64, 0.3).unwrap();
    }
    let opt = a.optimizer_state().unwrap();
    assert_eq!(opt.step, 3);
    assert!(opt.m.iter().any(|&m| m != 0.0) && opt.v.iter().any(|&v| v != 0.0));
    let mut b = make(&a.state().unwrap());
    b.set_optimizer_state(&opt).unwrap();
    for (k, mb) in mbs[3..].iter().enumerate() {
        let la = a.train_step(mb, 3 + k as u64, 0.3).unwrap();
        let lb = b.train_step(mb, 3 + k as u64, 0.3).unwrap();
        assert_eq!(la.loss.to_bits(), lb.loss.to_bits());
    }
    let (sa, sb) = (a.state().unwrap(), b.state().unwrap());
    assert_eq!(bits(&sa.params), bits(&sb.params));
    assert_eq!(bits(&sa.buffers), bits(&sb.buffers));
    assert_eq!(a.optimizer_state().unwrap(), b.optimizer_state().unwrap());
    // Moments of another model's size are refused, not copied.
    let e = b
        .set_optimizer_state(&OptimizerState::default())
        .unwrap_err();
    assert!(e.to_string().contains("optimizer moments"), "{e}");
}

#[test]
fn cpu_engine_optimizer_state_carries_over() {
    optimizer_state_carries_over(&|st| {
        Box::new(CpuTrainer::<f32>::new(st.clone(), Default::default(), 4))
    });
}

#[test]
fn cuda_engine_optimizer_state_carries_over_emulated() {
    if emulated_or_skip("cuda_engine_optimizer_state_carries_over_emulated").is_none() {
        return;
    }
    optimizer_state_carries_over(&|st| {
        let gpu = scvi_rs::cuda::Gpu::emulated().unwrap();
        Box::new(CudaEngine::new(gpu, st, 4, Default::default()).unwrap())
    });
}

#[test]
fn checkpoint_files_of_another_version_or_altered_are_refused() {
    let s = setting(four_epochs());
    let mut progress = Progress::default();
    let (_, engine) = leg(
        &s,
        s.model.state.clone(),
        None,
        &mut progress,
        Some(Stop::Step(6)),
    );
    let bytes = checkpoint_bytes(s.model.config(), view(&engine, &progress, &s.split)).unwrap();
    let d = tmpdir("resume", "refusals");
    let path = d.join("checkpoint.safetensors");
    let read = |b: &[u8]| {
        std::fs::write(&path, b).unwrap();
        Checkpoint::<ModelConfig>::read(&path, |c| Ok(Layout::new(c))).map(|_| ())
    };
    read(&bytes).unwrap();
    let err = |b: &[u8]| read(b).unwrap_err().to_string();

    // Another format version: the same header with one digit changed.
    let find = |needle: &[u8]| {
        bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    };
    let mut other = bytes.clone();
    let at = find(br#"\"format_version\":1"#);
    other[at + br#"\"format_version\":"#.len()] = b'7';
    let e = err(&other);
    assert!(
        e.contains("checkpoint format version 7") && e.contains("checkpoint.safetensors"),
        "{e}"
    );

    // One flipped bit in a tensor.
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 100] ^= 0x10;
    let e = err(&flipped);
    assert!(e.contains("checksum"), "{e}");

    // Truncated anywhere: an error naming the file, never a panic.
    for cut in [0, 5, 8, 200, n / 3, n - 1] {
        let e = err(&bytes[..cut]);
        assert!(e.contains("checkpoint.safetensors"), "cut at {cut}: {e}");
    }

    // A model's weights file is not a checkpoint.
    let weights = scvi_rs::model::io::state_to_safetensors(&s.model.state).unwrap();
    assert!(err(&weights).contains("not a scvi-rs checkpoint"));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn resuming_on_cells_with_other_batches_is_refused() {
    let s = setting(four_epochs());
    let d = tmpdir("resume", "codes");
    let dir = scvi_rs::train::run_dir::RunDir::prepare(&d.join("m"), false, "--out").unwrap();
    let source = DataSource {
        path: d.join("sim.h5ad"),
        layer: None,
    };
    let mut t = Training::new(
        &s.model,
        &s.data,
        &s.cfg,
        source.clone(),
        Device::Cpu,
        None,
        dir,
    )
    .unwrap();
    // The same counts, genes and categories; two cells swap batches.
    let mut other = sim();
    for (name, col) in other.obs.iter_mut() {
        if let (true, ObsColumn::Categorical { codes, .. }) = (name == "batch", col) {
            let j = (1..codes.len()).find(|&j| codes[j] != codes[0]).unwrap();
            codes.swap(0, j);
        }
    }
    let e = t
        .check_data(&s.model, &other, source.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("batches or labels differ"), "{e}");
    t.check_data(&s.model, &s.data, source).unwrap();
    std::fs::remove_dir_all(&d).ok();
}
