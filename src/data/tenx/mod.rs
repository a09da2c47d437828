//! 10x Genomics readers: Cell Ranger's HDF5 matrix ([`h5`]) and the Matrix Market folder ([`mtx`]).
//!
//! As scanpy's `read_10x_h5` / `read_10x_mtx` do by default, only "Gene Expression" features are
//! kept when the file lists feature types (`gex_only=True`), gene symbols are the names and
//! repeated symbols are made unique (`var_names_make_unique`, with a warning); the Ensembl IDs
//! (`gene_ids`), the feature types and the original symbols are kept as var columns. Cell Ranger 2
//! files (a single genome group with `genes` / `gene_names`) are read too.

pub mod h5;
pub mod mtx;

pub use h5::{is_10x_h5, read_10x_h5, TenxH5};
pub use mtx::{is_mtx_dir, read_10x_mtx, TenxMtx};

use super::csr::{ColumnMap, CsrMatrix};
use super::names::make_unique_warn;

/// Gene annotations of a 10x matrix, after the gene-expression filter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenxGenes {
    /// Unique names (symbols made unique as anndata does).
    pub names: Vec<String>,
    /// The symbols as the file has them.
    pub names_original: Vec<String>,
    /// Gene IDs (Ensembl), the first column of `features.tsv`.
    pub ids: Vec<String>,
    /// Feature types (`Gene Expression`, ...), when the file has them.
    pub feature_types: Option<Vec<String>>,
}

impl TenxGenes {
    /// The var columns to keep beside the names.
    pub fn var_columns(&self) -> Vec<(String, Vec<String>)> {
        let mut v = vec![
            ("gene_ids".to_string(), self.ids.clone()),
            (
                "gene_names_original".to_string(),
                self.names_original.clone(),
            ),
        ];
        if let Some(t) = &self.feature_types {
            v.push(("feature_types".to_string(), t.clone()));
        }
        v
    }
}

/// Which file features survive the gene-expression filter (and, with `--genome`, the genome
/// filter: `in_genome` says which features are of the chosen genome), and where they go.
fn gex_filter(
    ids: Vec<String>,
    names: Vec<String>,
    types: Option<Vec<String>>,
    in_genome: Option<Vec<bool>>,
    source: &str,
) -> (TenxGenes, ColumnMap) {
    let mut keep: Vec<bool> = match &types {
        Some(t) if t.iter().any(|x| x == "Gene Expression") => {
            t.iter().map(|x| x == "Gene Expression").collect()
        }
        _ => vec![true; names.len()],
    };
    // Features dropped for their type, which the user did not ask for: warned about below.
    let dropped = keep.iter().filter(|&&k| !k).count();
    if let Some(g) = &in_genome {
        keep.iter_mut().zip(g).for_each(|(k, &g)| *k &= g);
    }
    let map = ColumnMap::from_mask(&keep);
    if dropped > 0 {
        eprintln!(
            "warning: {source}: {dropped} features that are not 'Gene Expression' (antibody \
             capture, CRISPR guides, ...) dropped, as scanpy's read_10x (gex_only=True) does"
        );
    }
    let pick = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|(s, _)| s)
            .collect()
    };
    let names_original = pick(names);
    let ids = pick(ids);
    let feature_types = types.map(pick);
    let (names, _) = make_unique_warn(&names_original, source);
    (
        TenxGenes {
            names,
            names_original,
            ids,
            feature_types,
        },
        map,
    )
}

/// The kept genes' columns of a chunk read from the file. Where features are dropped the chunk's
/// explicit zeros go too, as they always have on that path.
fn keep_genes(m: CsrMatrix, map: &ColumnMap) -> CsrMatrix {
    if map.is_identity() {
        m
    } else {
        m.select_columns(map).without_zeros()
    }
}
