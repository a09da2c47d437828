//! `train`, `embed` and `elbo`.

use super::options::{ModelArgs, TrainArgs};
use super::with_threads;
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use scvi_rs::atomic::{check_output, AtomicDir, OutputKind};
use scvi_rs::infer::h5ad_out::{H5adOut, Place};
use scvi_rs::infer::output::write_matrix;
use scvi_rs::model::io::MODEL_DIR;
use scvi_rs::store::output::is_h5ad_name;
use scvi_rs::store::{load_dataset, open_input};
use scvi_rs::{Device, Scvi, Setup};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where to run.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// auto (a GPU when one works, else the CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads (0: all cores).
    #[arg(long, default_value_t = 0)]
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
    /// Input: .h5ad, a scvi-rs store, a 10x .h5 file or a 10x MTX folder.
    pub data: PathBuf,
    /// The model directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// obs column with the batch of each cell.
    #[arg(long)]
    pub batch_key: Option<String>,
    /// obs column with the label of each cell (for --dispersion gene-label).
    #[arg(long)]
    pub labels_key: Option<String>,
    /// Read counts from layers/NAME instead of X.
    #[arg(long)]
    pub layer: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    pub run: RunArgs,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
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
    let tcfg = cmd.train.config();
    tcfg.validate()?;
    // Stage the output first: one that cannot be written fails now, not after training.
    let staged = AtomicDir::create(&cmd.out, &MODEL_DIR, cmd.force, "--out")?;
    let device = cmd.run.device()?;
    with_threads(cmd.run.threads, || {
        let data = load_dataset(&cmd.data, cmd.layer.as_deref())?;
        let setup = Setup {
            batch_key: cmd.batch_key.clone(),
            labels_key: cmd.labels_key.clone(),
        };
        let mut model = Scvi::new(&data, setup, cmd.model.config(), cmd.train.seed)?;
        eprintln!(
            "{}: {} cells x {} genes, {} batches; {} epochs on {}",
            data.source,
            data.n_cells(),
            data.n_genes(),
            model.meta.batch_categories.len(),
            tcfg.epochs_for(data.n_cells()),
            match device {
                Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
                Device::Cuda(i) => format!("cuda:{i}"),
            }
        );
        let pb = progress_bar(cmd.quiet);
        let t0 = Instant::now();
        model.train(&data, &tcfg, device, &mut |r, max| {
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
        })?;
        pb.finish();
        let secs = t0.elapsed().as_secs_f64();
        let epochs = model.history.epochs.len();
        model.write_into(&staged)?;
        staged.commit()?;
        let last = model.history.epochs.last().context("no epoch ran")?;
        eprintln!(
            "trained {epochs} epochs in {secs:.1} s ({:.2} s/epoch){}; elbo_train {:.3}{}; saved {}",
            secs / epochs as f64,
            if model.history.stopped_early { ", stopped early" } else { "" },
            last.elbo_train,
            last.elbo_validation.map(|v| format!(", elbo_validation {v:.3}")).unwrap_or_default(),
            cmd.out.display()
        );
        Ok(())
    })
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
    /// Monte Carlo samples for the logistic-normal latent mean.
    #[arg(long, default_value_t = 5000)]
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
        let input = open_input(&cmd.data, cmd.layer.as_deref())?;
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

fn check_output_ext(p: &Path) -> Result<()> {
    match p.extension().and_then(|e| e.to_str()) {
        Some("npy") | Some("csv") | Some("h5ad") => Ok(()),
        _ => bail!(
            "{}: the output must end in .npy, .csv or .h5ad",
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
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Print the ELBO (scvi-tools' `get_elbo()` sign) of a subset of cells as JSON.
pub fn run_elbo(cmd: &ElboCmd) -> Result<()> {
    let device = cmd.run.device()?;
    with_threads(cmd.run.threads, || {
        let model = Scvi::load(&cmd.model)?;
        let data = load_dataset(&cmd.data, cmd.layer.as_deref())?;
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
