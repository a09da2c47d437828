//! `convert`: any input written as a store (or an `.h5ad`), optionally keeping only a listed set of
//! genes and / or the most highly variable ones. Two steps: [`select_genes`] (the list, then
//! seurat_v3 over streaming passes of the input), then [`write_converted`] (one more pass, writing);
//! [`convert`] does both. Memory is bounded by a chunk of rows, not the matrix.

use std::path::{Path, PathBuf};

use super::input::Input;
use super::output::{MatrixWriter, Written};
use super::writer::StoreMeta;
use crate::data::genes::{read_gene_list, resolve_genes};
use crate::data::hvg::SeuratV3;
use crate::data::{find_obs, ColumnMap};
use crate::error::{Error, Result};

/// What to convert, with the command line's defaults (its flags have the same names).
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// Keep only the genes listed in this file (one name or gene ID a line), in that order.
    pub genes: Option<PathBuf>,
    /// Keep only the N most highly variable genes (scanpy's seurat_v3 flavour on raw counts).
    pub n_top_genes: Option<usize>,
    /// obs column whose categories are the batches for `n_top_genes`.
    pub hvg_batch_key: Option<String>,
    /// Rows read, checked and written at a time; None: [`default_chunk_rows`].
    pub chunk_rows: Option<usize>,
    /// Replace the output if it is one that scvi-rs wrote (see `crate::atomic`).
    pub force: bool,
}

/// The genes to write: input gene indices, in output order, and what chose them.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneSelection {
    pub keep: Vec<usize>,
    /// Lines for the store header saying where the data came from and how genes were chosen.
    pub notes: Vec<String>,
    /// When the highly variable genes step ran: among how many genes it chose `keep`.
    pub hvg_candidates: Option<usize>,
}

/// Rows per chunk when none is given. Small chunks keep the buffers below glibc's mmap threshold
/// (32 MiB), so they are reused instead of being mapped and zeroed afresh for every chunk: 2048
/// rows converted 1M x 2,000 cells at about 70k rows/s, 8192 rows at 25k. A CSC matrix is the
/// exception: each chunk costs a full pass over the file, so chunks are made as large as about
/// 2^26 stored values (512 MiB of indices and values).
pub fn default_chunk_rows(input: &Input) -> usize {
    const SMALL: usize = 2048;
    if input.layout.as_deref() == Some("csc_matrix") {
        let per_row = input.nnz.unwrap_or(0) as f64 / input.n_cells.max(1) as f64;
        let rows = ((1u64 << 26) as f64 / per_row.max(1.0)) as usize;
        return rows.max(SMALL);
    }
    SMALL
}

fn chunk_rows(input: &Input, opts: &ConvertOptions) -> usize {
    opts.chunk_rows
        .unwrap_or_else(|| default_chunk_rows(input))
        .max(1)
}

/// Choose the genes to write: those listed in `opts.genes` (in the list's order), then the
/// `opts.n_top_genes` most highly variable among them (in their order), computed in two streaming
/// passes over the input.
pub fn select_genes(input: &Input, opts: &ConvertOptions) -> Result<GeneSelection> {
    let meta = &input.meta;
    let mut notes = vec![format!(
        "converted from {} ({}, {})",
        meta.source,
        input.format.name(),
        meta.field
    )];
    let mut keep: Vec<usize> = (0..input.n_genes).collect();
    if let Some(list) = &opts.genes {
        let wanted = read_gene_list(list).map_err(|e| Error::Config(format!("--genes {e}")))?;
        let list = list.display().to_string();
        keep = resolve_genes(&wanted, &meta.gene_names, &meta.var, &list, &meta.source)?;
        notes.push(format!("genes: the {} listed in {list}", keep.len()));
    }
    let Some(n_top) = opts.n_top_genes else {
        return Ok(GeneSelection {
            keep,
            notes,
            hvg_candidates: None,
        });
    };
    if n_top == 0 {
        return Err(Error::Config("--n-top-genes must be at least 1".into()));
    }
    if n_top > keep.len() {
        return Err(Error::Config(format!(
            "{}: --n-top-genes {n_top} but there are only {} genes",
            meta.source,
            keep.len()
        )));
    }
    let batch = match &opts.hvg_batch_key {
        Some(key) => {
            let col = find_obs(&meta.obs, key, &meta.source, " for --hvg-batch-key")?;
            let (codes, cats) = col
                .to_categorical(key)
                .map_err(|e| Error::Data(format!("{}: {e}", meta.source)))?;
            Some((codes, cats.len()))
        }
        None => None,
    };
    let map = ColumnMap::keep(input.n_genes, &keep);
    let n_sub = keep.len();
    // Six f64 statistics per gene and batch.
    let n_batches = batch.as_ref().map_or(1, |b| b.1.max(1));
    crate::limits::ensure_memory((n_batches as u64 * n_sub as u64).saturating_mul(48), || {
        format!(
            "{}: highly variable genes over {n_sub} genes in {n_batches} batches{}",
            meta.source,
            opts.hvg_batch_key
                .as_ref()
                .map(|k| format!(" (--hvg-batch-key {k})"))
                .unwrap_or_default()
        )
    })?;
    // The statistics' own errors (a one-cell batch, ...) name neither the file nor the step.
    let named = |e: Error| Error::Data(format!("{}: --n-top-genes: {e}", meta.source));
    let mut hvg = SeuratV3::new(n_sub, batch).map_err(named)?;
    let rows = chunk_rows(input, opts);
    input.for_each_chunk(rows, |first, c| {
        hvg.add_stats(first, &c.select_columns(&map));
        Ok(())
    })?;
    hvg.fit().map_err(named)?;
    input.for_each_chunk(rows, |first, c| {
        hvg.add_clipped(first, &c.select_columns(&map));
        Ok(())
    })?;
    let res = hvg.select(n_top).map_err(named)?;
    let chosen: Vec<usize> = (0..n_sub)
        .filter(|&g| res.highly_variable[g])
        .map(|g| keep[g])
        .collect();
    notes.push(format!(
        "genes: {} highly variable of {n_sub} (scanpy seurat_v3, span 0.3{})",
        chosen.len(),
        opts.hvg_batch_key
            .as_ref()
            .map(|k| format!(", batch key '{k}'"))
            .unwrap_or_default()
    ));
    Ok(GeneSelection {
        keep: chosen,
        notes,
        hvg_candidates: Some(n_sub),
    })
}

/// Write the selected genes of `input` to `output` (a store, or an `.h5ad` when the name ends in
/// `.h5ad`), one chunk of rows at a time, every value checked on the way.
pub fn write_converted(
    input: &Input,
    output: &Path,
    genes: &GeneSelection,
    opts: &ConvertOptions,
) -> Result<Written> {
    let meta = &input.meta;
    let keep = &genes.keep;
    let map = ColumnMap::keep(input.n_genes, keep);
    let pick = |v: &[String]| -> Vec<String> { keep.iter().map(|&g| v[g].clone()).collect() };
    if let Some(nnz) = input.nnz {
        // 8 bytes a stored value (index and value) in the genes kept, 8 a row, ~40 of names.
        let kept = nnz as f64 * keep.len() as f64 / input.n_genes.max(1) as f64;
        let bytes = (kept * 8.0 + input.n_cells as f64 * 48.0) as u64;
        crate::limits::ensure_disk(output, bytes, || {
            format!(
                "OUTPUT {} ({} cells x {} genes)",
                output.display(),
                input.n_cells,
                keep.len()
            )
        })?;
    }
    let mut w = MatrixWriter::create(output, keep.len(), &meta.source, opts.force)?;
    w.set_field(&meta.field);
    input.for_each_chunk(chunk_rows(input, opts), |_, c| {
        w.append_owned(if map.is_identity() {
            c
        } else {
            c.select_columns(&map)
        })
    })?;
    let written = w.finish(StoreMeta {
        gene_names: pick(&meta.gene_names),
        cell_names: meta.cell_names.clone(),
        obs: meta.obs.clone(),
        var: meta.var.iter().map(|(k, v)| (k.clone(), pick(v))).collect(),
        notes: genes.notes.clone(),
    })?;
    Ok(written)
}

/// [`select_genes`], then [`write_converted`].
pub fn convert(input: &Input, output: &Path, opts: &ConvertOptions) -> Result<Written> {
    let genes = select_genes(input, opts)?;
    write_converted(input, output, &genes, opts)
}
