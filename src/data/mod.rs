//! Data: the count matrix with its cell and gene annotations, the readers that produce it, and the
//! checks that every reader shares. Nothing here knows the store, the model or the command line.
//!
//! ```text
//! csr.rs          CsrMatrix (rows, columns, canonical sorting, appending) and the SparseRows trait
//! hdf5.rs         what the HDF5 readers share: the number decoder, CSR rows from a file, type names
//! h5ad/           the AnnData reader: mod (API), matrix (X / layers, streamed), frames (obs / var)
//! tenx/           10x readers: mod (gene filter), h5 (Cell Ranger .h5), mtx (Matrix Market folder)
//! validate.rs     value checks on every chunk read (negative, NaN, infinite; non-integer counted)
//! names.rs        unique gene names, as anndata makes them
//! genes.rs        gene lists: reading one, finding its genes by name or ID
//! hvg/            highly variable genes: seurat_v3, its loess, numpy's argsort
//! simulate.rs     simulated counts of any size, in constant memory
//! ```

pub mod counts;
pub mod csr;
pub mod genes;
pub mod h5ad;
pub mod hdf5;
pub mod hvg;
pub mod names;
pub mod simulate;
pub mod tenx;
pub mod validate;

pub use csr::{ColumnMap, CsrMatrix, SparseRows};

use crate::error::{Error, Result};

/// One column of cell annotations (`obs`).
#[derive(Clone, Debug, PartialEq)]
pub enum ObsColumn {
    /// Codes into `categories`; -1 is a missing value (as pandas writes it).
    Categorical {
        codes: Vec<i32>,
        categories: Vec<String>,
    },
    Strings(Vec<String>),
    Integers(Vec<i64>),
    Floats(Vec<f64>),
    Bools(Vec<bool>),
}

impl ObsColumn {
    pub fn len(&self) -> usize {
        match self {
            ObsColumn::Categorical { codes, .. } => codes.len(),
            ObsColumn::Strings(v) => v.len(),
            ObsColumn::Integers(v) => v.len(),
            ObsColumn::Floats(v) => v.len(),
            ObsColumn::Bools(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The column as category codes plus category names, the way scvi-tools' `setup_anndata` makes a
    /// key categorical: a pandas categorical keeps its own category order (unused categories
    /// included); strings, integers and booleans become their sorted unique values. A missing value is
    /// an error naming the column and the first cell that has one.
    pub fn to_categorical(&self, column: &str) -> Result<(Vec<u32>, Vec<String>)> {
        fn from_sorted<T: Ord + Clone>(
            vals: &[T],
            name: impl Fn(&T) -> String,
        ) -> (Vec<u32>, Vec<String>) {
            let mut uniq: Vec<T> = vals.to_vec();
            uniq.sort();
            uniq.dedup();
            let codes = vals
                .iter()
                .map(|v| uniq.binary_search(v).unwrap() as u32)
                .collect();
            (codes, uniq.iter().map(name).collect())
        }
        match self {
            ObsColumn::Categorical { codes, categories } => {
                let mut out = Vec::with_capacity(codes.len());
                for (i, &c) in codes.iter().enumerate() {
                    if c < 0 || c as usize >= categories.len() {
                        return Err(Error::Data(format!(
                            "obs column '{column}' has a missing value (code {c}) at cell {i}; \
                             scvi-rs needs a category for every cell"
                        )));
                    }
                    out.push(c as u32);
                }
                Ok((out, categories.clone()))
            }
            ObsColumn::Strings(v) => Ok(from_sorted(v, |s| s.clone())),
            ObsColumn::Integers(v) => Ok(from_sorted(v, |x| x.to_string())),
            ObsColumn::Bools(v) => Ok(from_sorted(v, |x| if *x { "True" } else { "False" }.into())),
            ObsColumn::Floats(v) => {
                if let Some(i) = v.iter().position(|x| x.is_nan() || x.fract() != 0.0) {
                    return Err(Error::Data(format!(
                        "obs column '{column}' holds non-integer numbers (cell {i}: {}); \
                         a batch or label key must be categorical, string, integer or boolean",
                        v[i]
                    )));
                }
                let ints: Vec<i64> = v.iter().map(|&x| x as i64).collect();
                Ok(from_sorted(&ints, |x| x.to_string()))
            }
        }
    }
}

/// A count matrix (cells x genes) with its annotations. The counts may live in memory or in a
/// memory-mapped store; everything downstream reads them through [`SparseRows`].
pub struct Dataset {
    pub counts: Box<dyn SparseRows>,
    pub gene_names: Vec<String>,
    pub cell_names: Vec<String>,
    pub obs: Vec<(String, ObsColumn)>,
    /// Where the data came from (a path), for messages.
    pub source: String,
}

impl Dataset {
    pub fn n_cells(&self) -> usize {
        self.counts.n_rows()
    }
    pub fn n_genes(&self) -> usize {
        self.counts.n_cols()
    }

    /// The obs column `key`, or an error listing the columns there are.
    pub fn obs_column(&self, key: &str) -> Result<&ObsColumn> {
        find_obs(&self.obs, key, &self.source, "")
    }
}

/// The obs column `key`, or an error naming `source` and listing the columns there are; `purpose`
/// (" for --hvg-batch-key", or "") says what the column was wanted for.
pub fn find_obs<'a>(
    obs: &'a [(String, ObsColumn)],
    key: &str,
    source: &str,
    purpose: &str,
) -> Result<&'a ObsColumn> {
    obs.iter()
        .find(|(k, _)| k == key)
        .map(|(_, c)| c)
        .ok_or_else(|| {
            let names: Vec<&str> = obs.iter().map(|(k, _)| k.as_str()).collect();
            Error::Data(format!(
                "{source}: obs has no column '{key}'{purpose} (columns: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ))
        })
}
