//! The input plus a result, as an `.h5ad` that anndata and scanpy read: the input's cells (obs,
//! with its columns), genes (var, with its string columns; a gene subset when one was asked for),
//! `X` (the counts as read, CSR, or what the caller puts there), and the result as a layer or an
//! `obsm` matrix. Written by `store::h5ad_writer` under a temporary name, renamed when complete.

use crate::data::{ColumnMap, CsrMatrix, Dataset};
use crate::error::Result;
use crate::store::h5ad_writer::H5adWriter;
pub use crate::store::h5ad_writer::Place;
use crate::store::StoreMeta;
use std::path::Path;

/// Rows of the input copied into `X` per chunk.
const COPY_ROWS: usize = 4096;

/// An `.h5ad` being written from an input data set.
pub struct H5adOut<'a> {
    pub writer: H5adWriter,
    data: &'a Dataset,
    var: &'a [(String, Vec<String>)],
    genes: Option<Vec<usize>>,
}

impl<'a> H5adOut<'a> {
    /// Start `path` for the cells of `data` and its genes (or the subset `genes`, in the model's
    /// order); `var` holds the input's per-gene string columns.
    pub fn create(
        path: &Path,
        force: bool,
        data: &'a Dataset,
        var: &'a [(String, Vec<String>)],
        genes: Option<&[usize]>,
    ) -> Result<Self> {
        let n = genes.map_or(data.n_genes(), |g| g.len());
        Ok(H5adOut {
            writer: H5adWriter::create(path, n, &data.source, force)?,
            data,
            var,
            genes: genes.map(|g| g.to_vec()),
        })
    }

    /// `X` = the input's counts as read (on the selected genes).
    pub fn copy_input_x(&mut self) -> Result<()> {
        let x = self.data.counts.as_ref();
        let map = self.genes.as_ref().map(|g| ColumnMap::keep(x.n_cols(), g));
        let mut r0 = 0;
        while r0 < x.n_rows() {
            crate::interrupt::check()?;
            let r1 = (r0 + COPY_ROWS).min(x.n_rows());
            let mut chunk = CsrMatrix::from_rows(x, r0, r1);
            if let Some(m) = &map {
                chunk = chunk.select_columns(m);
            }
            self.writer.append_owned(chunk)?;
            x.release();
            r0 = r1;
        }
        Ok(())
    }

    /// Write obs and var and rename the file into place.
    pub fn finish(self) -> Result<()> {
        let pick = |v: &[String]| -> Vec<String> {
            match &self.genes {
                Some(g) => g.iter().map(|&j| v[j].clone()).collect(),
                None => v.to_vec(),
            }
        };
        let meta = StoreMeta {
            gene_names: pick(&self.data.gene_names),
            cell_names: self.data.cell_names.clone(),
            obs: self.data.obs.clone(),
            var: self
                .var
                .iter()
                .filter(|(_, v)| v.len() == self.data.n_genes())
                .map(|(k, v)| (k.clone(), pick(v)))
                .collect(),
            notes: Vec::new(),
        };
        self.writer.finish(meta)
    }
}
