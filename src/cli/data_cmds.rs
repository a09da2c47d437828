//! The data commands: `convert`, `info` and `simulate`. Each parses its flags, calls the library
//! (`scvi_rs::store::{convert, info, output}`) and prints what it did.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use super::model_cmds::input_options;
use super::options::{positive_count, positive_real, whole};
use anyhow::Result;
use clap::Args;
use scvi_rs::atomic::check_output;
use scvi_rs::data::simulate::SimConfig;
use scvi_rs::model::config::MAX_CATEGORIES;
use scvi_rs::store::convert::{select_genes, write_converted, ConvertOptions};
use scvi_rs::store::info::info_json_with;
use scvi_rs::store::{open_input_with, output_kind, write_simulated};

/// `scvi-rs convert INPUT OUTPUT.store`: write any input as a memory-mapped store.
#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// Input: an .h5ad file, a 10x .h5 file, a 10x MTX folder or a store.
    pub input: PathBuf,
    /// The store to write (a directory, e.g. atlas.store); a name ending in .h5ad writes an
    /// AnnData file instead.
    pub output: PathBuf,
    /// Replace OUTPUT if it exists (only a store or file that scvi-rs can replace: never a folder
    /// of other files).
    #[arg(long)]
    pub force: bool,
    /// Read the counts from `layers/<LAYER>` of an .h5ad instead of X.
    #[arg(long)]
    pub layer: Option<String>,
    /// Only the genes of this genome of a 10x .h5 (needed for a Cell Ranger 2 file with several).
    #[arg(long)]
    pub genome: Option<String>,
    /// Keep only the N most highly variable genes (scanpy's seurat_v3 flavour on raw counts).
    #[arg(long, value_name = "N", value_parser = positive_count, allow_negative_numbers = true)]
    pub n_top_genes: Option<usize>,
    /// obs column whose categories are the batches for --n-top-genes.
    #[arg(long, value_name = "KEY", requires = "n_top_genes")]
    pub hvg_batch_key: Option<String>,
    /// Keep only the genes listed in FILE (one name or gene ID a line), in that order.
    #[arg(long, value_name = "FILE")]
    pub genes: Option<PathBuf>,
    /// Rows read, checked and written at a time (bounds the memory of the conversion). Default:
    /// 2048, or for a CSC .h5ad (read in one pass over the file per chunk) enough rows for about
    /// 2^26 stored values a chunk.
    #[arg(long, value_name = "ROWS", value_parser = positive_count, allow_negative_numbers = true)]
    pub chunk_rows: Option<usize>,
}

/// `scvi-rs info INPUT`: sizes and annotations as JSON.
#[derive(Args, Debug, Clone)]
pub struct InfoArgs {
    /// A store, an .h5ad file, a 10x .h5 file or a 10x MTX folder.
    pub input: PathBuf,
    /// Print the gene names, one per line, instead of the JSON.
    #[arg(long)]
    pub genes: bool,
    /// Only the genes of this genome of a 10x .h5 (needed for a Cell Ranger 2 file with several).
    #[arg(long)]
    pub genome: Option<String>,
    /// Also run the full O(nnz) check of a store (checksums of every array, every row).
    #[arg(long)]
    pub verify: bool,
}

/// `scvi-rs simulate --out sim.store`: a realistic simulated data set of any size.
#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Number of cells (checked against the free disk space).
    #[arg(long, default_value_t = 10_000, value_parser = positive_count, allow_negative_numbers = true)]
    pub cells: usize,
    /// Number of genes (1 to 2^32 - 1).
    #[arg(long, default_value_t = 2_000, value_parser = sim_genes, allow_negative_numbers = true)]
    pub genes: usize,
    /// Number of batches (obs column `batch`; 1 to 2^20).
    #[arg(long, default_value_t = 2, value_parser = categories, allow_negative_numbers = true)]
    pub batches: usize,
    /// Number of cell types (obs column `cell_type`; 1 to 2^20).
    #[arg(long, default_value_t = 5, value_parser = categories, allow_negative_numbers = true)]
    pub cell_types: usize,
    /// Random seed: the same seed gives the same data, whatever the number of threads.
    #[arg(long, default_value_t = 0, value_parser = super::options::seed, allow_negative_numbers = true)]
    pub seed: u64,
    /// Median library size (UMIs per cell; above 0, at most 10^7); default 1.5 x genes.
    #[arg(long, value_parser = library_median, allow_hyphen_values = true)]
    pub library_median: Option<f64>,
    /// Where to write: an .h5ad file when the name ends in .h5ad, else a store (directory).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists (only a store or file that scvi-rs can replace).
    #[arg(long)]
    pub force: bool,
}

fn sim_genes(s: &str) -> std::result::Result<usize, String> {
    whole(s, 1, u32::MAX as usize)
}
fn categories(s: &str) -> std::result::Result<usize, String> {
    whole(s, 1, MAX_CATEGORIES)
}
/// A median library size: real data sit between 10^2 and 10^5 UMIs a cell; past 10^7 a single
/// gene's count would pass 10^9, which no reader accepts as a count.
fn library_median(s: &str) -> std::result::Result<f64, String> {
    match positive_real(s) {
        Ok(v) if v <= 1e7 => Ok(v),
        _ => Err("must be a number above 0, at most 10^7".into()),
    }
}

pub fn run_convert(args: &ConvertArgs) -> Result<()> {
    let t0 = Instant::now();
    check_output(
        &args.output,
        &output_kind(&args.output),
        args.force,
        "OUTPUT",
    )?;
    let input = open_input_with(&args.input, &input_options(&args.layer, &args.genome))?;
    let opts = ConvertOptions {
        genes: args.genes.clone(),
        n_top_genes: args.n_top_genes,
        hvg_batch_key: args.hvg_batch_key.clone(),
        chunk_rows: args.chunk_rows,
        force: args.force,
    };
    let t = Instant::now();
    let genes = select_genes(&input, &opts)?;
    if let Some(n_sub) = genes.hvg_candidates {
        eprintln!(
            "highly variable genes: {} of {n_sub} (seurat_v3{}) in {:.1} s",
            genes.keep.len(),
            args.hvg_batch_key
                .as_ref()
                .map(|k| format!(", batch key {k}"))
                .unwrap_or_default(),
            t.elapsed().as_secs_f64()
        );
    }
    let t = Instant::now();
    let w = write_converted(&input, &args.output, &genes, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "wrote {}: {} cells x {} genes, {} non-zeros; write pass {secs:.1} s ({:.0} rows/s), \
         total {:.1} s",
        args.output.display(),
        w.n_cells,
        genes.keep.len(),
        w.nnz,
        w.n_cells as f64 / secs.max(1e-9),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn run_info(args: &InfoArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.genes {
        let input = open_input_with(&args.input, &input_options(&None, &args.genome))?;
        for g in &input.meta.gene_names {
            writeln!(out, "{g}")?;
        }
    } else {
        let v = info_json_with(
            &args.input,
            &input_options(&None, &args.genome),
            args.verify,
        )?;
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    }
    out.flush()?;
    Ok(())
}

impl SimulateArgs {
    pub fn config(&self) -> SimConfig {
        SimConfig {
            n_cells: self.cells,
            n_genes: self.genes,
            n_batches: self.batches,
            n_cell_types: self.cell_types,
            seed: self.seed,
            library_median: self.library_median,
            ..SimConfig::default()
        }
    }
}

pub fn run_simulate(args: &SimulateArgs) -> Result<()> {
    let cfg = args.config();
    let t = Instant::now();
    check_output(&args.out, &output_kind(&args.out), args.force, "--out")?;
    let w = write_simulated(&cfg, &args.out, args.force)?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "wrote {}: {} cells x {} genes, {} non-zeros ({:.0} per cell) in {secs:.1} s \
         ({:.0} rows/s)",
        args.out.display(),
        w.n_cells,
        cfg.n_genes,
        w.nnz,
        w.nnz as f64 / w.n_cells as f64,
        w.n_cells as f64 / secs.max(1e-9)
    );
    Ok(())
}
