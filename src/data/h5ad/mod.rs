//! AnnData `.h5ad` reader on the pure-Rust `hdf5-reader` (no C HDF5): the public API and the file.
//!
//! What is read: the count matrix `X` (or `layers/<name>`) as CSR f32, the gene names
//! (`var`'s index), the cell names (`obs`'s index) and every `obs` column. The anndata 0.8+
//! on-disk encoding (the `encoding-type` attributes; anndata has written it since 2022) and the
//! layout of anndata before 0.7 (`obs` / `var` as compound datasets, categories in
//! `uns/<column>_categories`, `h5sparse` matrices; see `legacy`) are read as anndata reads them.
//!
//! - `matrix`: finding and checking the matrix (`csr_matrix`, `csc_matrix` or a dense `array`)
//!   and streaming it as CSR chunks of rows;
//! - `frames`: the `obs` and `var` dataframes (indexes, categorical, nullable and plain columns);
//! - `legacy`: the same dataframes as anndata < 0.7 wrote them (compound datasets).
//!
//! Numbers are decoded by the readers' shared decoder ([`super::hdf5`]): data may be any of
//! int8/16/32/64, uint8/16/32/64, float32/64 (converted to f32), indices and indptr any integer
//! type. Compression is whatever `hdf5-reader` decodes (gzip/deflate, shuffle, fletcher32, lz4, ...).
//!
//! Every error names the file and the field (`X/indptr`, `obs/cell_type/codes`, ...).

mod frames;
mod legacy;
mod matrix;

use std::path::{Path, PathBuf};

use hdf5_reader::group::Group;
use hdf5_reader::{Attribute, Dataset as H5Dataset, Hdf5File};

use super::csr::CsrMatrix;
use super::hdf5::{self, H5Error};
use super::validate::{CountChecks, CountSummary};
use super::{Dataset, ObsColumn};
use crate::error::{Error, Result};
use matrix::{Kind, Matrix, Plan};

/// Which matrix of the file to read.
#[derive(Clone, Debug, Default)]
pub struct H5adOptions {
    /// Read `layers/<layer>` instead of `X` (scvi-tools' `layer=` argument).
    pub layer: Option<String>,
}

/// Cell names and the named `obs` columns, as [`read_obs`] returns them.
pub type ObsTable = (Vec<String>, Vec<(String, ObsColumn)>);

/// A cheap look at a file: sizes and names, no matrix values.
#[derive(Clone, Debug, PartialEq)]
pub struct H5adSummary {
    pub n_obs: usize,
    pub n_vars: usize,
    /// `X`'s encoding: "csr_matrix", "csc_matrix" or "array".
    pub x_encoding: String,
    /// `X`'s stored value type, e.g. "float32", "int64".
    pub x_dtype: String,
    /// Stored values of `X` (None for a dense `X`).
    pub x_nnz: Option<u64>,
    /// The `obs` columns, in the file's `column-order`.
    pub obs_columns: Vec<String>,
    /// The names under `layers/`.
    pub layers: Vec<String>,
}

/// Read `X` (or `layers/<layer>`) as CSR f32 counts plus var names, obs names and every obs column.
///
/// The matrix is read through the chunked reader (a sparse matrix is never densified; a dense one
/// is sparsified a block of rows at a time) and every chunk goes through [`CountChecks`]: a
/// negative, NaN or infinite value is an error. Non-integer values are allowed; they are reported
/// on stderr as a warning, as scvi-tools does. Use [`read_h5ad_with_summary`] to get them instead.
pub fn read_h5ad(path: &Path, opts: &H5adOptions) -> Result<Dataset> {
    let (ds, summary) = read_h5ad_with_summary(path, opts)?;
    for w in summary.warnings(&ds.source, &matrix_field(opts)) {
        eprintln!("warning: {w}");
    }
    Ok(ds)
}

/// [`read_h5ad`], returning what the value checks found (non-integer values) instead of printing it.
pub fn read_h5ad_with_summary(path: &Path, opts: &H5adOptions) -> Result<(Dataset, CountSummary)> {
    let r = H5adReader::open(path, opts)?;
    let gene_names = r.var_names()?;
    let (cell_names, obs) = r.obs()?;
    let (counts, summary) = r.read_counts()?;
    let ds = Dataset {
        counts: Box::new(counts),
        gene_names,
        cell_names,
        obs,
        source: path.display().to_string(),
    };
    Ok((ds, summary))
}

/// A cheap peek for messages and `info`: sizes, `X`'s encoding, the obs column names and layers.
/// Reads attributes and dataset headers only (no values). A file without `X` is an error.
pub fn h5ad_summary(path: &Path) -> Result<H5adSummary> {
    let r = H5adReader::open(path, &H5adOptions::default())?;
    let (f, m) = (&r.file, &r.matrix);
    let legacy = f.legacy_fields("obs")?;
    let obs_columns = match f.root_group()?.group("obs") {
        // The first field of a legacy record is the index, the others the columns.
        _ if legacy.is_some() => legacy.unwrap_or_default().into_iter().skip(1).collect(),
        Ok(g) => {
            let attrs = f.attrs(&g, "obs")?;
            frames::column_order(&attrs).unwrap_or_default()
        }
        Err(_) => Vec::new(),
    };
    Ok(H5adSummary {
        n_obs: m.n_rows,
        n_vars: m.n_cols,
        x_encoding: m.kind.encoding().to_string(),
        x_dtype: hdf5::dtype_name(m.values.dtype()),
        x_nnz: m.nnz,
        obs_columns,
        layers: f.layer_names()?,
    })
}

/// Stream `X` (or a layer) as consecutive CSR chunks of at most `chunk_rows` rows, calling
/// `f(first_row, chunk)` for each, in order, without ever holding the whole matrix; see
/// [`H5adReader::for_each_row_chunk`].
pub fn for_each_row_chunk(
    path: &Path,
    opts: &H5adOptions,
    chunk_rows: usize,
    f: impl FnMut(usize, CsrMatrix) -> Result<()>,
) -> Result<()> {
    H5adReader::open(path, opts)?.for_each_row_chunk(chunk_rows, f)
}

/// The gene names: `var`'s index (the dataset named by its `_index` attribute).
pub fn read_var_names(path: &Path) -> Result<Vec<String>> {
    H5ad::open(path)?.read_var_names()
}

/// The cell names (`obs`'s index) and every `obs` column, in the file's `column-order`.
///
/// Columns: categorical (codes of any integer type, categories strings or numbers; -1 is missing),
/// strings, integers, floats and booleans map to the [`ObsColumn`] of the same kind. Nullable
/// columns: `nullable-integer` becomes `Integers`, or `Floats` with NaN for missing values when
/// there are some; `nullable-boolean` becomes `Bools`, or a `Categorical` over False/True with
/// code -1 for missing values; `nullable-string-array` becomes `Strings`, or a `Categorical` over
/// the sorted values with code -1 for missing values. A column of another kind (2-D arrays,
/// nested dataframes, ...) is skipped with a warning on stderr.
pub fn read_obs(path: &Path) -> Result<ObsTable> {
    H5ad::open(path)?.read_obs()
}

/// Whether the HDF5 file at `path` is laid out as an AnnData object: an `anndata` encoding on the
/// root, or any of `X`, `obs`, `var` at the top. None when it cannot be opened as HDF5 (the reader
/// says why).
pub fn is_anndata(path: &Path) -> Option<bool> {
    let root = hdf5::open_file(path).ok()?.root_group().ok()?;
    let encoded = root
        .attributes()
        .is_ok_and(|a| attr_string(&a, "encoding-type").as_deref() == Some("anndata"));
    Some(
        encoded
            || root.member_names().is_ok_and(|(g, d)| {
                g.iter()
                    .chain(&d)
                    .any(|n| n == "X" || n == "obs" || n == "var")
            }),
    )
}

/// An `.h5ad` opened for one matrix (`X` or a layer), found and checked against the obs and var
/// indexes: its sizes are known, its values read on demand. The input opener keeps one.
pub struct H5adReader {
    file: H5ad,
    matrix: Matrix,
}

impl H5adReader {
    /// Open the file and find its matrix (`X`, or `layers/<layer>`); check its encoding, types and
    /// sizes. Reads no values but the `shape` attribute.
    pub fn open(path: &Path, opts: &H5adOptions) -> Result<H5adReader> {
        let file = H5ad::open(path)?;
        let matrix = file.open_matrix(opts)?;
        Ok(H5adReader { file, matrix })
    }

    /// The matrix within the file: `X` or `layers/<name>`.
    pub fn field(&self) -> &str {
        &self.matrix.field
    }
    pub fn n_rows(&self) -> usize {
        self.matrix.n_rows
    }
    pub fn n_cols(&self) -> usize {
        self.matrix.n_cols
    }
    /// Stored values (None for a dense matrix).
    pub fn nnz(&self) -> Option<u64> {
        self.matrix.nnz
    }
    /// How the matrix is stored: "csr_matrix", "csc_matrix" or "array".
    pub fn encoding(&self) -> &'static str {
        self.matrix.kind.encoding()
    }

    /// The gene names; see [`read_var_names`].
    pub fn var_names(&self) -> Result<Vec<String>> {
        self.file.read_var_names()
    }

    /// The cell names and obs columns; see [`read_obs`].
    pub fn obs(&self) -> Result<ObsTable> {
        self.file.read_obs()
    }

    /// Stream the matrix as consecutive CSR chunks of at most `chunk_rows` rows, calling
    /// `f(first_row, chunk)` for each, in order, without ever holding the whole matrix.
    ///
    /// Chunks keep the stored values as they are (explicit zeros of a sparse matrix included);
    /// within a row, columns come out strictly increasing (unsorted rows are sorted, duplicates
    /// summed, as scipy does). The values are not checked here: run [`CountChecks`] on the chunks
    /// if they should be.
    ///
    /// Memory and cost, with `n` cells, `g` genes and `nnz` stored values:
    /// - CSR: `indptr` (8 bytes per cell) plus one chunk. One read of the matrix.
    /// - dense: one block of `chunk_rows x g` stored values plus its CSR. One read.
    /// - CSC: `indptr` (8 bytes per gene), a row count per cell (8 bytes per cell), one chunk, and
    ///   a read buffer of 2^20 entries. Rows of a CSC matrix are spread over every column, so each
    ///   chunk of rows costs a full pass over `indices` and `data`, plus one pass over `indices` to
    ///   count the values of each row: `ceil(n / chunk_rows) + 1` passes in all. Pick `chunk_rows`
    ///   as large as memory allows (or convert the file to CSR: `adata.X = adata.X.tocsr()`).
    pub fn for_each_row_chunk(
        &self,
        chunk_rows: usize,
        mut f: impl FnMut(usize, CsrMatrix) -> Result<()>,
    ) -> Result<()> {
        if chunk_rows == 0 {
            return Err(Error::Config(
                "for_each_row_chunk: chunk_rows must be at least 1".into(),
            ));
        }
        let plan = Plan {
            max_rows: chunk_rows,
            max_entries: u64::MAX,
        };
        self.file.stream(&self.matrix, plan, &mut f)
    }

    /// The whole matrix in memory, every chunk through [`CountChecks`] (a negative, NaN or
    /// infinite value is an error); the non-integer values found come back for the caller to warn.
    pub fn read_counts(&self) -> Result<(CsrMatrix, CountSummary)> {
        let m = &self.matrix;
        // Chunking for a whole read: bounded decode buffers for CSR and dense; one pass for CSC
        // (the whole matrix is kept anyway, and every extra pass re-reads all of it).
        let max_entries = match m.kind {
            Kind::Csc { .. } => u64::MAX,
            Kind::Csr { .. } | Kind::Dense => WHOLE_READ_ENTRIES,
        };
        let plan = Plan {
            max_rows: usize::MAX,
            max_entries,
        };
        let source = self.file.path.display().to_string();
        // The matrix in memory: 8 bytes per stored value (index and value) and per row.
        let bytes = m
            .nnz
            .unwrap_or(0)
            .saturating_add(m.n_rows as u64)
            .saturating_mul(8);
        crate::limits::ensure_memory(bytes, || {
            format!("{source}: reading {} into memory", m.field)
        })?;
        let mut checks = CountChecks::new(&source, &m.field);
        let mut out: Option<CsrMatrix> = None;
        self.file.stream(m, plan, &mut |first_row, mut chunk| {
            checks.check_chunk(first_row, &chunk)?;
            match out.as_mut() {
                None => {
                    // The first chunk becomes the whole matrix: room for the rest, once.
                    if let Some(nnz) = m.nnz {
                        let extra = (nnz as usize).saturating_sub(chunk.data.len());
                        chunk.indices.reserve_exact(extra);
                        chunk.data.reserve_exact(extra);
                    }
                    chunk
                        .indptr
                        .reserve_exact(m.n_rows + 1 - chunk.indptr.len().min(m.n_rows + 1));
                    out = Some(chunk);
                }
                Some(acc) => acc.append_rows(&chunk),
            }
            Ok(())
        })?;
        let counts = out.unwrap_or_else(|| CsrMatrix::with_cols(m.n_cols));
        Ok((counts, checks.finish()?))
    }
}

// ------------------------------------------------------------------------------------------------
// The file

/// Entries decoded per read while streaming a whole matrix (4M entries: 32 MiB of indices + data).
const WHOLE_READ_ENTRIES: u64 = 1 << 22;

fn matrix_field(opts: &H5adOptions) -> String {
    match &opts.layer {
        Some(l) => format!("layers/{l}"),
        None => "X".to_string(),
    }
}

/// An open `.h5ad`, with the helpers that turn `hdf5-reader`'s errors into ours (naming the file
/// and the field).
struct H5ad {
    h5: Hdf5File,
    path: PathBuf,
}

impl H5ad {
    fn open(path: &Path) -> Result<Self> {
        Ok(H5ad {
            h5: hdf5::open_file(path)?,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(&self.path, msg)
    }

    /// Map an `hdf5-reader` error on `field` to ours.
    fn h5err<'a>(&'a self, field: &'a str) -> impl Fn(H5Error) -> Error + 'a {
        move |e| self.err(format!("{field}: {e}"))
    }

    fn root_group(&self) -> Result<Group> {
        self.h5.root_group().map_err(self.h5err("/"))
    }

    fn attrs(&self, g: &Group, field: &str) -> Result<Vec<Attribute>> {
        g.attributes().map_err(self.h5err(field))
    }

    /// (child groups, child datasets) of `g`.
    fn members(&self, g: &Group, field: &str) -> Result<(Vec<String>, Vec<String>)> {
        g.member_names().map_err(self.h5err(field))
    }

    /// The child group `name` of `g` when there is one (`field` names the child in messages).
    fn child_group(&self, g: &Group, name: &str, field: &str) -> Result<Option<Group>> {
        let (groups, _) = self.members(g, field)?;
        if !groups.iter().any(|n| n == name) {
            return Ok(None);
        }
        g.group(name).map(Some).map_err(self.h5err(field))
    }

    fn dataset(&self, g: &Group, name: &str, field: &str) -> Result<H5Dataset> {
        g.dataset(name).map_err(|e| match e {
            H5Error::DatasetNotFound(_) => self.err(format!("no '{field}' in file")),
            e => self.err(format!("{field}: {e}")),
        })
    }

    /// A numeric dataset, for the shared decoder.
    fn num<'a>(&'a self, field: &'a str, ds: &'a H5Dataset) -> Result<hdf5::NumField<'a>> {
        hdf5::NumField::new(&self.path, field, ds)
    }

    fn layer_names(&self) -> Result<Vec<String>> {
        let root = self.root_group()?;
        let Some(layers) = self.child_group(&root, "layers", "layers")? else {
            return Ok(Vec::new());
        };
        let (mut g, d) = self.members(&layers, "layers")?;
        g.extend(d);
        g.sort();
        Ok(g)
    }
}

/// A string attribute, when `name` is one.
fn attr_string(attrs: &[Attribute], name: &str) -> Option<String> {
    let a = attrs.iter().find(|a| a.name == name)?;
    if !hdf5::is_string_type(&a.datatype) {
        return None;
    }
    a.read_string().ok()
}
