//! `Data`: the core's `Dataset` built from what the Python side hands over, either the buffers of
//! an in-memory AnnData's CSR matrix (borrowed, see `csr`) with its names and the obs columns the
//! setup names, or a file that the Rust readers open (a backed AnnData, never loaded in Python).

use crate::csr::BorrowedCsr;
use crate::errors::to_py;
use pyo3::prelude::*;
use pyo3::types::PyList;
use scvi_rs::data::{Dataset, ObsColumn, SparseRows};
use std::path::PathBuf;

#[pyclass(module = "scvi_rs._core")]
pub struct Data {
    pub inner: Dataset,
    /// The borrowed buffers' addresses, when the counts are read in place.
    addresses: Option<(usize, usize, usize)>,
    /// The readers' warning about non-integer values, if any.
    warning: Option<String>,
}

/// One obs column as the Python side encodes it: (name, kind, values, categories).
fn obs_column(
    kind: &str,
    values: &Bound<'_, PyAny>,
    cats: Option<Vec<String>>,
) -> PyResult<ObsColumn> {
    Ok(match kind {
        "categorical" => ObsColumn::Categorical {
            codes: values.extract()?,
            categories: cats.unwrap_or_default(),
        },
        "integers" => ObsColumn::Integers(values.extract()?),
        "floats" => ObsColumn::Floats(values.extract()?),
        "bools" => ObsColumn::Bools(values.extract()?),
        "strings" => ObsColumn::Strings(values.extract()?),
        other => {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "unknown obs column kind '{other}'"
            )))
        }
    })
}

#[pymethods]
impl Data {
    /// Borrow a CSR matrix's buffers (checked once, in chunks, with the GIL released).
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (indptr, indices, data, n_cols, gene_names, cell_names, obs, source, field))]
    fn from_csr(
        py: Python<'_>,
        indptr: &Bound<'_, PyAny>,
        indices: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        n_cols: usize,
        gene_names: Vec<String>,
        cell_names: Vec<String>,
        obs: &Bound<'_, PyList>,
        source: String,
        field: String,
    ) -> PyResult<Self> {
        let csr = BorrowedCsr::new(indptr, indices, data, n_cols)?;
        if cell_names.len() != csr.n_rows() || gene_names.len() != n_cols {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "{source}: {} cell and {} gene names for a {} x {n_cols} matrix",
                cell_names.len(),
                gene_names.len(),
                csr.n_rows()
            )));
        }
        let mut cols = Vec::new();
        for item in obs.iter() {
            let (name, kind, values, cats): (
                String,
                String,
                Bound<'_, PyAny>,
                Option<Vec<String>>,
            ) = item.extract()?;
            cols.push((name, obs_column(&kind, &values, cats)?));
        }
        let summary = py
            .allow_threads(|| csr.check(&source, &field))
            .map_err(to_py)?;
        let warning = summary.warning(&source, &field);
        let addresses = Some(csr.addresses());
        Ok(Data {
            inner: Dataset {
                counts: Box::new(csr),
                gene_names,
                cell_names,
                obs: cols,
                source,
            },
            addresses,
            warning,
        })
    }

    /// Open a file with the Rust readers (.h5ad, store, 10x), as the command line does.
    #[staticmethod]
    #[pyo3(signature = (path, layer=None))]
    fn from_file(py: Python<'_>, path: PathBuf, layer: Option<String>) -> PyResult<Self> {
        let inner = py
            .allow_threads(|| scvi_rs::store::load_dataset(&path, layer.as_deref()))
            .map_err(to_py)?;
        Ok(Data {
            inner,
            addresses: None,
            warning: None,
        })
    }

    #[getter]
    fn n_cells(&self) -> usize {
        self.inner.n_cells()
    }
    #[getter]
    fn n_genes(&self) -> usize {
        self.inner.n_genes()
    }
    #[getter]
    fn gene_names(&self) -> Vec<String> {
        self.inner.gene_names.clone()
    }
    #[getter]
    fn obs_keys(&self) -> Vec<String> {
        self.inner.obs.iter().map(|(k, _)| k.clone()).collect()
    }
    /// (indptr, indices, data) addresses read in place, or None when the data were copied/read.
    #[getter]
    fn borrowed_addresses(&self) -> Option<(usize, usize, usize)> {
        self.addresses
    }
    /// The non-integer values warning, as the command line prints it.
    #[getter]
    fn warning(&self) -> Option<String> {
        self.warning.clone()
    }
    /// Categories of an obs column as setup_anndata makes them (for the model's registry).
    fn categories(&self, key: &str) -> PyResult<Vec<String>> {
        let col = self.inner.obs_column(key).map_err(to_py)?;
        let (_, cats) = col.to_categorical(key).map_err(to_py)?;
        Ok(cats)
    }
}
