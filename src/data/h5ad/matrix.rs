//! The count matrix of an `.h5ad`: finding `X` or a layer, checking its encoding, types and sizes
//! against the `obs` and `var` indexes, and streaming it as CSR chunks of rows.
//!
//! Encodings:
//! - `csr_matrix`: a group with `data`, `indices`, `indptr` and a `shape` attribute. Read a chunk of
//!   rows at a time: `indptr` whole (8 bytes per cell), then the slices of `indices` / `data` that
//!   hold the chunk's rows.
//! - `csc_matrix`: the same arrays by column. Rows cannot be sliced out of it, so it is streamed in
//!   passes over the columns (see [`super::H5adReader::for_each_row_chunk`] for the memory bound
//!   and the cost).
//! - `array`: a dense 2-D dataset, read a block of rows at a time and sparsified block by block.

use hdf5_reader::group::Group;
use hdf5_reader::Dataset as H5Dataset;

use super::{attr_string, H5ad, H5adOptions};
use crate::data::csr::CsrMatrix;
use crate::data::hdf5::{self, attr_ints, canonical_rows, StoredCsr};
use crate::error::Result;

/// Entries per read in the CSC passes.
const CSC_BLOCK: u64 = 1 << 20;

/// How a matrix is stored.
pub(super) enum Kind {
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
    pub(super) fn encoding(&self) -> &'static str {
        match self {
            Kind::Csr { .. } => "csr_matrix",
            Kind::Csc { .. } => "csc_matrix",
            Kind::Dense => "array",
        }
    }
}

/// An opened matrix: its arrays, checked for types and sizes.
pub(super) struct Matrix {
    /// `X` or `layers/<name>`, for messages.
    pub(super) field: String,
    pub(super) kind: Kind,
    /// `data` for a sparse matrix, the dataset itself when dense.
    pub(super) values: H5Dataset,
    pub(super) n_rows: usize,
    pub(super) n_cols: usize,
    pub(super) nnz: Option<u64>,
}

/// Limits on one chunk: rows, and stored entries (values of a sparse chunk, cells of a dense block).
#[derive(Clone, Copy)]
pub(super) struct Plan {
    pub(super) max_rows: usize,
    pub(super) max_entries: u64,
}

/// What the encodings say when they are not one of the three.
const READS: &str = "which scvi-rs cannot read (it reads csr_matrix, csc_matrix and dense array)";

impl H5ad {
    /// Find `X` or the layer, check its encoding, types and sizes.
    pub(super) fn open_matrix(&self, opts: &H5adOptions) -> Result<Matrix> {
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
        let m = match self.child_group(&parent, &name, &field)? {
            Some(g) => self.open_sparse(&g, field)?,
            None => {
                let ds = self.dataset(&parent, &name, &field)?;
                self.open_dense(ds, field)?
            }
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
        if let Some(n) = self.legacy_len(frame)? {
            return Ok(Some((format!("{frame} (a record per row)"), n)));
        }
        let root = self.root_group()?;
        let Some(g) = self.child_group(&root, frame, frame)? else {
            return Ok(None);
        };
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
            other => return Err(self.err(format!("{field} has encoding '{other}', {READS}"))),
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
            let kind = hdf5::num_kind(&self.path, &f, ds.dtype())?;
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
                return Err(self.err(format!("{field} has encoding '{enc}', {READS}")));
            }
        }
        hdf5::num_kind(&self.path, &field, ds.dtype())?;
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

    pub(super) fn stream(
        &self,
        m: &Matrix,
        plan: Plan,
        f: &mut dyn FnMut(usize, CsrMatrix) -> Result<()>,
    ) -> Result<()> {
        let (indices, indptr, by_rows) = match &m.kind {
            Kind::Dense => return self.stream_dense(m, plan, f),
            Kind::Csr { indices, indptr } => (indices, indptr, true),
            Kind::Csc { indices, indptr } => (indices, indptr, false),
        };
        let [idx_field, data_field, ptr_field] =
            ["indices", "data", "indptr"].map(|a| format!("{}/{a}", m.field));
        // The whole `indptr`, checked: starts at 0, never decreases, ends at `nnz`.
        let ptr = self
            .num(&ptr_field, indptr)?
            .offsets(m.nnz.unwrap_or(0), &data_field)?;
        let sparse = StoredCsr {
            name: &m.field,
            ptr: &ptr,
            indices: self.num(&idx_field, indices)?,
            values: self.num(&data_field, &m.values)?,
        };
        if !by_rows {
            return self.stream_csc(m, &sparse, plan, f);
        }
        for (r0, r1) in row_chunks(&ptr, plan) {
            f(r0, sparse.rows(r0, r1, m.n_cols)?)?;
        }
        Ok(())
    }

    /// Rows of a CSC matrix, whose `sparse` arrays run by column.
    fn stream_csc(
        &self,
        m: &Matrix,
        s: &StoredCsr,
        plan: Plan,
        f: &mut dyn FnMut(usize, CsrMatrix) -> Result<()>,
    ) -> Result<()> {
        let (colptr, indices, values) = (&s.ptr, &s.indices, &s.values);
        let nnz = m.nnz.unwrap_or(0);

        // Pass 1: values per row, as CSR row offsets of the whole matrix.
        crate::limits::ensure_memory((m.n_rows as u64 + 1).saturating_mul(8), || {
            format!("{}: row offsets of {}", self.path.display(), m.field)
        })?;
        let mut rowptr = vec![0u64; m.n_rows + 1];
        let mut e0 = 0;
        while e0 < nnz {
            let e1 = (e0 + CSC_BLOCK).min(nnz);
            for r in indices.indices(e0, e1, m.n_rows as u64, "row")? {
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
                let rows = indices.indices(e0, e1, m.n_rows as u64, "row")?;
                let vals: Vec<f32> = values.range(e0, e1)?;
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
            let chunk = CsrMatrix {
                n_rows: r1 - r0,
                n_cols: m.n_cols,
                indptr: local,
                indices: idx,
                data: val,
            };
            f(r0, canonical_rows(chunk, &self.path, &m.field, r0)?)?;
        }
        Ok(())
    }

    fn stream_dense(
        &self,
        m: &Matrix,
        plan: Plan,
        f: &mut dyn FnMut(usize, CsrMatrix) -> Result<()>,
    ) -> Result<()> {
        let values = self.num(&m.field, &m.values)?;
        let rows_per_block = {
            let by_entries = (plan.max_entries / (m.n_cols.max(1) as u64)).max(1);
            plan.max_rows
                .min(usize::try_from(by_entries).unwrap_or(usize::MAX))
                .max(1)
        };
        let mut r0 = 0;
        while r0 < m.n_rows {
            let r1 = r0.saturating_add(rows_per_block).min(m.n_rows);
            let block: Vec<f32> = values.rows(r0 as u64, r1 as u64, m.n_cols as u64)?;
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
