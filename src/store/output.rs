//! Where the data commands write a count matrix: a store, or an AnnData `.h5ad` when the name ends
//! in `.h5ad`. [`MatrixWriter`] is that choice behind one interface (rows appended chunk by chunk,
//! annotations at the end); [`write_simulated`] is `simulate`'s use of it.

use std::path::Path;

use super::h5ad_writer::H5adWriter;
use super::mapped::STORE_DIR;
use super::writer::{StoreMeta, StoreWriter};
use crate::atomic::OutputKind;
use crate::data::simulate::{self, SimConfig};
use crate::data::CsrMatrix;
use crate::error::Result;
use crate::interrupt;
use crate::limits;

/// Is `path` to be written as an `.h5ad` (by its name) rather than a store?
pub fn is_h5ad_name(path: &Path) -> bool {
    path.to_string_lossy().to_lowercase().ends_with(".h5ad")
}

/// The kind of output a path names: an `.h5ad` file by its name, else a store.
pub fn output_kind(path: &Path) -> OutputKind {
    if is_h5ad_name(path) {
        OutputKind::FILE
    } else {
        STORE_DIR
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    pub n_cells: u64,
    /// Stored values (a store drops explicit zeros; an `.h5ad` keeps what it was given).
    pub nnz: u64,
    /// Values that are not whole numbers, for a store (both writers warn about them themselves).
    pub n_non_integer: Option<u64>,
}

/// A count matrix being written: a store, or an `.h5ad` when the name ends in `.h5ad`.
pub enum MatrixWriter {
    Store(StoreWriter),
    H5ad(H5adWriter),
}

impl MatrixWriter {
    /// Start writing `n_genes` genes at `path` (see [`StoreWriter::create`] and
    /// [`H5adWriter::create`] for what an existing `path` and `force` do).
    pub fn create(path: &Path, n_genes: usize, source: &str, force: bool) -> Result<MatrixWriter> {
        Ok(if is_h5ad_name(path) {
            MatrixWriter::H5ad(H5adWriter::create(path, n_genes, source, force)?)
        } else {
            MatrixWriter::Store(StoreWriter::create(path, n_genes, source, force)?)
        })
    }

    /// Name the matrix in value error messages (`X`, `layers/counts`, `matrix.mtx`; a store only:
    /// an `.h5ad` names its own `X`).
    pub fn set_field(&mut self, field: &str) {
        if let MatrixWriter::Store(w) = self {
            w.set_field(field);
        }
    }

    /// Append rows (checked: structure, gene count, values). Stops at a safe point when an
    /// interruption was asked for.
    pub fn append_owned(&mut self, chunk: CsrMatrix) -> Result<()> {
        interrupt::check()?;
        match self {
            MatrixWriter::Store(w) => w.append_owned(chunk),
            MatrixWriter::H5ad(w) => w.append_owned(chunk),
        }
    }

    /// Write the annotations and move the output into place.
    pub fn finish(self, meta: StoreMeta) -> Result<Written> {
        Ok(match self {
            MatrixWriter::Store(w) => {
                let h = w.finish(meta)?;
                Written {
                    n_cells: h.n_cells,
                    nnz: h.nnz,
                    n_non_integer: Some(h.values.n_non_integer),
                }
            }
            MatrixWriter::H5ad(w) => {
                let (n_cells, nnz) = (w.n_rows() as u64, w.nnz());
                w.finish(meta)?;
                Written {
                    n_cells,
                    nnz,
                    n_non_integer: None,
                }
            }
        })
    }
}

/// Write a simulated data set, in constant memory (one chunk of rows plus per-cell labels and
/// names): an `.h5ad` when the name ends in `.h5ad`, else a store.
///
/// Before anything is drawn, the memory the simulation holds and the disk space the output needs
/// (8 bytes a stored value, from a pilot of the first 256 cells, plus about 40 bytes a cell) are
/// checked against what the machine has.
pub fn write_simulated(cfg: &SimConfig, out: &Path, force: bool) -> Result<Written> {
    cfg.validate()?;
    let size = || format!("{} cells x {} genes", cfg.n_cells, cfg.n_genes);
    limits::ensure_memory(cfg.memory_bytes(), || format!("simulating {}", size()))?;
    let per_cell = simulate::mean_nnz_per_cell(cfg)?;
    let bytes = (cfg.n_cells as f64 * (per_cell * 8.0 + 40.0)) as u64;
    limits::ensure_disk(out, bytes, || {
        format!(
            "{} ({}, about {per_cell:.0} stored values a cell)",
            out.display(),
            size()
        )
    })?;
    let source = format!(
        "simulated: {} cells, {} genes, {} batches, {} cell types, seed {}",
        cfg.n_cells, cfg.n_genes, cfg.n_batches, cfg.n_cell_types, cfg.seed
    );
    let mut w = MatrixWriter::create(out, cfg.n_genes, &source, force)?;
    simulate::simulate_rows(cfg, |_, chunk| w.append_owned(chunk))?;
    w.finish(StoreMeta {
        gene_names: simulate::sim_gene_names(cfg),
        cell_names: simulate::sim_cell_names(cfg),
        obs: simulate::sim_obs(cfg),
        var: Vec::new(),
        notes: vec![format!("{cfg:?}")],
    })
}
