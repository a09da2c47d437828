//! AnnData `.h5ad` reader on the pure-Rust `hdf5-reader` (no C HDF5).
//!
//! What is read: the count matrix `X` (or `layers/<name>`) as CSR f32, the gene names
//! (`var`'s index), the cell names (`obs`'s index) and every `obs` column. Only the anndata 0.8+
//! on-disk encoding is supported (the `encoding-type` attributes; anndata has written it since
//! 2022); files from older anndata are refused with a message saying so.
//!
//! Matrix encodings:
//! - `csr_matrix`: a group with `data`, `indices`, `indptr` and a `shape` attribute. Read a chunk of
//!   rows at a time: `indptr` whole (8 bytes per cell), then the slices of `indices` / `data` that
//!   hold the chunk's rows.
//! - `csc_matrix`: the same arrays by column. Rows cannot be sliced out of it, so it is streamed in
//!   passes over the columns; see [`for_each_row_chunk`] for the memory bound and the cost.
//! - `array`: a dense 2-D dataset, read a block of rows at a time and sparsified block by block.
//!
//! Value types are not converted by `hdf5-reader`, so every numeric read dispatches on the stored
//! type: data may be any of int8/16/32/64, uint8/16/32/64, float32/64 (converted to f32), indices
//! and indptr any integer type. Compression is whatever `hdf5-reader` decodes (gzip/deflate,
//! shuffle, fletcher32, lz4, ...).
//!
//! Every error names the file and the field (`X/indptr`, `obs/cell_type/codes`, ...).

use std::path::{Path, PathBuf};

use hdf5_reader::group::Group;
use hdf5_reader::{Attribute, Dataset as H5Dataset, Datatype, Hdf5File, SliceInfo, SliceInfoElem};

use super::csr::CsrMatrix;
use super::validate::{CountChecks, CountSummary};
use super::{Dataset, ObsColumn};
use crate::error::{Error, Result};

/// Call the generic `f::<S, ..>(args)` with `S` the Rust type of a [`NumKind`].
macro_rules! dispatch {
    ($kind:expr, $f:ident :: <_, $t:ty> ( $($arg:expr),* )) => {
        match $kind {
            NumKind::I8 => $f::<i8, $t>($($arg),*),
            NumKind::I16 => $f::<i16, $t>($($arg),*),
            NumKind::I32 => $f::<i32, $t>($($arg),*),
            NumKind::I64 => $f::<i64, $t>($($arg),*),
            NumKind::U8 => $f::<u8, $t>($($arg),*),
            NumKind::U16 => $f::<u16, $t>($($arg),*),
            NumKind::U32 => $f::<u32, $t>($($arg),*),
            NumKind::U64 => $f::<u64, $t>($($arg),*),
            NumKind::F32 => $f::<f32, $t>($($arg),*),
            NumKind::F64 => $f::<f64, $t>($($arg),*),
        }
    };
}

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
    if let Some(w) = summary.warning(&ds.source, &matrix_field(opts)) {
        eprintln!("warning: {w}");
    }
    Ok(ds)
}

/// [`read_h5ad`], returning what the value checks found (non-integer values) instead of printing it.
pub fn read_h5ad_with_summary(path: &Path, opts: &H5adOptions) -> Result<(Dataset, CountSummary)> {
    let f = H5ad::open(path)?;
    let field = matrix_field(opts);
    let m = f.open_matrix(opts)?;
    let gene_names = f.read_var_names()?;
    let (cell_names, obs) = f.read_obs()?;
    // (open_matrix checked the matrix's shape against the obs and var indexes.)
    // Chunking for a whole read: bounded decode buffers for CSR and dense; one pass for CSC (the
    // whole matrix is kept anyway, and every extra pass re-reads all of it).
    let max_entries = match m.kind {
        Kind::Csc { .. } => u64::MAX,
        Kind::Csr { .. } | Kind::Dense => WHOLE_READ_ENTRIES,
    };
    let plan = Plan {
        max_rows: usize::MAX,
        max_entries,
    };
    let source = path.display().to_string();
    let mut checks = CountChecks::new(&source, &field);
    let mut out: Option<CsrMatrix> = None;
    f.stream(&m, plan, &mut |first_row, mut chunk| {
        checks.check_chunk(first_row, &chunk)?;
        match out.as_mut() {
            None => {
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
            Some(acc) => append_rows(acc, &chunk),
        }
        Ok(())
    })?;
    let counts = out.unwrap_or_else(|| CsrMatrix::with_cols(m.n_cols));
    let summary = checks.finish()?;
    let ds = Dataset {
        counts: Box::new(counts),
        gene_names,
        cell_names,
        obs,
        source,
    };
    Ok((ds, summary))
}

/// A cheap peek for messages and `info`: sizes, `X`'s encoding, the obs column names and layers.
/// Reads attributes and dataset headers only (no values). A file without `X` is an error.
pub fn h5ad_summary(path: &Path) -> Result<H5adSummary> {
    let f = H5ad::open(path)?;
    let m = f.open_matrix(&H5adOptions::default())?;
    let obs_columns = match f.root_group()?.group("obs") {
        Ok(g) => {
            let attrs = f.attrs(&g, "obs")?;
            column_order(&attrs).unwrap_or_default()
        }
        Err(_) => Vec::new(),
    };
    Ok(H5adSummary {
        n_obs: m.n_rows,
        n_vars: m.n_cols,
        x_encoding: m.kind.encoding().to_string(),
        x_dtype: dtype_name(m.values.dtype()),
        x_nnz: m.nnz,
        obs_columns,
        layers: f.layer_names()?,
    })
}

/// Stream `X` (or a layer) as consecutive CSR chunks of at most `chunk_rows` rows, calling
/// `f(first_row, chunk)` for each, in order, without ever holding the whole matrix.
///
/// Chunks keep the stored values as they are (explicit zeros of a sparse matrix included); within a
/// row, columns come out strictly increasing (unsorted rows are sorted, duplicates summed, as scipy
/// does). The values are not checked here: run [`CountChecks`] on the chunks if they should be.
///
/// Memory and cost, with `n` cells, `g` genes and `nnz` stored values:
/// - CSR: `indptr` (8 bytes per cell) plus one chunk. One read of the matrix.
/// - dense: one block of `chunk_rows x g` stored values plus its CSR. One read.
/// - CSC: `indptr` (8 bytes per gene), a row count per cell (8 bytes per cell), one chunk, and a
///   read buffer of 2^20 entries. Rows of a CSC matrix are spread over every column, so each chunk
///   of rows costs a full pass over `indices` and `data`, plus one pass over `indices` to count the
///   values of each row: `ceil(n / chunk_rows) + 1` passes in all. Pick `chunk_rows` as large as
///   memory allows (or convert the file to CSR: `adata.X = adata.X.tocsr()`).
pub fn for_each_row_chunk(
    path: &Path,
    opts: &H5adOptions,
    chunk_rows: usize,
    mut f: impl FnMut(usize, CsrMatrix) -> Result<()>,
) -> Result<()> {
    if chunk_rows == 0 {
        return Err(Error::Config(
            "for_each_row_chunk: chunk_rows must be at least 1".into(),
        ));
    }
    let file = H5ad::open(path)?;
    let m = file.open_matrix(opts)?;
    file.stream(
        &m,
        Plan {
            max_rows: chunk_rows,
            max_entries: u64::MAX,
        },
        &mut f,
    )
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

// ------------------------------------------------------------------------------------------------
// The file

/// Entries decoded per read while streaming a whole matrix (4M entries: 32 MiB of indices + data).
const WHOLE_READ_ENTRIES: u64 = 1 << 22;
/// Entries per read in the CSC passes.
const CSC_BLOCK: u64 = 1 << 20;

/// `hdf5-reader`'s error type.
type H5Error = hdf5_reader::error::Error;

fn matrix_field(opts: &H5adOptions) -> String {
    match &opts.layer {
        Some(l) => format!("layers/{l}"),
        None => "X".to_string(),
    }
}

struct H5ad {
    h5: Hdf5File,
    path: PathBuf,
}

/// How a matrix is stored.
enum Kind {
    /// `indptr` runs over rows for CSR, over columns for CSC.
    Csr {
        indices: H5Dataset,
        indptr: H5Dataset,
    },
    Csc {
        indices: H5Dataset,
        indptr: H5Dataset,
    },
    Dense,
}

impl Kind {
    fn encoding(&self) -> &'static str {
        match self {
            Kind::Csr { .. } => "csr_matrix",
            Kind::Csc { .. } => "csc_matrix",
            Kind::Dense => "array",
        }
    }
}

/// An opened matrix: its arrays, checked for types and sizes.
struct Matrix {
    /// `X` or `layers/<name>`, for messages.
    field: String,
    kind: Kind,
    /// `data` for a sparse matrix, the dataset itself when dense.
    values: H5Dataset,
    n_rows: usize,
    n_cols: usize,
    nnz: Option<u64>,
}

/// Limits on one chunk: rows, and stored entries (values of a sparse chunk, cells of a dense block).
#[derive(Clone, Copy)]
struct Plan {
    max_rows: usize,
    max_entries: u64,
}

impl H5ad {
    fn open(path: &Path) -> Result<Self> {
        // The OS error for a missing or unreadable file, before HDF5 gets a say.
        std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        match Hdf5File::open(path) {
            Ok(h5) => Ok(H5ad {
                h5,
                path: path.to_path_buf(),
            }),
            Err(e) => {
                if has_hdf5_signature(path) {
                    Err(Error::format(path, format!("cannot be read as HDF5: {e}")))
                } else {
                    Err(Error::format(
                        path,
                        "is not an HDF5 file (no HDF5 signature); expected an AnnData .h5ad file",
                    ))
                }
            }
        }
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

    fn dataset(&self, g: &Group, name: &str, field: &str) -> Result<H5Dataset> {
        g.dataset(name).map_err(|e| match e {
            H5Error::DatasetNotFound(_) => self.err(format!("no '{field}' in file")),
            e => self.err(format!("{field}: {e}")),
        })
    }

    fn layer_names(&self) -> Result<Vec<String>> {
        let root = self.root_group()?;
        let (groups, _) = self.members(&root, "/")?;
        if !groups.iter().any(|g| g == "layers") {
            return Ok(Vec::new());
        }
        let layers = root.group("layers").map_err(self.h5err("layers"))?;
        let (mut g, d) = self.members(&layers, "layers")?;
        g.extend(d);
        g.sort();
        Ok(g)
    }

    /// Find `X` or the layer, check its encoding, types and sizes.
    fn open_matrix(&self, opts: &H5adOptions) -> Result<Matrix> {
        let root = self.root_group()?;
        let (parent, name, field) = match &opts.layer {
            None => {
                let (g, d) = self.members(&root, "/")?;
                if !g.iter().chain(&d).any(|n| n == "X") {
                    return Err(self.err(
                        "no 'X' in file (the AnnData object was saved without a count matrix)",
                    ));
                }
                (root, "X".to_string(), "X".to_string())
            }
            Some(layer) => {
                let layers = self.layer_names()?;
                if !layers.iter().any(|l| l == layer) {
                    let there = if layers.is_empty() {
                        "the file has no layers".to_string()
                    } else {
                        format!("layers: {}", layers.join(", "))
                    };
                    return Err(self.err(format!("no layer '{layer}' in file ({there})")));
                }
                let g = root.group("layers").map_err(self.h5err("layers"))?;
                (g, layer.clone(), format!("layers/{layer}"))
            }
        };
        let (groups, _) = self.members(&parent, &field)?;
        let m = if groups.contains(&name) {
            let g = parent.group(&name).map_err(self.h5err(&field))?;
            self.open_sparse(&g, field)?
        } else {
            let ds = self.dataset(&parent, &name, &field)?;
            self.open_dense(ds, field)?
        };
        // The shape must agree with the cell and gene names (this also bounds what a corrupt
        // `shape` attribute could make the CSC reader allocate).
        for (frame, n, what) in [
            ("obs", m.n_rows, "rows (cells)"),
            ("var", m.n_cols, "columns (genes)"),
        ] {
            if let Some((index_field, len)) = self.index_len(frame)? {
                if len != n as u64 {
                    return Err(self.err(format!(
                        "{} has {n} {what} but {index_field} has {len} names",
                        m.field
                    )));
                }
            }
        }
        Ok(m)
    }

    /// The path and length of a dataframe's index (from the dataset's shape; no values read), when
    /// the dataframe and its index exist.
    fn index_len(&self, frame: &str) -> Result<Option<(String, u64)>> {
        let root = self.root_group()?;
        let (groups, _) = self.members(&root, "/")?;
        if !groups.iter().any(|n| n == frame) {
            return Ok(None);
        }
        let g = root.group(frame).map_err(self.h5err(frame))?;
        let attrs = self.attrs(&g, frame)?;
        let index = attr_string(&attrs, "_index").unwrap_or_else(|| "_index".to_string());
        Ok(match g.dataset(&index) {
            Ok(ds) if ds.ndim() == 1 => Some((format!("{frame}/{index}"), ds.shape()[0])),
            _ => None,
        })
    }

    fn open_sparse(&self, g: &Group, field: String) -> Result<Matrix> {
        let attrs = self.attrs(g, &field)?;
        let (encoding, shape) = match attr_string(&attrs, "encoding-type") {
            Some(enc) => (enc, attr_ints(&attrs, "shape")),
            None => match attr_string(&attrs, "h5sparse_format") {
                // Written by anndata < 0.8 (the h5sparse layout), which is the same arrays.
                Some(fmt) => (format!("{fmt}_matrix"), attr_ints(&attrs, "h5sparse_shape")),
                None => {
                    return Err(self.err(format!(
                        "{field} is a group with no 'encoding-type' attribute: not an AnnData \
                         0.8+ matrix (re-save the file with a recent anndata)"
                    )))
                }
            },
        };
        let is_csr = match encoding.as_str() {
            "csr_matrix" => true,
            "csc_matrix" => false,
            other => {
                return Err(self.err(format!(
                    "{field} has encoding '{other}', which scvi-rs cannot read (it reads \
                     csr_matrix, csc_matrix and dense array)"
                )))
            }
        };
        let shape = shape.ok_or_else(|| {
            self.err(format!(
                "{field} ({encoding}) has no integer 'shape' attribute"
            ))
        })?;
        if shape.len() != 2 || shape.iter().any(|&s| s < 0) {
            return Err(self.err(format!(
                "{field} has shape attribute {shape:?}, expected 2 sizes"
            )));
        }
        let (n_rows, n_cols) = (shape[0] as usize, shape[1] as usize);
        if n_cols > u32::MAX as usize || (!is_csr && n_rows > u32::MAX as usize) {
            return Err(self.err(format!(
                "{field} has shape {n_rows} x {n_cols}: more than 2^32 - 1 genes (or, for CSC, \
                 cells) cannot be indexed"
            )));
        }
        let data = self.dataset(g, "data", &format!("{field}/data"))?;
        let indices = self.dataset(g, "indices", &format!("{field}/indices"))?;
        let indptr = self.dataset(g, "indptr", &format!("{field}/indptr"))?;
        for (ds, name, ints) in [
            (&data, "data", false),
            (&indices, "indices", true),
            (&indptr, "indptr", true),
        ] {
            let f = format!("{field}/{name}");
            let kind = NumKind::of(ds.dtype()).ok_or_else(|| {
                self.err(format!(
                    "{f} has type {}, expected numbers",
                    dtype_name(ds.dtype())
                ))
            })?;
            if ints && kind.is_float() {
                return Err(self.err(format!("{f} has type {}, expected integers", kind.name())));
            }
            if ds.ndim() != 1 {
                return Err(self.err(format!("{f} has shape {:?}, expected 1-D", ds.shape())));
            }
        }
        let nnz = data.shape()[0];
        if indices.shape()[0] != nnz {
            return Err(self.err(format!(
                "{field}/indices has {} entries but {field}/data has {nnz}",
                indices.shape()[0]
            )));
        }
        let major = if is_csr { n_rows } else { n_cols };
        if indptr.shape()[0] != major as u64 + 1 {
            return Err(self.err(format!(
                "{field}/indptr has {} entries, expected {} ({} + 1 for a {n_rows} x {n_cols} {})",
                indptr.shape()[0],
                major + 1,
                if is_csr { "rows" } else { "columns" },
                encoding
            )));
        }
        let kind = if is_csr {
            Kind::Csr { indices, indptr }
        } else {
            Kind::Csc { indices, indptr }
        };
        Ok(Matrix {
            field,
            kind,
            values: data,
            n_rows,
            n_cols,
            nnz: Some(nnz),
        })
    }

    fn open_dense(&self, ds: H5Dataset, field: String) -> Result<Matrix> {
        let attrs = ds.attributes();
        if let Some(enc) = attr_string(&attrs, "encoding-type") {
            if enc != "array" {
                return Err(self.err(format!(
                    "{field} has encoding '{enc}', which scvi-rs cannot read (it reads \
                     csr_matrix, csc_matrix and dense array)"
                )));
            }
        }
        if NumKind::of(ds.dtype()).is_none() {
            return Err(self.err(format!(
                "{field} has type {}, expected numbers",
                dtype_name(ds.dtype())
            )));
        }
        if ds.ndim() != 2 {
            return Err(self.err(format!(
                "{field} is a dense array of shape {:?}, expected 2-D (cells x genes)",
                ds.shape()
            )));
        }
        let (n_rows, n_cols) = (ds.shape()[0] as usize, ds.shape()[1] as usize);
        if n_cols > u32::MAX as usize {
            return Err(self.err(format!("{field} has {n_cols} columns, more than 2^32 - 1")));
        }
        Ok(Matrix {
            field,
            kind: Kind::Dense,
            values: ds,
            n_rows,
            n_cols,
            nnz: None,
        })
    }

    // --------------------------------------------------------------------------------------------
    // Streaming

    fn stream(
        &self,
        m: &Matrix,
        plan: Plan,
        f: &mut dyn FnMut(usize, CsrMatrix) -> Result<()>,
    ) -> Result<()> {
        match &m.kind {
            Kind::Csr { indices, indptr } => self.stream_csr(m, indices, indptr, plan, f),
            Kind::Csc { indices, indptr } => self.stream_csc(m, indices, indptr, plan, f),
            Kind::Dense => self.stream_dense(m, plan, f),
        }
    }

    /// Read a whole `indptr` and check it: starts at 0, never decreases, ends at `nnz`.
    fn read_indptr(&self, m: &Matrix, ds: &H5Dataset) -> Result<Vec<u64>> {
        let field = format!("{}/indptr", m.field);
        let n = ds.shape()[0];
        let ptr = self.read_index_range(ds, &field, 0, n, u64::MAX, "offset")?;
        let nnz = m.nnz.unwrap_or(0);
        if ptr.first() != Some(&0) {
            return Err(self.err(format!("{field} starts at {:?}, expected 0", ptr.first())));
        }
        if let Some(i) = ptr.windows(2).position(|w| w[1] < w[0]) {
            return Err(self.err(format!(
                "{field} decreases at entry {} ({} then {})",
                i + 1,
                ptr[i],
                ptr[i + 1]
            )));
        }
        let last = *ptr.last().unwrap_or(&0);
        if last != nnz {
            return Err(self.err(format!(
                "{field} ends at {last}, but {}/data holds {nnz} values",
                m.field
            )));
        }
        Ok(ptr)
    }

    fn stream_csr(
        &self,
        m: &Matrix,
        indices: &H5Dataset,
        indptr: &H5Dataset,
        plan: Plan,
        f: &mut dyn FnMut(usize, CsrMatrix) -> Result<()>,
    ) -> Result<()> {
        let ptr = self.read_indptr(m, indptr)?;
        let idx_field = format!("{}/indices", m.field);
        let data_field = format!("{}/data", m.field);
        for (r0, r1) in row_chunks(&ptr, plan) {
            let (a, b) = (ptr[r0], ptr[r1]);
            let idx =
                self.read_index_range(indices, &idx_field, a, b, m.n_cols as u64, "column")?;
            let idx: Vec<u32> = idx.into_iter().map(|x| x as u32).collect();
            let val = self.read_f32_range(&m.values, &data_field, a, b)?;
            let local: Vec<u64> = ptr[r0..=r1].iter().map(|&p| p - a).collect();
            let chunk = self.finish_chunk(m, r0, r1 - r0, local, idx, val)?;
            f(r0, chunk)?;
        }
        Ok(())
    }

    fn stream_csc(
        &self,
        m: &Matrix,
        indices: &H5Dataset,
        indptr: &H5Dataset,
        plan: Plan,
        f: &mut dyn FnMut(usize, CsrMatrix) -> Result<()>,
    ) -> Result<()> {
        let colptr = self.read_indptr(m, indptr)?;
        let nnz = m.nnz.unwrap_or(0);
        let idx_field = format!("{}/indices", m.field);
        let data_field = format!("{}/data", m.field);

        // Pass 1: values per row, as CSR row offsets of the whole matrix.
        let mut rowptr = vec![0u64; m.n_rows + 1];
        let mut e0 = 0;
        while e0 < nnz {
            let e1 = (e0 + CSC_BLOCK).min(nnz);
            let rows =
                self.read_index_range(indices, &idx_field, e0, e1, m.n_rows as u64, "row")?;
            for r in rows {
                rowptr[r as usize + 1] += 1;
            }
            e0 = e1;
        }
        for i in 0..m.n_rows {
            rowptr[i + 1] += rowptr[i];
        }

        // One pass over every column per chunk of rows, scattering the chunk's values. Columns are
        // visited in increasing order, so each row's columns come out sorted.
        for (r0, r1) in row_chunks(&rowptr, plan) {
            let base = rowptr[r0];
            let local: Vec<u64> = rowptr[r0..=r1].iter().map(|&p| p - base).collect();
            let len = (rowptr[r1] - base) as usize;
            let mut idx = vec![0u32; len];
            let mut val = vec![0f32; len];
            let mut cursor: Vec<u64> = local[..r1 - r0].to_vec();
            let mut col = 0usize;
            let mut e0 = 0;
            while e0 < nnz && len > 0 {
                let e1 = (e0 + CSC_BLOCK).min(nnz);
                let rows =
                    self.read_index_range(indices, &idx_field, e0, e1, m.n_rows as u64, "row")?;
                let vals = self.read_f32_range(&m.values, &data_field, e0, e1)?;
                for (k, (&r, &v)) in rows.iter().zip(&vals).enumerate() {
                    let e = e0 + k as u64;
                    while colptr[col + 1] <= e {
                        col += 1;
                    }
                    let r = r as usize;
                    if r >= r0 && r < r1 {
                        let p = &mut cursor[r - r0];
                        idx[*p as usize] = col as u32;
                        val[*p as usize] = v;
                        *p += 1;
                    }
                }
                e0 = e1;
            }
            let chunk = self.finish_chunk(m, r0, r1 - r0, local, idx, val)?;
            f(r0, chunk)?;
        }
        Ok(())
    }

    fn stream_dense(
        &self,
        m: &Matrix,
        plan: Plan,
        f: &mut dyn FnMut(usize, CsrMatrix) -> Result<()>,
    ) -> Result<()> {
        let rows_per_block = {
            let by_entries = (plan.max_entries / (m.n_cols.max(1) as u64)).max(1);
            plan.max_rows
                .min(usize::try_from(by_entries).unwrap_or(usize::MAX))
                .max(1)
        };
        let mut r0 = 0;
        while r0 < m.n_rows {
            let r1 = r0.saturating_add(rows_per_block).min(m.n_rows);
            let sel = SliceInfo {
                selections: vec![
                    SliceInfoElem::Slice {
                        start: r0 as u64,
                        end: r1 as u64,
                        step: 1,
                    },
                    SliceInfoElem::Slice {
                        start: 0,
                        end: m.n_cols as u64,
                        step: 1,
                    },
                ],
            };
            let block = self.read_f32_sel(&m.values, &m.field, &sel)?;
            if block.len() != (r1 - r0) * m.n_cols {
                return Err(self.err(format!(
                    "{}: reading rows {r0}..{r1} gave {} values, expected {}",
                    m.field,
                    block.len(),
                    (r1 - r0) * m.n_cols
                )));
            }
            let mut chunk = CsrMatrix::with_cols(m.n_cols);
            if m.n_cols > 0 {
                for row in block.chunks_exact(m.n_cols) {
                    // `push_row` drops zeros; NaN is kept (NaN != 0) for the value checks to see.
                    chunk.push_row(row.iter().enumerate().map(|(j, &v)| (j as u32, v)));
                }
            } else {
                for _ in r0..r1 {
                    chunk.push_row(std::iter::empty());
                }
            }
            f(r0, chunk)?;
            r0 = r1;
        }
        Ok(())
    }

    /// Make a chunk canonical (rows sorted, duplicates summed) and check its structure.
    fn finish_chunk(
        &self,
        m: &Matrix,
        r0: usize,
        n: usize,
        mut indptr: Vec<u64>,
        mut indices: Vec<u32>,
        mut data: Vec<f32>,
    ) -> Result<CsrMatrix> {
        canonicalize(&mut indptr, &mut indices, &mut data);
        CsrMatrix::from_parts(n, m.n_cols, indptr, indices, data).map_err(|e| {
            self.err(format!(
                "{} (rows {r0}..{}; row numbers below count from {r0}): {e}",
                m.field,
                r0 + n
            ))
        })
    }

    // --------------------------------------------------------------------------------------------
    // Typed reads: `hdf5-reader` does not convert types, so dispatch on the stored one.

    fn read_f32_range(&self, ds: &H5Dataset, field: &str, a: u64, b: u64) -> Result<Vec<f32>> {
        if a == b {
            return Ok(Vec::new());
        }
        self.read_f32_sel(ds, field, &range_sel(a, b))
    }

    fn read_f32_sel(&self, ds: &H5Dataset, field: &str, sel: &SliceInfo) -> Result<Vec<f32>> {
        let kind = self.kind(ds, field)?;
        dispatch!(kind, read_conv::<_, f32>(ds, Some(sel))).map_err(self.h5err(field))
    }

    /// Read entries `a..b` of an integer array, each checked to lie in `[0, bound)`; `what` names
    /// an entry in the message ("column", "row", "offset").
    fn read_index_range(
        &self,
        ds: &H5Dataset,
        field: &str,
        a: u64,
        b: u64,
        bound: u64,
        what: &str,
    ) -> Result<Vec<u64>> {
        if a == b {
            return Ok(Vec::new());
        }
        let kind = self.kind(ds, field)?;
        let v: Vec<i128> = dispatch!(kind, read_conv::<_, i128>(ds, Some(&range_sel(a, b))))
            .map_err(self.h5err(field))?;
        let mut out = Vec::with_capacity(v.len());
        for (k, &x) in v.iter().enumerate() {
            if x < 0 || x as u128 >= bound as u128 {
                return Err(self.err(format!(
                    "{field}[{}] = {x} is not a valid {what} index{}",
                    a + k as u64,
                    if bound == u64::MAX {
                        String::new()
                    } else {
                        format!(" (0..{bound})")
                    }
                )));
            }
            out.push(x as u64);
        }
        Ok(out)
    }

    fn kind(&self, ds: &H5Dataset, field: &str) -> Result<NumKind> {
        NumKind::of(ds.dtype()).ok_or_else(|| {
            self.err(format!(
                "{field} has type {}, expected numbers",
                dtype_name(ds.dtype())
            ))
        })
    }

    // --------------------------------------------------------------------------------------------
    // Dataframes

    fn read_var_names(&self) -> Result<Vec<String>> {
        let root = self.root_group()?;
        let (g, _) = self.members(&root, "/")?;
        if !g.iter().any(|n| n == "var") {
            return Err(self.err("no 'var' group in file (gene names)"));
        }
        let var = root.group("var").map_err(self.h5err("var"))?;
        let attrs = self.attrs(&var, "var")?;
        self.check_dataframe(&attrs, "var")?;
        let index = attr_string(&attrs, "_index").unwrap_or_else(|| "_index".to_string());
        self.read_index(&var, &format!("var/{index}"), &index)
    }

    fn read_obs(&self) -> Result<ObsTable> {
        let root = self.root_group()?;
        let (g, _) = self.members(&root, "/")?;
        if !g.iter().any(|n| n == "obs") {
            return Err(self.err("no 'obs' group in file (cell annotations)"));
        }
        let obs = root.group("obs").map_err(self.h5err("obs"))?;
        let attrs = self.attrs(&obs, "obs")?;
        self.check_dataframe(&attrs, "obs")?;
        let index = attr_string(&attrs, "_index").unwrap_or_else(|| "_index".to_string());
        let names = self.read_index(&obs, &format!("obs/{index}"), &index)?;
        let order = column_order(&attrs).ok_or_else(|| {
            self.err("obs: the 'column-order' attribute is missing or not a list of names")
        })?;
        let (groups, datasets) = self.members(&obs, "obs")?;
        let mut columns = Vec::with_capacity(order.len());
        for name in order {
            let field = format!("obs/{name}");
            let col = if groups.contains(&name) {
                let g = obs.group(&name).map_err(self.h5err(&field))?;
                self.read_group_column(&g, &field)?
            } else if datasets.contains(&name) {
                let ds = self.dataset(&obs, &name, &field)?;
                self.read_dataset_column(&ds, &field)?
            } else {
                return Err(self.err(format!(
                    "obs: 'column-order' lists '{name}' but there is no '{field}'"
                )));
            };
            match col {
                Ok(c) if c.len() == names.len() => columns.push((name, c)),
                Ok(c) => {
                    return Err(self.err(format!(
                        "{field} has {} values but obs has {} cells",
                        c.len(),
                        names.len()
                    )))
                }
                Err(why) => eprintln!(
                    "warning: {}: {field} skipped: {why}; scvi-rs reads categorical, string, \
                     numeric and boolean columns",
                    self.path.display()
                ),
            }
        }
        Ok((names, columns))
    }

    fn check_dataframe(&self, attrs: &[Attribute], field: &str) -> Result<()> {
        match attr_string(attrs, "encoding-type").as_deref() {
            Some("dataframe") => Ok(()),
            Some(other) => Err(self.err(format!(
                "{field} has encoding '{other}', expected 'dataframe'"
            ))),
            None => Err(self.err(format!(
                "{field} has no 'encoding-type' attribute: written by anndata older than 0.8, \
                 which scvi-rs does not read (re-save the file with a recent anndata)"
            ))),
        }
    }

    /// A dataframe index: strings (numbers are turned into strings).
    fn read_index(&self, g: &Group, field: &str, name: &str) -> Result<Vec<String>> {
        let ds = self.dataset(g, name, field)?;
        match self.read_dataset_column(&ds, field)? {
            Ok(ObsColumn::Strings(v)) => Ok(v),
            Ok(ObsColumn::Integers(v)) => Ok(v.iter().map(|x| x.to_string()).collect()),
            Ok(ObsColumn::Floats(v)) => Ok(v.iter().map(|&x| py_float(x)).collect()),
            Ok(_) => Err(self.err(format!("{field}: an index of this type is not supported"))),
            Err(why) => Err(self.err(format!("{field}: {why}"))),
        }
    }

    /// A column stored as a dataset. `Ok(Err(why))` is a column of a kind that is not supported.
    fn read_dataset_column(
        &self,
        ds: &H5Dataset,
        field: &str,
    ) -> Result<std::result::Result<ObsColumn, String>> {
        let attrs = ds.attributes();
        let enc = attr_string(&attrs, "encoding-type");
        if ds.ndim() != 1 {
            return Ok(Err(format!("a {}-D array", ds.ndim())));
        }
        match enc.as_deref() {
            None | Some("array") | Some("string-array") => {}
            Some(other) => return Ok(Err(format!("encoding '{other}'"))),
        }
        if is_string_type(ds.dtype()) {
            let v = ds.read_strings().map_err(self.h5err(field))?;
            return Ok(Ok(ObsColumn::Strings(v)));
        }
        if let Some(kind) = NumKind::of(ds.dtype()) {
            return Ok(Ok(if kind.is_float() {
                ObsColumn::Floats(self.read_all::<f64>(ds, field, kind)?)
            } else {
                let v: Vec<i128> = self.read_all(ds, field, kind)?;
                match v
                    .iter()
                    .map(|&x| i64::try_from(x))
                    .collect::<std::result::Result<_, _>>()
                {
                    Ok(ints) => ObsColumn::Integers(ints),
                    Err(_) => ObsColumn::Floats(v.iter().map(|&x| x as f64).collect()),
                }
            }));
        }
        if is_bool_type(ds.dtype()) {
            let raw = ds.read_raw_bytes().map_err(self.h5err(field))?;
            return Ok(Ok(ObsColumn::Bools(raw.iter().map(|&b| b != 0).collect())));
        }
        Ok(Err(format!("values of type {}", dtype_name(ds.dtype()))))
    }

    /// A column stored as a group: categorical, nullable integer / boolean / string.
    fn read_group_column(
        &self,
        g: &Group,
        field: &str,
    ) -> Result<std::result::Result<ObsColumn, String>> {
        let attrs = self.attrs(g, field)?;
        let enc = attr_string(&attrs, "encoding-type").unwrap_or_default();
        let sub = |name: &str| -> Result<ObsColumn> {
            let f = format!("{field}/{name}");
            let ds = self.dataset(g, name, &f)?;
            self.read_dataset_column(&ds, &f)?
                .map_err(|why| self.err(format!("{f}: {why}")))
        };
        match enc.as_str() {
            "categorical" => {
                let codes = match sub("codes")? {
                    ObsColumn::Integers(v) => v,
                    _ => return Err(self.err(format!("{field}/codes: expected integers"))),
                };
                let categories = match sub("categories")? {
                    ObsColumn::Strings(v) => v,
                    ObsColumn::Integers(v) => v.iter().map(|x| x.to_string()).collect(),
                    ObsColumn::Floats(v) => v.iter().map(|&x| py_float(x)).collect(),
                    ObsColumn::Bools(v) => v
                        .iter()
                        .map(|&b| if b { "True" } else { "False" }.to_string())
                        .collect(),
                    ObsColumn::Categorical { .. } => {
                        return Ok(Err("categories of an unexpected kind".into()))
                    }
                };
                let mut out = Vec::with_capacity(codes.len());
                for (i, &c) in codes.iter().enumerate() {
                    if c < -1 || c >= categories.len() as i64 {
                        return Err(self.err(format!(
                            "{field}/codes[{i}] = {c}, but there are {} categories",
                            categories.len()
                        )));
                    }
                    out.push(c as i32);
                }
                Ok(Ok(ObsColumn::Categorical {
                    codes: out,
                    categories,
                }))
            }
            "nullable-integer" | "nullable-boolean" | "nullable-string-array" => {
                let values = sub("values")?;
                let mask = match sub("mask")? {
                    ObsColumn::Bools(m) => m,
                    _ => return Err(self.err(format!("{field}/mask: expected booleans"))),
                };
                if mask.len() != values.len() {
                    return Err(self.err(format!(
                        "{field}: mask has {} entries but values has {}",
                        mask.len(),
                        values.len()
                    )));
                }
                let missing = mask.iter().any(|&m| m);
                Ok(Ok(match (values, missing) {
                    (v, false) => v,
                    (ObsColumn::Integers(v), true) => ObsColumn::Floats(
                        v.iter()
                            .zip(&mask)
                            .map(|(&x, &m)| if m { f64::NAN } else { x as f64 })
                            .collect(),
                    ),
                    (ObsColumn::Floats(v), true) => ObsColumn::Floats(
                        v.iter()
                            .zip(&mask)
                            .map(|(&x, &m)| if m { f64::NAN } else { x })
                            .collect(),
                    ),
                    (ObsColumn::Bools(v), true) => ObsColumn::Categorical {
                        codes: v
                            .iter()
                            .zip(&mask)
                            .map(|(&b, &m)| if m { -1 } else { b as i32 })
                            .collect(),
                        categories: vec!["False".into(), "True".into()],
                    },
                    (ObsColumn::Strings(v), true) => {
                        let mut cats: Vec<&String> = v
                            .iter()
                            .zip(&mask)
                            .filter(|(_, &m)| !m)
                            .map(|(s, _)| s)
                            .collect();
                        cats.sort();
                        cats.dedup();
                        let codes = v
                            .iter()
                            .zip(&mask)
                            .map(|(s, &m)| {
                                if m {
                                    -1
                                } else {
                                    cats.binary_search(&s).map(|i| i as i32).unwrap_or(-1)
                                }
                            })
                            .collect();
                        let categories = cats.into_iter().cloned().collect();
                        ObsColumn::Categorical { codes, categories }
                    }
                    (ObsColumn::Categorical { .. }, true) => {
                        return Ok(Err("nullable values of an unexpected kind".into()))
                    }
                }))
            }
            "" => Ok(Err("a group with no encoding-type".into())),
            other => Ok(Err(format!("encoding '{other}'"))),
        }
    }

    fn read_all<T: Conv>(&self, ds: &H5Dataset, field: &str, kind: NumKind) -> Result<Vec<T>> {
        dispatch!(kind, read_conv::<_, T>(ds, None)).map_err(self.h5err(field))
    }
}

// ------------------------------------------------------------------------------------------------
// Helpers

/// Look for the HDF5 signature where the format allows it (offset 0, 512, 1024, 2048, ...).
fn has_hdf5_signature(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    const SIG: [u8; 8] = [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut at = 0u64;
    while at + 8 <= len {
        let mut buf = [0u8; 8];
        if file.seek(SeekFrom::Start(at)).is_err() || file.read_exact(&mut buf).is_err() {
            return false;
        }
        if buf == SIG {
            return true;
        }
        at = if at == 0 { 512 } else { at * 2 };
    }
    false
}

fn range_sel(a: u64, b: u64) -> SliceInfo {
    SliceInfo {
        selections: vec![SliceInfoElem::Slice {
            start: a,
            end: b,
            step: 1,
        }],
    }
}

/// Split rows `0..n` (with CSR offsets `ptr`, `n + 1` of them) into consecutive chunks of at most
/// `plan.max_rows` rows and, where a single row allows it, at most `plan.max_entries` entries.
fn row_chunks(ptr: &[u64], plan: Plan) -> Vec<(usize, usize)> {
    let n = ptr.len().saturating_sub(1);
    let mut out = Vec::new();
    let mut r0 = 0;
    while r0 < n {
        let mut r1 = r0 + 1;
        while r1 < n && r1 - r0 < plan.max_rows && ptr[r1 + 1] - ptr[r0] <= plan.max_entries {
            r1 += 1;
        }
        out.push((r0, r1));
        r0 = r1;
    }
    out
}

/// Sort each row's columns and sum duplicates, as scipy's `sum_duplicates` does; a no-op (one
/// pass) for the canonical rows that anndata nearly always stores.
fn canonicalize(indptr: &mut [u64], indices: &mut Vec<u32>, data: &mut Vec<f32>) {
    let n = indptr.len().saturating_sub(1);
    let sorted = (0..n).all(|i| {
        indices[indptr[i] as usize..indptr[i + 1] as usize]
            .windows(2)
            .all(|w| w[0] < w[1])
    });
    if sorted {
        return;
    }
    let mut new_idx = Vec::with_capacity(indices.len());
    let mut new_val = Vec::with_capacity(data.len());
    let mut pairs: Vec<(u32, f32)> = Vec::new();
    let mut start = indptr.first().copied().unwrap_or(0) as usize;
    for i in 0..n {
        let end = indptr[i + 1] as usize;
        pairs.clear();
        pairs.extend(
            indices[start..end]
                .iter()
                .copied()
                .zip(data[start..end].iter().copied()),
        );
        pairs.sort_by_key(|p| p.0);
        for &(j, v) in &pairs {
            if new_idx.last() == Some(&j) && new_idx.len() > indptr[i] as usize {
                *new_val.last_mut().unwrap() += v;
            } else {
                new_idx.push(j);
                new_val.push(v);
            }
        }
        start = end;
        indptr[i + 1] = new_idx.len() as u64;
    }
    *indices = new_idx;
    *data = new_val;
}

/// Append the rows of `chunk` to `acc` (same number of columns).
fn append_rows(acc: &mut CsrMatrix, chunk: &CsrMatrix) {
    let base = acc.indices.len() as u64;
    acc.indices.extend_from_slice(&chunk.indices);
    acc.data.extend_from_slice(&chunk.data);
    acc.indptr
        .extend(chunk.indptr[1..].iter().map(|&p| p + base));
    acc.n_rows += chunk.n_rows;
}

/// Python's `str(float)` for the common cases (`1.0`, not `1`), so numeric categories read as
/// pandas prints them.
fn py_float(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x:.1}")
    } else if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{x}")
    }
}

fn attr<'a>(attrs: &'a [Attribute], name: &str) -> Option<&'a Attribute> {
    attrs.iter().find(|a| a.name == name)
}

fn attr_string(attrs: &[Attribute], name: &str) -> Option<String> {
    let a = attr(attrs, name)?;
    if !is_string_type(&a.datatype) {
        return None;
    }
    a.read_string().ok()
}

/// A list-of-names attribute such as `column-order`; an empty numeric array (what h5py writes for
/// an empty list) is an empty list.
fn column_order(attrs: &[Attribute]) -> Option<Vec<String>> {
    let a = attr(attrs, "column-order")?;
    if is_string_type(&a.datatype) {
        if a.shape.is_empty() {
            return a.read_string().ok().map(|s| vec![s]);
        }
        return a.read_strings().ok();
    }
    if a.num_elements().ok()? == 0 {
        return Some(Vec::new());
    }
    None
}

fn attr_ints(attrs: &[Attribute], name: &str) -> Option<Vec<i64>> {
    let a = attr(attrs, name)?;
    let v: Vec<i128> = match NumKind::of(&a.datatype)? {
        NumKind::I8 => a
            .read_1d::<i8>()
            .ok()?
            .into_iter()
            .map(i128::from)
            .collect(),
        NumKind::I16 => a
            .read_1d::<i16>()
            .ok()?
            .into_iter()
            .map(i128::from)
            .collect(),
        NumKind::I32 => a
            .read_1d::<i32>()
            .ok()?
            .into_iter()
            .map(i128::from)
            .collect(),
        NumKind::I64 => a
            .read_1d::<i64>()
            .ok()?
            .into_iter()
            .map(i128::from)
            .collect(),
        NumKind::U8 => a
            .read_1d::<u8>()
            .ok()?
            .into_iter()
            .map(i128::from)
            .collect(),
        NumKind::U16 => a
            .read_1d::<u16>()
            .ok()?
            .into_iter()
            .map(i128::from)
            .collect(),
        NumKind::U32 => a
            .read_1d::<u32>()
            .ok()?
            .into_iter()
            .map(i128::from)
            .collect(),
        NumKind::U64 => a
            .read_1d::<u64>()
            .ok()?
            .into_iter()
            .map(i128::from)
            .collect(),
        NumKind::F32 | NumKind::F64 => return None,
    };
    v.into_iter().map(|x| i64::try_from(x).ok()).collect()
}

fn is_string_type(dt: &Datatype) -> bool {
    match dt {
        Datatype::String { .. } => true,
        Datatype::VarLen { kind, base, .. } => {
            *kind == hdf5_reader::VarLenKind::String && base.is_vlen_string_base()
        }
        _ => false,
    }
}

/// numpy's bool, as h5py stores it: an enum over a 1-byte integer (FALSE = 0, TRUE = 1).
fn is_bool_type(dt: &Datatype) -> bool {
    match dt {
        Datatype::Enum { base, .. } => matches!(**base, Datatype::FixedPoint { size: 1, .. }),
        Datatype::Bitfield { size: 1, .. } => true,
        _ => false,
    }
}

fn dtype_name(dt: &Datatype) -> String {
    if let Some(k) = NumKind::of(dt) {
        return k.name().to_string();
    }
    match dt {
        _ if is_string_type(dt) => "string".into(),
        _ if is_bool_type(dt) => "bool".into(),
        Datatype::Compound { .. } => "compound".into(),
        Datatype::Enum { .. } => "enum".into(),
        Datatype::Array { .. } => "array".into(),
        Datatype::Opaque { .. } => "opaque".into(),
        Datatype::Reference { .. } => "reference".into(),
        Datatype::VarLen { .. } => "variable-length sequence".into(),
        other => format!("{other:?}"),
    }
}

/// The numeric types a dataset may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumKind {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
}

impl NumKind {
    fn of(dt: &Datatype) -> Option<NumKind> {
        Some(match *dt {
            Datatype::FixedPoint {
                size: 1,
                signed: true,
                ..
            } => NumKind::I8,
            Datatype::FixedPoint {
                size: 2,
                signed: true,
                ..
            } => NumKind::I16,
            Datatype::FixedPoint {
                size: 4,
                signed: true,
                ..
            } => NumKind::I32,
            Datatype::FixedPoint {
                size: 8,
                signed: true,
                ..
            } => NumKind::I64,
            Datatype::FixedPoint {
                size: 1,
                signed: false,
                ..
            } => NumKind::U8,
            Datatype::FixedPoint {
                size: 2,
                signed: false,
                ..
            } => NumKind::U16,
            Datatype::FixedPoint {
                size: 4,
                signed: false,
                ..
            } => NumKind::U32,
            Datatype::FixedPoint {
                size: 8,
                signed: false,
                ..
            } => NumKind::U64,
            Datatype::FloatingPoint { size: 4, .. } => NumKind::F32,
            Datatype::FloatingPoint { size: 8, .. } => NumKind::F64,
            _ => return None,
        })
    }

    fn is_float(self) -> bool {
        matches!(self, NumKind::F32 | NumKind::F64)
    }

    fn name(self) -> &'static str {
        match self {
            NumKind::I8 => "int8",
            NumKind::I16 => "int16",
            NumKind::I32 => "int32",
            NumKind::I64 => "int64",
            NumKind::U8 => "uint8",
            NumKind::U16 => "uint16",
            NumKind::U32 => "uint32",
            NumKind::U64 => "uint64",
            NumKind::F32 => "float32",
            NumKind::F64 => "float64",
        }
    }
}

/// Conversion from any stored numeric type `S` into the type we want.
trait Conv: Sized {
    fn from_i128(x: i128) -> Self;
    fn from_f64(x: f64) -> Self;
    fn from_f32(x: f32) -> Self;
}

impl Conv for f32 {
    fn from_i128(x: i128) -> Self {
        x as f32
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Conv for f64 {
    fn from_i128(x: i128) -> Self {
        x as f64
    }
    fn from_f64(x: f64) -> Self {
        x
    }
    fn from_f32(x: f32) -> Self {
        x as f64
    }
}

impl Conv for i128 {
    fn from_i128(x: i128) -> Self {
        x
    }
    fn from_f64(x: f64) -> Self {
        x as i128
    }
    fn from_f32(x: f32) -> Self {
        x as i128
    }
}

/// A stored numeric type and how it converts.
trait Stored: hdf5_reader::H5Type + Copy {
    fn conv<T: Conv>(self) -> T;
}

macro_rules! stored_int {
    ($($t:ty),*) => {$(
        impl Stored for $t {
            #[inline]
            fn conv<T: Conv>(self) -> T {
                T::from_i128(self as i128)
            }
        }
    )*};
}
stored_int!(i8, i16, i32, i64, u8, u16, u32, u64);

impl Stored for f32 {
    #[inline]
    fn conv<T: Conv>(self) -> T {
        T::from_f32(self)
    }
}

impl Stored for f64 {
    #[inline]
    fn conv<T: Conv>(self) -> T {
        T::from_f64(self)
    }
}

/// Read a selection (or all) of `ds` stored as `S` and convert it to `T`.
fn read_conv<S: Stored, T: Conv>(
    ds: &H5Dataset,
    sel: Option<&SliceInfo>,
) -> std::result::Result<Vec<T>, H5Error> {
    let arr = match sel {
        Some(sel) => ds.read_slice_parallel::<S>(sel)?,
        None => ds.read_array::<S>()?,
    };
    let raw: Vec<S> = if arr.is_standard_layout() {
        let (v, offset) = arr.into_raw_vec_and_offset();
        match offset {
            Some(0) | None => v,
            Some(o) => v[o..].to_vec(),
        }
    } else {
        arr.iter().copied().collect()
    };
    Ok(raw.into_iter().map(Stored::conv::<T>).collect())
}
