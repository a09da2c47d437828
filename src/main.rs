//! `scvi-rs`: train scVI from the command line. A thin layer over the `scvi_rs` library.

mod cli;

use clap::{Parser, Subcommand};
use cli::demo::DemoCmd;
use cli::model_cmds::{ElboCmd, EmbedCmd, TrainCmd};

#[derive(Parser)]
#[command(
    name = "scvi-rs",
    version,
    about = "scVI (single-cell variational inference), equal to scvi-tools, fast"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Simulate data with batches and cell types, train, embed, and report (no files needed).
    Demo(DemoCmd),
    /// Train a model on an .h5ad file (or a store, a 10x .h5, a 10x MTX folder).
    Train(Box<TrainCmd>),
    /// Write the latent representation (posterior means) of cells under a trained model.
    Embed(EmbedCmd),
    /// The ELBO of a model on a subset of cells, as JSON (scvi-tools' get_elbo sign).
    Elbo(ElboCmd),
    /// elbo, reconstruction_error, kl_local and marginal_ll of every cell, as JSON.
    Evaluate(cli::infer_cmds::EvaluateCmd),
    /// Normalized expression (scvi-tools' get_normalized_expression) as .npy, .csv or .h5ad.
    Normalize(cli::infer_cmds::NormalizeCmd),
    /// Differential expression (vanilla or change mode) as a CSV table.
    De(Box<cli::infer_cmds::DeCmd>),
    /// Posterior predictive counts as .h5ad (or .npy for small data).
    Sample(cli::infer_cmds::SampleCmd),
    /// Convert an .h5ad, 10x .h5 or 10x MTX folder into a memory-mapped store (optionally selecting genes).
    Convert(cli::data_cmds::ConvertArgs),
    /// Describe a data set (store, .h5ad, 10x) as JSON, or list its genes.
    Info(cli::data_cmds::InfoArgs),
    /// Write a simulated data set (a store, or .h5ad when the name ends in .h5ad).
    Simulate(cli::data_cmds::SimulateArgs),
    /// Report the CPU, the CUDA libraries and GPUs, and compile every kernel
    Doctor(cli::doctor::DoctorCmd),
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = scvi_rs::interrupt::install() {
        eprintln!("warning: {e}; Ctrl-C will stop without cleaning up");
    }
    let result = match &cli.cmd {
        Cmd::Demo(c) => cli::demo::run_demo(c),
        Cmd::Train(c) => cli::model_cmds::run_train(c),
        Cmd::Embed(c) => cli::model_cmds::run_embed(c),
        Cmd::Elbo(c) => cli::model_cmds::run_elbo(c),
        Cmd::Evaluate(c) => cli::infer_cmds::run_evaluate(c),
        Cmd::Normalize(c) => cli::infer_cmds::run_normalize(c),
        Cmd::De(c) => cli::infer_cmds::run_de(c),
        Cmd::Sample(c) => cli::infer_cmds::run_sample(c),
        Cmd::Convert(c) => cli::data_cmds::run_convert(c),
        Cmd::Info(c) => cli::data_cmds::run_info(c),
        Cmd::Simulate(c) => cli::data_cmds::run_simulate(c),
        Cmd::Doctor(c) => cli::doctor::run_doctor(c),
    };
    if let Err(e) = result {
        let code = match e.downcast_ref::<scvi_rs::Error>() {
            Some(lib @ scvi_rs::Error::Interrupted { .. }) => {
                eprintln!("stopped: interrupted; no output was written");
                lib.exit_code()
            }
            _ => {
                eprintln!("error: {e:#}");
                1
            }
        };
        std::process::exit(code);
    }
}
