//! The data commands of the command line: `convert`, `info` and `simulate`. Each is a clap `Args`
//! struct plus a `run_*` function; `main.rs` wires them in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use crate::atomic::{check_output, OutputKind};
use crate::data::hvg::SeuratV3;
use crate::data::simulate::{self, SimConfig};
use crate::data::{CsrMatrix, ObsColumn};
use crate::interrupt;
use crate::store::h5ad_writer::H5adWriter;
use crate::store::input::{Input, InputFormat};
use crate::store::{Store, StoreMeta, StoreWriter, STORE_DIR};

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
    /// Keep only the N most highly variable genes (scanpy's seurat_v3 flavour on raw counts).
    #[arg(long, value_name = "N")]
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
    #[arg(long, value_name = "ROWS")]
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
    /// Also run the full O(nnz) check of a store (checksums of every array, every row).
    #[arg(long)]
    pub verify: bool,
}

/// `scvi-rs simulate --out sim.store`: a realistic simulated data set of any size.
#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Number of cells.
    #[arg(long, default_value_t = 10_000)]
    pub cells: usize,
    /// Number of genes.
    #[arg(long, default_value_t = 2_000)]
    pub genes: usize,
    /// Number of batches (obs column `batch`).
    #[arg(long, default_value_t = 2)]
    pub batches: usize,
    /// Number of cell types (obs column `cell_type`).
    #[arg(long, default_value_t = 5)]
    pub cell_types: usize,
    /// Random seed: the same seed gives the same data, whatever the number of threads.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Median library size (UMIs per cell); default 1.5 x genes.
    #[arg(long)]
    pub library_median: Option<f64>,
    /// Where to write: an .h5ad file when the name ends in .h5ad, else a store (directory).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace --out if it exists (only a store or file that scvi-rs can replace).
    #[arg(long)]
    pub force: bool,
}

// ------------------------------------------------------------------------------------------------
// convert

/// Read a gene list: one name a line, blank lines and `#` comments skipped, no repeats.
fn read_gene_list(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read the gene list", path.display()))?;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for line in text.lines() {
        let g = line.trim();
        if g.is_empty() || g.starts_with('#') {
            continue;
        }
        if !seen.insert(g.to_string()) {
            bail!("{}: gene '{g}' is listed twice", path.display());
        }
        out.push(g.to_string());
    }
    if out.is_empty() {
        bail!("{}: the gene list is empty", path.display());
    }
    Ok(out)
}

/// Positions of `wanted` among the genes: by name, else by gene ID (`gene_ids` var column).
/// Missing genes are an error that names them.
pub fn resolve_genes(
    wanted: &[String],
    gene_names: &[String],
    var: &[(String, Vec<String>)],
    list_name: &str,
    source: &str,
) -> crate::Result<Vec<usize>> {
    let by_name: HashMap<&str, usize> = gene_names
        .iter()
        .enumerate()
        .map(|(i, g)| (g.as_str(), i))
        .collect();
    let by_id: HashMap<&str, usize> = var
        .iter()
        .find(|(k, _)| k == "gene_ids")
        .map(|(_, ids)| {
            ids.iter()
                .enumerate()
                .map(|(i, g)| (g.as_str(), i))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(wanted.len());
    let mut missing = Vec::new();
    for w in wanted {
        match by_name.get(w.as_str()).or_else(|| by_id.get(w.as_str())) {
            Some(&i) => out.push(i),
            None => missing.push(w.as_str()),
        }
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(20).copied().collect();
        return Err(crate::Error::Config(format!(
            "{} of the {} genes in {list_name} are not in {source}: {}{}",
            missing.len(),
            wanted.len(),
            shown.join(", "),
            if missing.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        )));
    }
    let mut seen = vec![false; gene_names.len()];
    for &i in &out {
        if std::mem::replace(&mut seen[i], true) {
            return Err(crate::Error::Config(format!(
                "{list_name} names gene '{}' twice (by name and by ID)",
                gene_names[i]
            )));
        }
    }
    Ok(out)
}

/// Keep the columns `keep` (old indices, in their new order) of a chunk.
pub fn subset_columns(chunk: &CsrMatrix, map: &[u32], n_new: usize, sorted: bool) -> CsrMatrix {
    let mut out = CsrMatrix::with_cols(n_new);
    let mut row: Vec<(u32, f32)> = Vec::new();
    for i in 0..chunk.n_rows {
        let (a, b) = (chunk.indptr[i] as usize, chunk.indptr[i + 1] as usize);
        row.clear();
        for k in a..b {
            let m = map[chunk.indices[k] as usize];
            if m != u32::MAX {
                row.push((m, chunk.data[k]));
            }
        }
        if !sorted {
            row.sort_unstable_by_key(|p| p.0);
        }
        out.indices.extend(row.iter().map(|p| p.0));
        out.data.extend(row.iter().map(|p| p.1));
        out.indptr.push(out.indices.len() as u64);
        out.n_rows += 1;
    }
    out
}

/// Old index -> new index (`u32::MAX` dropped) for keeping `keep` (old indices in new order).
fn column_map(n_old: usize, keep: &[usize]) -> (Vec<u32>, bool) {
    let mut map = vec![u32::MAX; n_old];
    for (new, &old) in keep.iter().enumerate() {
        map[old] = new as u32;
    }
    (map, keep.windows(2).all(|w| w[0] < w[1]))
}

/// Rows per chunk when `--chunk-rows` is not given. Small chunks keep the buffers below glibc's
/// mmap threshold (32 MiB), so they are reused instead of being mapped and zeroed afresh for every
/// chunk: 2048 rows converted 1M x 2,000 cells at about 70k rows/s, 8192 rows at 25k. A CSC matrix
/// is the exception: each chunk costs a full pass over the file, so chunks are made as large as
/// about 2^26 stored values (512 MiB of indices and values).
pub fn default_chunk_rows(input: &Input) -> usize {
    const SMALL: usize = 2048;
    if input.layout.as_deref() == Some("csc_matrix") {
        let per_row = input.nnz.unwrap_or(0) as f64 / input.n_cells.max(1) as f64;
        let rows = ((1u64 << 26) as f64 / per_row.max(1.0)) as usize;
        return rows.max(SMALL);
    }
    SMALL
}

/// The kind of output a path names: an `.h5ad` file by its name, else a store.
fn output_kind(path: &Path) -> OutputKind {
    if is_h5ad_name(path) {
        OutputKind::FILE
    } else {
        STORE_DIR
    }
}

pub fn run_convert(args: &ConvertArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    check_output(
        &args.output,
        &output_kind(&args.output),
        args.force,
        "OUTPUT",
    )?;
    let input = Input::open(&args.input, args.layer.as_deref())?;
    let meta = &input.meta;
    let chunk_rows = args
        .chunk_rows
        .unwrap_or_else(|| default_chunk_rows(&input))
        .max(1);
    let mut notes = vec![format!(
        "converted from {} ({}, {})",
        meta.source,
        input.format.name(),
        meta.field
    )];

    // Genes to keep: the list (in its order), then the highly variable ones among them.
    let mut keep: Vec<usize> = (0..input.n_genes).collect();
    if let Some(list) = &args.genes {
        let wanted = read_gene_list(list)?;
        keep = resolve_genes(
            &wanted,
            &meta.gene_names,
            &meta.var,
            &list.display().to_string(),
            &meta.source,
        )?;
        notes.push(format!(
            "genes: the {} listed in {}",
            keep.len(),
            list.display()
        ));
    }
    if let Some(n_top) = args.n_top_genes {
        if n_top == 0 {
            bail!("--n-top-genes must be at least 1");
        }
        if n_top > keep.len() {
            bail!(
                "--n-top-genes {n_top} but there are only {} genes",
                keep.len()
            );
        }
        let batch =
            match &args.hvg_batch_key {
                Some(key) => {
                    let col =
                        meta.obs
                            .iter()
                            .find(|(k, _)| k == key)
                            .map(|(_, c)| c)
                            .ok_or_else(|| {
                                let names: Vec<&str> =
                                    meta.obs.iter().map(|(k, _)| k.as_str()).collect();
                                anyhow::anyhow!(
                        "{}: obs has no column '{key}' for --hvg-batch-key (columns: {})",
                        meta.source,
                        if names.is_empty() { "none".into() } else { names.join(", ") }
                    )
                            })?;
                    Some(col.to_categorical(key)?)
                }
                None => None,
            };
        let (map, sorted) = column_map(input.n_genes, &keep);
        let n_sub = keep.len();
        let mut hvg = SeuratV3::new(
            n_sub,
            batch.as_ref().map(|(c, cats)| (c.clone(), cats.len())),
        )?;
        let t = Instant::now();
        input.for_each_chunk(chunk_rows, |first, c| {
            hvg.add_stats(first, &subset_columns(&c, &map, n_sub, sorted));
            Ok(())
        })?;
        hvg.fit()?;
        input.for_each_chunk(chunk_rows, |first, c| {
            hvg.add_clipped(first, &subset_columns(&c, &map, n_sub, sorted));
            Ok(())
        })?;
        let res = hvg.select(n_top)?;
        let chosen: Vec<usize> = (0..n_sub)
            .filter(|&g| res.highly_variable[g])
            .map(|g| keep[g])
            .collect();
        eprintln!(
            "highly variable genes: {} of {} (seurat_v3{}) in {:.1} s",
            chosen.len(),
            n_sub,
            args.hvg_batch_key
                .as_ref()
                .map(|k| format!(", batch key {k}"))
                .unwrap_or_default(),
            t.elapsed().as_secs_f64()
        );
        notes.push(format!(
            "genes: {} highly variable of {n_sub} (scanpy seurat_v3, span 0.3{})",
            chosen.len(),
            args.hvg_batch_key
                .as_ref()
                .map(|k| format!(", batch key '{k}'"))
                .unwrap_or_default()
        ));
        keep = chosen;
    }

    let identity = keep.len() == input.n_genes && keep.iter().enumerate().all(|(i, &g)| i == g);
    let (map, sorted) = column_map(input.n_genes, &keep);
    let n_out = keep.len();
    let transform = |c: CsrMatrix| {
        if identity {
            c
        } else {
            subset_columns(&c, &map, n_out, sorted)
        }
    };
    let pick = |v: &[String]| -> Vec<String> { keep.iter().map(|&g| v[g].clone()).collect() };
    let store_meta = || StoreMeta {
        gene_names: pick(&meta.gene_names),
        cell_names: meta.cell_names.clone(),
        obs: meta.obs.clone(),
        var: meta.var.iter().map(|(k, v)| (k.clone(), pick(v))).collect(),
        notes: notes.clone(),
    };
    let t = Instant::now();
    let (n_cells, nnz) = if is_h5ad_name(&args.output) {
        // An .h5ad output (e.g. to hand a gene subset or a 10x matrix to Python).
        let mut w = H5adWriter::create(&args.output, n_out, &meta.source, args.force)?;
        let mut nnz = 0u64;
        input.for_each_chunk(chunk_rows, |_, c| {
            interrupt::check()?;
            let c = transform(c);
            nnz += c.indices.len() as u64;
            w.append_owned(c)
        })?;
        w.finish(store_meta())?;
        (input.n_cells as u64, nnz)
    } else {
        let mut w = StoreWriter::create(&args.output, n_out, &meta.source, args.force)?;
        w.set_field(&meta.field);
        input.for_each_chunk(chunk_rows, |_, c| {
            interrupt::check()?;
            w.append_owned(transform(c))
        })?;
        let header = w.finish(store_meta())?;
        if header.values.n_non_integer > 0 {
            eprintln!(
                "warning: {}: {} values are not whole numbers; scVI expects raw counts",
                meta.source, header.values.n_non_integer
            );
        }
        (header.n_cells, header.nnz)
    };
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "wrote {}: {n_cells} cells x {n_out} genes, {nnz} non-zeros; write pass {secs:.1} s \
         ({:.0} rows/s), total {:.1} s",
        args.output.display(),
        n_cells as f64 / secs.max(1e-9),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// info

const MAX_CATEGORIES_SHOWN: usize = 1000;

fn obs_json(name: &str, col: &ObsColumn) -> Value {
    match col {
        ObsColumn::Categorical { codes, categories } => {
            let mut counts = vec![0u64; categories.len()];
            let mut missing = 0u64;
            for &c in codes {
                match counts.get_mut(c as usize) {
                    Some(n) if c >= 0 => *n += 1,
                    _ => missing += 1,
                }
            }
            let shown = categories.len().min(MAX_CATEGORIES_SHOWN);
            json!({
                "name": name,
                "kind": "categorical",
                "n_categories": categories.len(),
                "categories": &categories[..shown],
                "counts": &counts[..shown],
                "missing": missing,
                "truncated": shown < categories.len(),
            })
        }
        ObsColumn::Strings(v) => {
            let mut u: Vec<&String> = v.iter().collect();
            u.sort();
            u.dedup();
            json!({"name": name, "kind": "strings", "n_unique": u.len()})
        }
        ObsColumn::Integers(v) => json!({
            "name": name, "kind": "integers",
            "min": v.iter().min(), "max": v.iter().max(),
        }),
        ObsColumn::Floats(v) => {
            let fin: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            json!({
                "name": name, "kind": "floats",
                "min": fin.iter().copied().reduce(f64::min),
                "max": fin.iter().copied().reduce(f64::max),
                "n_missing": v.len() - fin.len(),
            })
        }
        ObsColumn::Bools(v) => json!({
            "name": name, "kind": "bools",
            "n_true": v.iter().filter(|&&b| b).count(),
        }),
    }
}

/// The `info` JSON of any input.
pub fn info_json(path: &Path, verify: bool) -> anyhow::Result<Value> {
    let input = Input::open(path, None)?;
    let m = &input.meta;
    let mut v = json!({
        "path": path.display().to_string(),
        "format": input.format.name(),
        "n_cells": input.n_cells,
        "n_genes": input.n_genes,
        "nnz": input.nnz,
        "obs": m.obs.iter().map(|(k, c)| obs_json(k, c)).collect::<Vec<_>>(),
        "var": m.var.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
    });
    if input.format == InputFormat::Store {
        let s = Store::open(path)?;
        let h = s.header();
        v["format_version"] = json!(h.version);
        v["source"] = json!(h.source);
        v["created_by"] = json!(h.created_by);
        v["values"] = serde_json::to_value(&h.values)?;
        v["notes"] = json!(h.notes);
        if verify {
            s.verify()?;
            v["verified"] = json!(true);
        }
    } else {
        v["format_version"] = Value::Null;
        v["source"] = json!(m.source);
        if verify {
            bail!(
                "--verify checks a store; {} is a {}",
                path.display(),
                input.format.name()
            );
        }
    }
    Ok(v)
}

pub fn run_info(args: &InfoArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.genes {
        let input = Input::open(&args.input, None)?;
        for g in &input.meta.gene_names {
            writeln!(out, "{g}")?;
        }
    } else {
        let v = info_json(&args.input, args.verify)?;
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    }
    out.flush()?;
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// simulate

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

/// Is `path` to be written as an `.h5ad` (by its name) rather than a store?
fn is_h5ad_name(path: &Path) -> bool {
    path.to_string_lossy().to_lowercase().ends_with(".h5ad")
}

/// Write a simulated data set, in constant memory (one chunk of rows plus per-cell labels and
/// names): an `.h5ad` when the name ends in `.h5ad`, else a store. Returns (cells, nnz).
pub fn write_simulated(cfg: &SimConfig, out: &Path, force: bool) -> crate::Result<(u64, u64)> {
    cfg.validate()?;
    let source = format!(
        "simulated: {} cells, {} genes, {} batches, {} cell types, seed {}",
        cfg.n_cells, cfg.n_genes, cfg.n_batches, cfg.n_cell_types, cfg.seed
    );
    let meta = || StoreMeta {
        gene_names: simulate::sim_gene_names(cfg),
        cell_names: simulate::sim_cell_names(cfg),
        obs: simulate::sim_obs(cfg),
        var: Vec::new(),
        notes: vec![format!("{cfg:?}")],
    };
    if is_h5ad_name(out) {
        let mut w = H5adWriter::create(out, cfg.n_genes, &source, force)?;
        let mut nnz = 0u64;
        simulate::simulate_rows(cfg, |_, chunk| {
            interrupt::check()?;
            nnz += chunk.indices.len() as u64;
            w.append_owned(chunk)
        })?;
        w.finish(meta())?;
        Ok((cfg.n_cells as u64, nnz))
    } else {
        let mut w = StoreWriter::create(out, cfg.n_genes, &source, force)?;
        simulate::simulate_rows(cfg, |_, chunk| {
            interrupt::check()?;
            w.append_owned(chunk)
        })?;
        let h = w.finish(meta())?;
        Ok((h.n_cells, h.nnz))
    }
}

pub fn run_simulate(args: &SimulateArgs) -> anyhow::Result<()> {
    let cfg = args.config();
    let t = Instant::now();
    check_output(&args.out, &output_kind(&args.out), args.force, "--out")?;
    let (n_cells, nnz) = write_simulated(&cfg, &args.out, args.force)?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "wrote {}: {n_cells} cells x {} genes, {nnz} non-zeros ({:.0} per cell) in {secs:.1} s \
         ({:.0} rows/s)",
        args.out.display(),
        cfg.n_genes,
        nnz as f64 / n_cells as f64,
        n_cells as f64 / secs.max(1e-9)
    );
    Ok(())
}
