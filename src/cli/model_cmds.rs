//! `train`, `embed` and `elbo`.

use super::options::{ModelArgs, TrainArgs};
use super::with_threads;
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use scvi_rs::atomic::{check_output, OutputKind};
use scvi_rs::cpu::gemm_bf16::Backend;
use scvi_rs::data::Dataset;
use scvi_rs::infer::h5ad_out::{H5adOut, Place};
use scvi_rs::infer::output::write_matrix;
use scvi_rs::model::Precision;
use scvi_rs::store::output::is_h5ad_name;
use scvi_rs::store::{load_dataset, load_dataset_with, open_input_with, InputOptions};
use scvi_rs::train::run_dir::RunDir;
use scvi_rs::training::{DataSource, Training};
use scvi_rs::{Device, Scvi, Setup};
use std::path::{Path, PathBuf};

/// Where to run.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// auto (a GPU when one works, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads (0: all cores).
    #[arg(long, default_value_t = 0, value_parser = super::options::count, allow_negative_numbers = true)]
    pub threads: usize,
}

impl RunArgs {
    pub fn device(&self) -> Result<Device> {
        if self.device == "auto" {
            return Ok(if scvi_rs::cuda::gpu_available() {
                Device::Cuda(0)
            } else {
                Device::Cpu
            });
        }
        Ok(self.device.parse()?)
    }
}

#[derive(Args, Debug)]
pub struct TrainCmd {
    /// Input: .h5ad, a scvi-rs store, a 10x .h5 file or a 10x MTX folder. With --resume: the
    /// run's data where it lives now (checked against the checkpoint); default: where it was.
    #[arg(required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// The model directory to write (checkpoints go there too).
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// obs column with the batch of each cell.
    #[arg(long)]
    pub batch_key: Option<String>,
    /// obs column with the label of each cell (for --dispersion gene-label).
    #[arg(long)]
    pub labels_key: Option<String>,
    /// Read counts from layers/NAME instead of X.
    #[arg(long)]
    pub layer: Option<String>,
    /// Only the genes of this genome of a 10x .h5 (needed for a Cell Ranger 2 file with several).
    #[arg(long)]
    pub genome: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    pub run: RunArgs,
    /// Write a checkpoint into --out every N epochs (one is always written when Ctrl-C or
    /// SIGTERM stops the run).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Continue the run whose checkpoint is in DIR (its --out), with the data, flags and seed it
    /// records; it ends with the model an uninterrupted run gives. --device auto (the default)
    /// means the run's device.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["out", "force", "batch_key", "labels_key", "layer", "ModelArgs", "TrainArgs"]
    )]
    pub resume: Option<PathBuf>,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// `--layer` and `--genome` as the input opener takes them.
pub fn input_options(layer: &Option<String>, genome: &Option<String>) -> InputOptions {
    InputOptions {
        layer: layer.clone(),
        genome: genome.clone(),
    }
}

pub fn progress_bar(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} epochs {elapsed_precise} (eta {eta}) {msg}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    pb.set_prefix("training");
    pb
}

pub fn run_train(cmd: &TrainCmd) -> Result<()> {
    if let Some(dir) = &cmd.resume {
        return run_resume(cmd, dir);
    }
    let (Some(data_path), Some(out)) = (&cmd.data, &cmd.out) else {
        bail!("train needs DATA and --out (or --resume DIR)");
    };
    let tcfg = cmd.train.config();
    tcfg.validate()?;
    // Check the output first: one that cannot be written fails now, not after training.
    let dir = RunDir::prepare(out, cmd.force, "--out")?;
    let device = cmd.run.device()?;
    with_threads(cmd.run.threads, || {
        let data = load_dataset_with(data_path, &input_options(&cmd.layer, &cmd.genome))?;
        let setup = Setup {
            batch_key: cmd.batch_key.clone(),
            labels_key: cmd.labels_key.clone(),
        };
        let mut model = Scvi::new(&data, setup, cmd.model.config(), cmd.train.seed)?;
        let source = DataSource {
            path: std::path::absolute(data_path).unwrap_or_else(|_| data_path.clone()),
            layer: cmd.layer.clone(),
        };
        let mut training = Training::new(
            &model,
            &data,
            &tcfg,
            source,
            device,
            cmd.checkpoint_every,
            dir,
        )?;
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        // Under --max-steps the run ends at that step, usually long before the epochs' end.
        let epochs = plural(tcfg.epochs_for(data.n_cells()), "epoch", "epochs");
        let length = match tcfg.max_steps {
            Some(s) => format!("{epochs}, stopping after {}", plural(s, "step", "steps")),
            None => epochs,
        };
        eprintln!(
            "{}: {} cells x {} genes, {}; {length} on {}",
            data.source,
            data.n_cells(),
            data.n_genes(),
            plural(model.meta.batch_categories.len(), "batch", "batches"),
            device_label(device)
        );
        if tcfg.precision == Precision::Bf16 && device == Device::Cpu {
            eprintln!("precision bf16: {}", Backend::detect().describe());
        }
        train_to_the_end(cmd, &mut model, &data, device, &mut training)?;
        let epochs = model.history.epochs.len();
        training.finish(&model)?;
        report_trained(&model, epochs, out);
        Ok(())
    })
}

fn device_label(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
    }
}

/// `train --resume DIR`: the run's data, flags and seed from its checkpoint.
fn run_resume(cmd: &TrainCmd, dir: &Path) -> Result<()> {
    let (mut model, mut training) = Training::open(dir)?;
    let recorded = training.record().source.clone();
    let source = match &cmd.data {
        Some(p) => DataSource {
            path: std::path::absolute(p).unwrap_or_else(|_| p.clone()),
            layer: recorded.layer.clone(),
        },
        None => recorded,
    };
    let device = if cmd.run.device == "auto" {
        training.device()?
    } else {
        cmd.run.device()?
    };
    if cmd.checkpoint_every.is_some() {
        training.set_checkpoint_every(cmd.checkpoint_every)?;
    }
    let was = training.record().device.clone();
    if device.to_string() != was {
        eprintln!(
            "warning: the run trained on {was} and resumes on {device}: the result will differ in \
             the last bits from an uninterrupted run"
        );
    }
    with_threads(cmd.run.threads, || {
        let data = load_dataset(&source.path, source.layer.as_deref())
            .with_context(|| format!("the data of the run in {}", dir.display()))?;
        training.check_data(&model, &data, source.clone())?;
        let p = training.progress().context("no progress")?;
        let max_epochs = model
            .meta
            .train
            .as_ref()
            .map_or(0, |c| c.epochs_for(data.n_cells()));
        eprintln!(
            "resuming {}: epoch {} of {max_epochs}, {} minibatches into it (step {}); {} on {}",
            dir.display(),
            p.epoch + 1,
            p.batches_done,
            p.step,
            data.source,
            device_label(device)
        );
        train_to_the_end(cmd, &mut model, &data, device, &mut training)?;
        let epochs = model.history.epochs.len();
        training.finish(&model)?;
        report_trained(&model, epochs, dir);
        Ok(())
    })
}

/// Run the training with a progress bar; when Ctrl-C stops it, say where the checkpoint is and
/// how to resume.
fn train_to_the_end(
    cmd: &TrainCmd,
    model: &mut Scvi,
    data: &Dataset,
    device: Device,
    training: &mut Training,
) -> Result<()> {
    let pb = progress_bar(cmd.quiet);
    let result = training.run(model, data, device, &mut |r, max| {
        pb.set_length(max as u64);
        pb.set_position(r.epoch as u64 + 1);
        let val = r
            .elbo_validation
            .map(|v| format!(" elbo_validation {v:.2}"))
            .unwrap_or_default();
        pb.set_message(format!(
            "loss {:.2} elbo_train {:.2}{val}",
            r.train_loss, r.elbo_train
        ));
    });
    pb.finish();
    let last = training.last;
    match result {
        Ok(()) => {
            if let Some(w) = last.filter(|_| !cmd.quiet) {
                eprintln!(
                    "last checkpoint: after epoch {}, {:.1} MB written in {:.0} ms",
                    w.epoch,
                    w.bytes as f64 / 1e6,
                    w.seconds * 1e3
                );
            }
            Ok(())
        }
        Err(e @ scvi_rs::Error::Interrupted { .. }) => match last.filter(|w| w.interrupted) {
            Some(w) => {
                let dir = training.dir().display();
                Err(anyhow::Error::from(e).context(format!(
                    "interrupted in epoch {} ({} minibatches into it, step {}); checkpoint \
                     written to {dir} ({:.1} MB); resume with: scvi-rs train --resume {dir}",
                    w.epoch + 1,
                    w.batches_done,
                    w.step,
                    w.bytes as f64 / 1e6,
                )))
            }
            None => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

fn report_trained(model: &Scvi, epochs: usize, out: &Path) {
    let Some(last) = model.history.epochs.last() else {
        return;
    };
    let secs: f64 = model.history.epochs.iter().map(|e| e.seconds).sum();
    eprintln!(
        "trained {epochs} epochs in {secs:.1} s ({:.2} s/epoch){}; elbo_train {:.3}{}; saved {}",
        secs / epochs.max(1) as f64,
        if model.history.stopped_early {
            ", stopped early"
        } else {
            ""
        },
        last.elbo_train,
        last.elbo_validation
            .map(|v| format!(", elbo_validation {v:.3}"))
            .unwrap_or_default(),
        out.display()
    );
}

#[derive(Args, Debug)]
pub struct EmbedCmd {
    /// A model directory written by `scvi-rs train`.
    pub model: PathBuf,
    /// The cells to embed (same genes as the model, in the same order).
    pub data: PathBuf,
    /// Output: .npy (cells x n_latent, f32), .csv (with cell names) or .h5ad (the input's X, obs
    /// and var with obsm["X_scVI"]).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub layer: Option<String>,
    /// Only the genes of this genome of a 10x .h5 (needed for a Cell Ranger 2 file with several).
    #[arg(long)]
    pub genome: Option<String>,
    /// Monte Carlo samples for the logistic-normal latent mean (1 to 1,000,000).
    #[arg(long, default_value_t = 5000, value_parser = mc_samples, allow_negative_numbers = true)]
    pub mc_samples: usize,
    #[command(flatten)]
    pub run: RunArgs,
    #[arg(long)]
    pub force: bool,
}

pub fn run_embed(cmd: &EmbedCmd) -> Result<()> {
    check_output_ext(&cmd.out)?;
    check_output(&cmd.out, &OutputKind::FILE, cmd.force, "--out")?;
    let device = cmd.run.device()?;
    with_threads(cmd.run.threads, || {
        let model = Scvi::load(&cmd.model)?;
        let input = open_input_with(&cmd.data, &input_options(&cmd.layer, &cmd.genome))?;
        let var = input.meta.var.clone();
        let data = input.into_dataset()?;
        let z = model.latent_representation(&data, device, cmd.mc_samples)?;
        let l = model.config().n_latent;
        if is_h5ad_name(&cmd.out) {
            // The input (X as read, obs, var) plus obsm["X_scVI"], as scanpy users keep it.
            let mut out = H5adOut::create(&cmd.out, cmd.force, &data, &var, None)?;
            let id = out.writer.add_dense(Place::Obsm, "X_scVI", l)?;
            out.writer.append_dense(id, &z)?;
            out.copy_input_x()?;
            out.finish()?;
        } else {
            write_matrix(
                &cmd.out,
                &z,
                data.n_cells(),
                l,
                &data.cell_names,
                "scVI_",
                cmd.force,
            )?;
        }
        eprintln!(
            "wrote {} ({} cells x {l})",
            cmd.out.display(),
            data.n_cells()
        );
        Ok(())
    })
}

/// `--mc-samples`: scvi-tools' default is 5,000; a million draws per cell is already hours.
fn mc_samples(s: &str) -> std::result::Result<usize, String> {
    super::options::whole(s, 1, 1_000_000)
}

fn check_output_ext(p: &Path) -> Result<()> {
    match p.extension().and_then(|e| e.to_str()) {
        Some("npy") | Some("csv") | Some("h5ad") => Ok(()),
        _ => bail!(
            "--out {}: the output must end in .npy, .csv or .h5ad",
            p.display()
        ),
    }
}

#[derive(Args, Debug)]
pub struct ElboCmd {
    pub model: PathBuf,
    pub data: PathBuf,
    /// Which cells: the model's validation or train cells (from its split.json), or all.
    #[arg(long, default_value = "validation")]
    pub subset: String,
    #[arg(long)]
    pub layer: Option<String>,
    /// Only the genes of this genome of a 10x .h5 (needed for a Cell Ranger 2 file with several).
    #[arg(long)]
    pub genome: Option<String>,
    #[arg(long, default_value_t = 0, value_parser = super::options::seed, allow_negative_numbers = true)]
    pub seed: u64,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Print the ELBO (scvi-tools' `get_elbo()` sign) of a subset of cells as JSON.
pub fn run_elbo(cmd: &ElboCmd) -> Result<()> {
    let device = cmd.run.device()?;
    with_threads(cmd.run.threads, || {
        let model = Scvi::load(&cmd.model)?;
        let data = load_dataset_with(&cmd.data, &input_options(&cmd.layer, &cmd.genome))?;
        let n = data.n_cells();
        let cells: Vec<usize> = match cmd.subset.as_str() {
            "all" => (0..n).collect(),
            "train" | "validation" => {
                let split = model
                    .split
                    .as_ref()
                    .with_context(|| format!("{}: no split.json", cmd.model.display()))?;
                let c = if cmd.subset == "train" {
                    &split.train
                } else {
                    &split.validation
                };
                if let Some(&bad) = c.iter().find(|&&i| i >= n) {
                    bail!(
                        "{}: cell index {bad} of the model's split is beyond the {n} cells of {}",
                        cmd.model.display(),
                        cmd.data.display()
                    );
                }
                c.clone()
            }
            other => bail!("--subset must be validation, train or all, not '{other}'"),
        };
        if cells.is_empty() {
            bail!("the {} subset is empty", cmd.subset);
        }
        let report = model.elbo(&data, &cells, device, cmd.seed)?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(())
    })
}
