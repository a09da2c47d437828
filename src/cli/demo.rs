//! `scvi-rs demo`: no input files. Simulates counts with batches and cell types, trains scVI on them,
//! embeds every cell and reports how well the latent space separates cell types and mixes batches.

use super::model_cmds::{progress_bar, RunArgs};
use super::options::positive_count;
use super::with_threads;
use anyhow::Result;
use clap::Args;
use scvi_rs::data::simulate::{simulate, SimConfig};
use scvi_rs::infer::metrics::{knn_batch_mixing, knn_label_accuracy};
use scvi_rs::model::ModelConfig;
use scvi_rs::train::TrainConfig;
use scvi_rs::{Scvi, Setup};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct DemoCmd {
    #[arg(long, default_value_t = 3000, value_parser = positive_count, allow_negative_numbers = true)]
    pub cells: usize,
    #[arg(long, default_value_t = 1000, value_parser = positive_count, allow_negative_numbers = true)]
    pub genes: usize,
    #[arg(long, default_value_t = 3, value_parser = positive_count, allow_negative_numbers = true)]
    pub batches: usize,
    #[arg(long, default_value_t = 6, value_parser = positive_count, allow_negative_numbers = true)]
    pub cell_types: usize,
    #[arg(long, default_value_t = 60, value_parser = positive_count, allow_negative_numbers = true)]
    pub max_epochs: usize,
    #[arg(long, default_value_t = 0, value_parser = super::options::seed, allow_negative_numbers = true)]
    pub seed: u64,
    /// Also save the model directory here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run_demo(cmd: &DemoCmd) -> Result<()> {
    let device = cmd.run.device()?;
    with_threads(cmd.run.threads, || {
        let sim = SimConfig {
            n_cells: cmd.cells,
            n_genes: cmd.genes,
            n_batches: cmd.batches,
            n_cell_types: cmd.cell_types,
            seed: cmd.seed,
            ..SimConfig::default()
        };
        sim.validate()?;
        // The demo holds the whole matrix in memory: 8 bytes a stored value.
        let per_cell = scvi_rs::data::simulate::mean_nnz_per_cell(&sim)?;
        let bytes = sim.memory_bytes() + (cmd.cells as f64 * per_cell * 8.0) as u64;
        scvi_rs::limits::ensure_memory(bytes, || {
            format!("demo --cells {} --genes {}", cmd.cells, cmd.genes)
        })?;
        let data = simulate(&sim);
        println!(
            "simulated {} cells x {} genes ({} batches, {} cell types, {:.1}% non-zero)",
            data.n_cells(),
            data.n_genes(),
            cmd.batches,
            cmd.cell_types,
            100.0 * data.counts.nnz() as f64 / (data.n_cells() * data.n_genes()) as f64
        );
        let setup = Setup {
            batch_key: Some("batch".into()),
            labels_key: Some("cell_type".into()),
        };
        let mut model = Scvi::new(&data, setup, ModelConfig::default(), cmd.seed)?;
        let tcfg = TrainConfig {
            max_epochs: Some(cmd.max_epochs),
            seed: cmd.seed,
            ..TrainConfig::default()
        };
        let pb = progress_bar(false);
        let t0 = Instant::now();
        model.train(&data, &tcfg, device, &mut |r, max| {
            pb.set_length(max as u64);
            pb.set_position(r.epoch as u64 + 1);
            pb.set_message(format!("elbo_train {:.1}", r.elbo_train));
        })?;
        pb.finish_and_clear();
        let secs = t0.elapsed().as_secs_f64();
        let h = &model.history.epochs;
        println!(
            "trained {} epochs in {secs:.1} s on {} ({:.0} cells/s)",
            h.len(),
            model.meta.engine.as_deref().unwrap_or("?"),
            (model.meta.n_cells_trained * h.len()) as f64 / secs
        );
        println!(
            "{:>6} {:>12} {:>16}",
            "epoch", "elbo_train", "elbo_validation"
        );
        for r in h
            .iter()
            .filter(|r| r.epoch % 10 == 0 || r.epoch + 1 == h.len())
        {
            println!(
                "{:>6} {:>12.2} {:>16.2}",
                r.epoch,
                r.elbo_train,
                r.elbo_validation.unwrap_or(f64::NAN)
            );
        }
        let z = model.latent_representation(&data, device, 5000)?;
        let l = model.config().n_latent;
        let codes = model.codes_for(&data)?;
        let acc = knn_label_accuracy(&z, l, &codes.labels, 15, 2000);
        let mix = knn_batch_mixing(&z, l, &codes.batch, 15, 2000);
        println!("latent space ({l} dims): 15-NN cell-type accuracy {acc:.3} (chance {:.3}), batch mixing {mix:.3} (1 = fully mixed)",
            1.0 / cmd.cell_types as f64);
        if let Some(out) = &cmd.out {
            model.save(out, true)?;
            println!("saved the model to {}", out.display());
        }
        Ok(())
    })
}
