//! Cell Ranger's HDF5 matrix (`filtered_feature_bc_matrix.h5`, Cell Ranger 3+ with a `matrix`
//! group, or Cell Ranger 2 with one genome group). It holds genes x cells as CSC over cells, i.e.
//! exactly the CSR form of cells x genes: cell `j`'s genes are `indices[indptr[j]..indptr[j+1]]`,
//! so rows are read a chunk at a time with no transposition (memory: `indptr`, 8 bytes per cell,
//! plus one chunk).

use std::path::{Path, PathBuf};

use hdf5_reader::group::Group;
use hdf5_reader::{Dataset as H5Dataset, Hdf5File};

use super::{gex_filter, keep_genes, TenxGenes};
use crate::data::csr::ColumnMap;
use crate::data::hdf5::{self, NumField, StoredCsr};
use crate::data::{CsrMatrix, Dataset};
use crate::error::{Error, Result};

/// Is `path` an HDF5 file laid out as a Cell Ranger matrix (a `matrix` group, or a Cell Ranger 2
/// genome group with `barcodes` and `indptr`)?
pub fn is_10x_h5(path: &Path) -> bool {
    let Ok(f) = hdf5::open_file(path) else {
        return false;
    };
    let Ok(root) = f.root_group() else {
        return false;
    };
    let has_matrix = root
        .member_names()
        .is_ok_and(|(groups, _)| groups.iter().any(|g| g == "matrix"));
    has_matrix || !genome_groups(&root).is_empty()
}

/// The Cell Ranger 2 genome groups of a file (groups holding the matrix arrays directly).
fn genome_groups(root: &Group) -> Vec<String> {
    let Ok((groups, _)) = root.member_names() else {
        return Vec::new();
    };
    groups
        .into_iter()
        .filter(|g| {
            root.group(g)
                .and_then(|grp| grp.member_names())
                .is_ok_and(|(_, ds)| {
                    ["barcodes", "indptr", "indices", "data", "shape"]
                        .iter()
                        .all(|n| ds.iter().any(|d| d == n))
                })
        })
        .collect()
}

/// The group to read: `matrix` (Cell Ranger 3+), or the one genome group of a Cell Ranger 2 file,
/// or the one `genome` names. As scanpy's `read_10x_h5`: a Cell Ranger 2 file with several genomes
/// needs `--genome`, and the error lists them.
fn choose_group(path: &Path, root: &Group, genome: Option<&str>) -> Result<(String, bool)> {
    let (groups, _) = root
        .member_names()
        .map_err(|e| Error::format(path, format!("/: {e}")))?;
    if groups.iter().any(|g| g == "matrix") {
        return Ok(("matrix".to_string(), true));
    }
    let genomes = genome_groups(root);
    let listed = || genomes.join(", ");
    match (genome, genomes.len()) {
        (_, 0) => Err(Error::format(
            path,
            "not a 10x Cell Ranger matrix (no 'matrix' group nor a genome group)",
        )),
        (Some(g), _) if genomes.iter().any(|x| x == g) => Ok((g.to_string(), false)),
        (Some(g), _) => Err(Error::format(
            path,
            format!(
                "--genome {g}: no such genome in this Cell Ranger 2 file (genomes: {})",
                listed()
            ),
        )),
        (None, 1) => Ok((genomes[0].clone(), false)),
        (None, _) => Err(Error::format(
            path,
            format!(
                "holds {} genomes ({}); choose one with --genome NAME, as scanpy's read_10x_h5 \
                 asks",
                genomes.len(),
                listed()
            ),
        )),
    }
}

/// An opened Cell Ranger HDF5 matrix: annotations read, matrix streamed on demand.
pub struct TenxH5 {
    path: PathBuf,
    file: Hdf5File,
    group: String,
    /// Per-cell offsets (the file's CSC column pointers).
    indptr: Vec<u64>,
    n_file_genes: usize,
    /// File feature -> kept gene.
    map: ColumnMap,
    pub genes: TenxGenes,
    pub barcodes: Vec<String>,
}

impl TenxH5 {
    /// Open a Cell Ranger matrix with all its genomes (an error for a Cell Ranger 2 file holding
    /// several: see [`TenxH5::open_genome`]).
    pub fn open(path: &Path) -> Result<TenxH5> {
        Self::open_genome(path, None)
    }

    /// Open a Cell Ranger matrix keeping only the genes of `genome` when given (scanpy's
    /// `read_10x_h5(genome=...)`): the genome group of a Cell Ranger 2 file, the features whose
    /// `features/genome` is `genome` in a Cell Ranger 3+ file.
    pub fn open_genome(path: &Path, genome: Option<&str>) -> Result<TenxH5> {
        let ferr = |m: String| Error::format(path, m);
        let file = hdf5::open_file(path)?;
        let root = file.root_group().map_err(|e| ferr(format!("/: {e}")))?;
        let (group, v3) = choose_group(path, &root, genome)?;
        let g = root
            .group(&group)
            .map_err(|e| ferr(format!("{group}: {e}")))?;
        let ds = |name: &str| -> Result<H5Dataset> {
            g.dataset(name)
                .map_err(|e| ferr(format!("{group}/{name}: {e}")))
        };
        let strings = |name: &str| -> Result<Vec<String>> {
            hdf5::read_strings(path, &format!("{group}/{name}"), &ds(name)?)
        };
        let (shape_ds, shape_field) = (ds("shape")?, format!("{group}/shape"));
        let shape: Vec<i128> = NumField::new(path, &shape_field, &shape_ds)?.all()?;
        if shape.len() != 2 || shape.iter().any(|&s| s < 0 || s > usize::MAX as i128) {
            return Err(ferr(format!(
                "{shape_field} is {shape:?}, expected [genes, cells]"
            )));
        }
        let (n_genes, n_cells) = (shape[0] as usize, shape[1] as usize);
        let barcodes = strings("barcodes")?;
        let (ids, names, types, in_genome) = if v3 {
            let fg = g
                .group("features")
                .map_err(|e| ferr(format!("{group}/features: {e}")))?;
            let fstr = |name: &str| -> Result<Vec<String>> {
                let field = format!("{group}/features/{name}");
                let d = fg
                    .dataset(name)
                    .map_err(|e| ferr(format!("{field}: {e}")))?;
                hdf5::read_strings(path, &field, &d)
            };
            let (_, members) = fg
                .member_names()
                .map_err(|e| ferr(format!("features: {e}")))?;
            let types = if members.iter().any(|m| m == "feature_type") {
                Some(fstr("feature_type")?)
            } else {
                None
            };
            let in_genome = match genome {
                None => None,
                Some(want) => {
                    if !members.iter().any(|m| m == "genome") {
                        return Err(ferr(format!(
                            "--genome {want}: {group}/features has no 'genome' list to choose from"
                        )));
                    }
                    let all = fstr("genome")?;
                    if !all.iter().any(|x| x == want) {
                        let mut there: Vec<&String> = all.iter().collect();
                        there.sort();
                        there.dedup();
                        let there: Vec<&str> = there.iter().map(|s| s.as_str()).collect();
                        return Err(ferr(format!(
                            "--genome {want}: no feature of that genome (genomes: {})",
                            there.join(", ")
                        )));
                    }
                    Some(all.iter().map(|x| x == want).collect::<Vec<bool>>())
                }
            };
            (fstr("id")?, fstr("name")?, types, in_genome)
        } else {
            (strings("genes")?, strings("gene_names")?, None, None)
        };
        let gname = format!(
            "{group}/{}",
            if v3 { "features/name" } else { "gene_names" }
        );
        if names.len() != n_genes || ids.len() != n_genes {
            return Err(ferr(format!(
                "{gname} has {} entries but {shape_field} says {n_genes} genes",
                names.len()
            )));
        }
        if in_genome.as_ref().is_some_and(|t| t.len() != n_genes) {
            return Err(ferr(format!(
                "{group}/features/genome: not {n_genes} entries"
            )));
        }
        if types.as_ref().is_some_and(|t| t.len() != n_genes) {
            return Err(ferr(format!(
                "{group}/features/feature_type: not {n_genes} entries"
            )));
        }
        if barcodes.len() != n_cells {
            return Err(ferr(format!(
                "{group}/barcodes has {} entries but {shape_field} says {n_cells} cells",
                barcodes.len()
            )));
        }
        let nnz = ds("data")?.shape().first().copied().unwrap_or(0);
        let n_idx = ds("indices")?.shape().first().copied().unwrap_or(0);
        if n_idx != nnz {
            return Err(ferr(format!(
                "{group}/indices has {n_idx} entries, data has {nnz}"
            )));
        }
        let (indptr_ds, indptr_field) = (ds("indptr")?, format!("{group}/indptr"));
        if indptr_ds.shape().first().copied() != Some(n_cells as u64 + 1) {
            return Err(ferr(format!(
                "{indptr_field} has {:?} entries, expected cells + 1 = {}",
                indptr_ds.shape().first(),
                n_cells + 1
            )));
        }
        let indptr = NumField::new(path, &indptr_field, &indptr_ds)?
            .offsets(nnz, &format!("{group}/data"))?;
        let source = path.display().to_string();
        let (genes, map) = gex_filter(ids, names, types, in_genome, &source);
        Ok(TenxH5 {
            path: path.to_path_buf(),
            file,
            group,
            indptr,
            n_file_genes: n_genes,
            map,
            genes,
            barcodes,
        })
    }

    pub fn n_cells(&self) -> usize {
        self.indptr.len() - 1
    }
    pub fn n_genes(&self) -> usize {
        self.genes.names.len()
    }
    /// Stored values in the file (all features).
    pub fn nnz(&self) -> u64 {
        *self.indptr.last().unwrap_or(&0)
    }

    /// Stream the cells as CSR chunks of at most `chunk_rows` rows (kept genes only).
    pub fn for_each_row_chunk(
        &self,
        chunk_rows: usize,
        mut f: impl FnMut(usize, CsrMatrix) -> Result<()>,
    ) -> Result<()> {
        let err = |m: String| Error::format(&self.path, m);
        let root = self.file.root_group().map_err(|e| err(format!("/: {e}")))?;
        let g = root
            .group(&self.group)
            .map_err(|e| err(format!("{}: {e}", self.group)))?;
        let data = g.dataset("data").map_err(|e| err(format!("data: {e}")))?;
        let indices = g
            .dataset("indices")
            .map_err(|e| err(format!("indices: {e}")))?;
        let (data_field, idx_field) = (
            format!("{}/data", self.group),
            format!("{}/indices", self.group),
        );
        let stored = StoredCsr {
            name: &self.group,
            ptr: &self.indptr,
            indices: NumField::new(&self.path, &idx_field, &indices)?,
            values: NumField::new(&self.path, &data_field, &data)?,
        };
        let n = self.n_cells();
        let step = chunk_rows.max(1);
        let mut r0 = 0;
        while r0 < n {
            let r1 = (r0 + step).min(n);
            f(
                r0,
                keep_genes(stored.rows(r0, r1, self.n_file_genes)?, &self.map),
            )?;
            r0 = r1;
        }
        Ok(())
    }
}

/// Read a whole Cell Ranger HDF5 matrix into memory.
pub fn read_10x_h5(path: &Path) -> Result<Dataset> {
    let t = TenxH5::open(path)?;
    let mut counts = CsrMatrix::with_cols(t.n_genes());
    t.for_each_row_chunk(1 << 14, |_, c| {
        counts.append_rows(&c);
        Ok(())
    })?;
    Ok(Dataset {
        counts: Box::new(counts),
        gene_names: t.genes.names.clone(),
        cell_names: t.barcodes.clone(),
        obs: Vec::new(),
        source: path.display().to_string(),
    })
}
