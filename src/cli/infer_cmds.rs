//! `evaluate`, `normalize`, `de` and `sample`: the after-training commands. Each parses its flags,
//! checks its output path before the work, calls the model's method and writes the result.

use super::model_cmds::RunArgs;
use super::with_threads;
use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use scvi_rs::atomic::{check_output, OutputKind};
use scvi_rs::data::genes::read_gene_list;
use scvi_rs::data::Dataset;
use scvi_rs::infer::de::{to_csv, DeOptions};
use scvi_rs::infer::h5ad_out::{H5adOut, Place};
use scvi_rs::infer::normalize::NormalizeOptions;
use scvi_rs::infer::output::{npy_header, MatrixFile};
use scvi_rs::scvi::DeGroups;
use scvi_rs::store::open_input;
use scvi_rs::{Device, Scvi};
use std::path::{Path, PathBuf};

/// The input's per-gene string columns (var), carried into the `.h5ad` outputs.
type VarColumns = Vec<(String, Vec<String>)>;

/// The model, the data and where to run, shared by the after-training commands.
#[derive(Args, Debug)]
pub struct InferArgs {
    /// A model directory written by `scvi-rs train`.
    pub model: PathBuf,
    /// The cells (same genes as the model, in the same order): .h5ad, store, 10x.
    pub data: PathBuf,
    /// Read counts from layers/NAME instead of X.
    #[arg(long)]
    pub layer: Option<String>,
    /// Seed of the Monte Carlo draws (same seed, same result).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

impl InferArgs {
    /// The device: `auto` is the CPU here (the GPU engine lacks these passes yet).
    fn device(&self) -> Result<Device> {
        if self.run.device == "auto" {
            return Ok(Device::Cpu);
        }
        self.run.device()
    }

    /// The model, the data (checked against it) and the input's per-gene columns.
    fn load(&self) -> Result<(Scvi, Dataset, VarColumns)> {
        let model = Scvi::load(&self.model)?;
        let input = open_input(&self.data, self.layer.as_deref())?;
        let var = input.meta.var.clone();
        let data = input.into_dataset()?;
        model.codes_for(&data)?;
        Ok((model, data, var))
    }
}

fn bar(quiet: bool, len: usize, what: &str, unit: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{elapsed_precise}} (eta {{eta}})"
        ))
        .unwrap()
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// The extension of an output path, lower case.
fn extension(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_lowercase()
}

/// Refuse an output of the wrong kind or one that exists (without --force) before any work.
fn check_out(p: &Path, allowed: &[&str], force: bool) -> Result<()> {
    if !allowed.contains(&extension(p).as_str()) {
        bail!(
            "--out {}: the output must end in .{}",
            p.display(),
            allowed.join(", .")
        );
    }
    check_output(p, &OutputKind::FILE, force, "--out")?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct EvaluateCmd {
    #[command(flatten)]
    pub io: InferArgs,
    /// Importance samples per cell for the marginal log-likelihood.
    #[arg(long, default_value_t = 1000)]
    pub n_mc_samples: usize,
}

/// Print `elbo`, `reconstruction_error`, `kl_local` and `marginal_ll` of every cell as JSON.
pub fn run_evaluate(cmd: &EvaluateCmd) -> Result<()> {
    if cmd.n_mc_samples == 0 {
        bail!("--n-mc-samples must be at least 1");
    }
    let device = cmd.io.device()?;
    with_threads(cmd.io.run.threads, || {
        let (model, data, _) = cmd.io.load()?;
        let cells: Vec<usize> = (0..data.n_cells()).collect();
        let pb = bar(cmd.io.quiet, cells.len(), "marginal_ll", "cells");
        let report = model.evaluate(
            &data,
            &cells,
            cmd.n_mc_samples,
            device,
            cmd.io.seed,
            &mut |done| pb.set_position(done as u64),
        )?;
        pb.finish_and_clear();
        println!("{}", serde_json::to_string_pretty(&report)?);
        Ok(())
    })
}

#[derive(Args, Debug)]
pub struct NormalizeCmd {
    #[command(flatten)]
    pub io: InferArgs,
    /// Output: .npy (cells x genes, f32), .csv (cell and gene names) or .h5ad (the input's X, obs
    /// and var with the values as layers["scvi_normalized"]).
    #[arg(long)]
    pub out: PathBuf,
    /// Scale each cell to this library size, or `latent` for the cell's own (scvi-tools' default 1).
    #[arg(long, default_value = "1")]
    pub library_size: String,
    /// Posterior draws per cell, averaged.
    #[arg(long, default_value_t = 1)]
    pub n_samples: usize,
    /// Decode every cell as from this batch (repeat to average over several).
    #[arg(long)]
    pub transform_batch: Vec<String>,
    /// Only these genes (a file, one name a line), in the model's order.
    #[arg(long)]
    pub genes: Option<PathBuf>,
    #[arg(long)]
    pub force: bool,
}

pub fn run_normalize(cmd: &NormalizeCmd) -> Result<()> {
    check_out(&cmd.out, &["npy", "csv", "h5ad"], cmd.force)?;
    let device = cmd.io.device()?;
    let genes_wanted = cmd.genes.as_deref().map(read_gene_list).transpose()?;
    with_threads(cmd.io.run.threads, || {
        let (model, data, var) = cmd.io.load()?;
        let genes = match &genes_wanted {
            Some(g) => {
                let flag = format!("--genes {}", cmd.genes.as_ref().unwrap().display());
                Some(model.gene_indices(g, &flag)?)
            }
            None => None,
        };
        let opts = NormalizeOptions {
            library_size: cmd.library_size.parse()?,
            n_samples: cmd.n_samples,
            transform_batch: model.transform_batch_codes(&cmd.transform_batch)?,
            genes: genes.clone(),
        };
        opts.validate(model.config().n_input, model.config().n_batch)?;
        let cells: Vec<usize> = (0..data.n_cells()).collect();
        let pb = bar(cmd.io.quiet, cells.len(), "normalize", "cells");
        let names: Vec<String> = match &genes {
            Some(g) => g.iter().map(|&j| model.meta.genes[j].clone()).collect(),
            None => model.meta.genes.clone(),
        };
        let (seed, n) = (cmd.io.seed, names.len());
        if extension(&cmd.out) == "h5ad" {
            let mut out = H5adOut::create(&cmd.out, cmd.force, &data, &var, genes.as_deref())?;
            let id = out.writer.add_dense(Place::Layers, "scvi_normalized", n)?;
            model.normalized_expression(
                &data,
                &cells,
                &opts,
                device,
                seed,
                &mut |first, rows| {
                    pb.set_position((first + rows.len() / n) as u64);
                    out.writer.append_dense(id, rows)
                },
            )?;
            out.copy_input_x()?;
            out.finish()?;
        } else {
            let mut out =
                MatrixFile::create(&cmd.out, cmd.force, "--out", &data.cell_names, &names)?;
            model.normalized_expression(
                &data,
                &cells,
                &opts,
                device,
                seed,
                &mut |first, rows| {
                    pb.set_position((first + rows.len() / n) as u64);
                    out.rows(rows)
                },
            )?;
            out.finish()?;
        }
        pb.finish_and_clear();
        eprintln!(
            "wrote {} ({} cells x {n} genes)",
            cmd.out.display(),
            data.n_cells()
        );
        Ok(())
    })
}

#[derive(Args, Debug)]
pub struct DeCmd {
    #[command(flatten)]
    pub io: InferArgs,
    /// The obs column whose groups are compared.
    #[arg(long)]
    pub groupby: String,
    /// The group to test; without it, every group of --groupby against the rest, in turn.
    #[arg(long)]
    pub group1: Option<String>,
    /// The group to compare with (default: every other cell, "Rest").
    #[arg(long)]
    pub group2: Option<String>,
    /// vanilla (Bayes factor of scale1 > scale2) or change (of |log fold change| >= --delta).
    #[arg(long, default_value = "vanilla")]
    pub mode: String,
    /// The change mode's log2 fold-change threshold.
    #[arg(long, default_value_t = 0.25)]
    pub delta: f64,
    /// The change mode's posterior expected FDR for the is_de_fdr_<target> column.
    #[arg(long, default_value_t = 0.05)]
    pub fdr_target: f64,
    /// Decode every cell under every batch (scvi-tools' batch_correction).
    #[arg(long)]
    pub batch_correction: bool,
    /// Scale samples per group (scvi-tools' n_samples_overall).
    #[arg(long, default_value_t = 5000)]
    pub n_samples: usize,
    /// Output CSV: one row per gene and comparison, scvi-tools' columns, sorted as it sorts.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub force: bool,
}

pub fn run_de(cmd: &DeCmd) -> Result<()> {
    check_out(&cmd.out, &["csv"], cmd.force)?;
    let device = cmd.io.device()?;
    let opts = DeOptions {
        mode: cmd.mode.parse()?,
        delta: cmd.delta,
        fdr_target: cmd.fdr_target,
        batch_correction: cmd.batch_correction,
        n_samples_overall: cmd.n_samples,
        ..DeOptions::default()
    };
    opts.validate()?;
    let groups = DeGroups {
        groupby: cmd.groupby.clone(),
        group1: cmd.group1.clone(),
        group2: cmd.group2.clone(),
    };
    with_threads(cmd.io.run.threads, || {
        let (model, data, _) = cmd.io.load()?;
        let n = model.comparisons(&data, &groups)?.len();
        let pb = bar(cmd.io.quiet, n, "de", "comparisons");
        let results = model.differential_expression(
            &data,
            &groups,
            &opts,
            device,
            cmd.io.seed,
            &mut |k, _| pb.set_position(k as u64),
        )?;
        pb.finish_and_clear();
        scvi_rs::atomic::write_file(
            &cmd.out,
            to_csv(&results, &model.meta.genes).as_bytes(),
            cmd.force,
            "--out",
        )?;
        eprintln!(
            "wrote {} ({n} comparison{}, {} genes each)",
            cmd.out.display(),
            if n == 1 { "" } else { "s" },
            model.meta.genes.len()
        );
        Ok(())
    })
}

#[derive(Args, Debug)]
pub struct SampleCmd {
    #[command(flatten)]
    pub io: InferArgs,
    /// Posterior predictive draws per cell.
    #[arg(long, default_value_t = 1)]
    pub n_samples: usize,
    /// Output: .h5ad (X = draw 0, layers["sample_k"] = draw k; the input's obs and var) or .npy
    /// (cells x genes, or cells x genes x draws as scvi-tools returns them; small data).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub force: bool,
}

/// The most values a `.npy` of samples may hold (it is built in memory): 2^28 (1 GiB of f32).
const MAX_NPY_VALUES: usize = 1 << 28;

pub fn run_sample(cmd: &SampleCmd) -> Result<()> {
    check_out(&cmd.out, &["h5ad", "npy"], cmd.force)?;
    if cmd.n_samples == 0 {
        bail!("--n-samples must be at least 1");
    }
    if cmd.n_samples > 511 && extension(&cmd.out) == "h5ad" {
        bail!(
            "--n-samples {}: an .h5ad holds at most 511 draws as layers",
            cmd.n_samples
        );
    }
    let device = cmd.io.device()?;
    with_threads(cmd.io.run.threads, || {
        let (model, data, var) = cmd.io.load()?;
        let cells: Vec<usize> = (0..data.n_cells()).collect();
        let (g, s_n, seed) = (data.n_genes(), cmd.n_samples, cmd.io.seed);
        let pb = bar(cmd.io.quiet, cells.len(), "sample", "cells");
        if extension(&cmd.out) == "h5ad" {
            let mut out = H5adOut::create(&cmd.out, cmd.force, &data, &var, None)?;
            let layers: Vec<usize> = (1..s_n)
                .map(|k| out.writer.add_sparse(Place::Layers, &format!("sample_{k}")))
                .collect::<scvi_rs::Result<_>>()?;
            model.posterior_predictive_sample(
                &data,
                &cells,
                s_n,
                device,
                seed,
                &mut |s, first, m| {
                    if s + 1 == s_n {
                        pb.set_position((first + m.n_rows) as u64);
                    }
                    match s {
                        0 => out.writer.append_owned(m),
                        k => out.writer.append_sparse(layers[k - 1], &m),
                    }
                },
            )?;
            out.finish()?;
        } else {
            let total = data.n_cells() * g * s_n;
            if total > MAX_NPY_VALUES {
                bail!(
                    "--out {}: {} values are too many for an .npy built in memory; write an .h5ad",
                    cmd.out.display(),
                    total
                );
            }
            let mut v = vec![0f32; total];
            model.posterior_predictive_sample(
                &data,
                &cells,
                s_n,
                device,
                seed,
                &mut |s, first, m| {
                    for i in 0..m.n_rows {
                        let (a, b) = (m.indptr[i] as usize, m.indptr[i + 1] as usize);
                        for (&j, &x) in m.indices[a..b].iter().zip(&m.data[a..b]) {
                            v[((first + i) * g + j as usize) * s_n + s] = x;
                        }
                    }
                    pb.set_position((first + m.n_rows) as u64);
                    Ok(())
                },
            )?;
            let shape: Vec<usize> = if s_n == 1 {
                vec![data.n_cells(), g]
            } else {
                vec![data.n_cells(), g, s_n]
            };
            let mut bytes = npy_header(&shape);
            v.iter()
                .for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
            scvi_rs::atomic::write_file(&cmd.out, &bytes, cmd.force, "--out")?;
        }
        pb.finish_and_clear();
        eprintln!(
            "wrote {} ({} cells x {g} genes, {s_n} draw{})",
            cmd.out.display(),
            data.n_cells(),
            if s_n == 1 { "" } else { "s" }
        );
        Ok(())
    })
}
