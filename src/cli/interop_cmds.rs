//! `export` and `import`: models to and from scvi-tools (`scvi_rs::scvi::interop`).

use anyhow::Result;
use clap::Args;
use scvi_rs::scvi::interop;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportCmd {
    /// A model directory written by `scvi-rs train` (or `scvi-rs import`).
    pub model: PathBuf,
    /// The scvi-tools model directory to write (it holds model.pt).
    pub out: PathBuf,
    /// The AnnData layer scvi-tools will read the counts from (default: X).
    #[arg(long)]
    pub layer: Option<String>,
    /// Replace OUT if it is an earlier export.
    #[arg(long)]
    pub force: bool,
}

pub fn run_export(cmd: &ExportCmd) -> Result<()> {
    interop::export(&cmd.model, &cmd.out, cmd.layer.clone(), cmd.force)?;
    eprintln!(
        "wrote {} (scvi-tools {}: scvi.model.SCVI.load(\"{}\", adata), adata with the model's genes \
         in order{})",
        cmd.out.join(scvi_rs::model::scvi_tools::MODEL_PT).display(),
        scvi_rs::model::scvi_tools::SCVI_TOOLS_VERSION,
        cmd.out.display(),
        cmd.layer
            .as_ref()
            .map(|l| format!(" and the counts in layers['{l}']"))
            .unwrap_or_default()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct ImportCmd {
    /// A scvi-tools SCVI model directory (written by `SCVI.save`), or its model.pt.
    pub scvi_model: PathBuf,
    /// The scvi-rs model directory to write.
    pub out: PathBuf,
    /// Replace OUT if it is a scvi-rs model directory.
    #[arg(long)]
    pub force: bool,
}

pub fn run_import(cmd: &ImportCmd) -> Result<()> {
    let got = interop::import(&cmd.scvi_model, &cmd.out, cmd.force)?;
    let m = &got.model.meta;
    eprintln!(
        "wrote {}: a scvi-tools {} SCVI model, {} genes, {} batches, n_latent {}",
        cmd.out.display(),
        got.scvi_version,
        m.genes.len(),
        m.model.n_batch,
        m.model.n_latent
    );
    if let Some(l) = &got.layer {
        eprintln!("it was set up on layer '{l}': pass --layer {l} to embed and the other commands");
    }
    Ok(())
}
