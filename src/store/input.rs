//! Any input the command line takes, as a source of row chunks plus annotations: a store, an
//! `.h5ad` file, a 10x Cell Ranger `.h5` file or a 10x MTX folder. `convert` reads its input through
//! this in one or more streaming passes.

use std::path::{Path, PathBuf};

use super::Store;
use crate::data::h5ad::{self, H5adOptions};
use crate::data::names::make_unique_warn;
use crate::data::tenx::{self, TenxH5, TenxMtx};
use crate::data::validate::CountChecks;
use crate::data::{CsrMatrix, Dataset, ObsColumn, SparseRows};
use crate::error::{Error, Result};

/// The kinds of input, told apart by their content (not their names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    Store,
    H5ad,
    TenxH5,
    TenxMtx,
}

impl InputFormat {
    pub fn name(self) -> &'static str {
        match self {
            InputFormat::Store => "scvi-rs store",
            InputFormat::H5ad => "h5ad",
            InputFormat::TenxH5 => "10x h5",
            InputFormat::TenxMtx => "10x mtx",
        }
    }
}

/// What `path` is: a store or MTX folder (by the files in it), a 10x `.h5` (an HDF5 file with a
/// `matrix` group) or an `.h5ad` (any other HDF5 file).
pub fn detect_format(path: &Path) -> Result<InputFormat> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    if path.is_dir() {
        if super::is_store(path) {
            return Ok(InputFormat::Store);
        }
        if tenx::is_mtx_dir(path) {
            return Ok(InputFormat::TenxMtx);
        }
        let has = |n: &str| path.join(n).exists() || path.join(format!("{n}.gz")).exists();
        if has("features.tsv") || has("genes.tsv") || has("barcodes.tsv") {
            return Err(Error::format(
                path,
                "10x MTX folder without matrix.mtx[.gz]",
            ));
        }
        return Err(Error::format(
            path,
            "a folder that is neither a scvi-rs store (header.json) nor a 10x MTX folder \
             (matrix.mtx[.gz], features.tsv[.gz] or genes.tsv, barcodes.tsv[.gz])",
        ));
    }
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .to_lowercase();
    if name.ends_with(".mtx") || name.ends_with(".mtx.gz") {
        return Err(Error::format(
            path,
            "give the folder holding matrix.mtx, features.tsv and barcodes.tsv, not the file",
        ));
    }
    if tenx::is_10x_h5(path) {
        return Ok(InputFormat::TenxH5);
    }
    Ok(InputFormat::H5ad)
}

/// The annotations of an input (gene names already unique).
#[derive(Clone, Debug, Default)]
pub struct InputMeta {
    pub gene_names: Vec<String>,
    pub cell_names: Vec<String>,
    pub obs: Vec<(String, ObsColumn)>,
    /// Per-gene string columns (gene IDs, original names, feature types).
    pub var: Vec<(String, Vec<String>)>,
    /// Where the data came from, for messages and the store header.
    pub source: String,
    /// The matrix within the source (`X`, `layers/counts`, `matrix.mtx`, ...), for messages.
    pub field: String,
}

enum Body {
    Store(Box<Store>),
    H5ad {
        path: PathBuf,
        opts: H5adOptions,
    },
    TenxH5(Box<TenxH5>),
    /// MTX is read whole (its entries come in any order).
    TenxMtx(CsrMatrix),
}

/// An opened input.
pub struct Input {
    pub format: InputFormat,
    pub meta: InputMeta,
    pub n_cells: usize,
    pub n_genes: usize,
    /// Stored values, when known without reading the matrix (not for a dense `.h5ad`).
    pub nnz: Option<u64>,
    /// How an `.h5ad` stores the matrix read (`csr_matrix`, `csc_matrix`, `array`), when known.
    pub layout: Option<String>,
    body: Body,
}

impl Input {
    /// Open `path` (any format). `layer` selects an `.h5ad` layer and is an error for other inputs.
    /// An input with no cells or no genes is an error.
    pub fn open(path: &Path, layer: Option<&str>) -> Result<Input> {
        let format = detect_format(path)?;
        if layer.is_some() && format != InputFormat::H5ad {
            return Err(Error::Config(format!(
                "--layer applies to .h5ad input only; {} is a {}",
                path.display(),
                format.name()
            )));
        }
        let source = path.display().to_string();
        let input = match format {
            InputFormat::Store => {
                let s = Store::open(path)?;
                let meta = InputMeta {
                    gene_names: s.gene_names().to_vec(),
                    cell_names: s.cell_names().to_vec(),
                    obs: s.obs().to_vec(),
                    var: s.var().to_vec(),
                    source,
                    field: "counts".into(),
                };
                Input {
                    format,
                    meta,
                    n_cells: s.n_cells(),
                    n_genes: s.n_genes(),
                    nnz: Some(s.nnz()),
                    layout: None,
                    body: Body::Store(Box::new(s)),
                }
            }
            InputFormat::H5ad => {
                let opts = H5adOptions {
                    layer: layer.map(str::to_string),
                };
                let summary = h5ad::h5ad_summary(path)?;
                let names = h5ad::read_var_names(path)?;
                let (cell_names, obs) = h5ad::read_obs(path)?;
                let (gene_names, renamed) = make_unique_warn(&names, &source);
                let var = if renamed > 0 {
                    vec![("gene_names_original".to_string(), names)]
                } else {
                    Vec::new()
                };
                let field = layer
                    .map(|l| format!("layers/{l}"))
                    .unwrap_or_else(|| "X".into());
                // For a layer the sizes are checked as the first chunk arrives; X's here.
                let (n_cells, n_genes, nnz) = if layer.is_none() {
                    (summary.n_obs, summary.n_vars, summary.x_nnz)
                } else {
                    (cell_names.len(), gene_names.len(), None)
                };
                if n_cells != cell_names.len() || n_genes != gene_names.len() {
                    return Err(Error::format(
                        path,
                        format!(
                            "{field} is {n_cells} x {n_genes} but obs has {} cells and var {} genes",
                            cell_names.len(),
                            gene_names.len()
                        ),
                    ));
                }
                let layout = layer.is_none().then(|| summary.x_encoding.clone());
                let meta = InputMeta {
                    gene_names,
                    cell_names,
                    obs,
                    var,
                    source,
                    field,
                };
                Input {
                    format,
                    meta,
                    n_cells,
                    n_genes,
                    nnz,
                    layout,
                    body: Body::H5ad {
                        path: path.to_path_buf(),
                        opts,
                    },
                }
            }
            InputFormat::TenxH5 => {
                let t = TenxH5::open(path)?;
                let meta = InputMeta {
                    gene_names: t.genes.names.clone(),
                    cell_names: t.barcodes.clone(),
                    obs: Vec::new(),
                    var: t.genes.var_columns(),
                    source,
                    field: "matrix".into(),
                };
                Input {
                    format,
                    n_cells: t.n_cells(),
                    n_genes: t.n_genes(),
                    nnz: None,
                    layout: None,
                    meta,
                    body: Body::TenxH5(Box::new(t)),
                }
            }
            InputFormat::TenxMtx => {
                let TenxMtx {
                    counts,
                    genes,
                    barcodes,
                    ..
                } = tenx::read_10x_mtx(path)?;
                let meta = InputMeta {
                    gene_names: genes.names.clone(),
                    cell_names: barcodes,
                    obs: Vec::new(),
                    var: genes.var_columns(),
                    source,
                    field: "matrix.mtx".into(),
                };
                Input {
                    format,
                    n_cells: counts.n_rows,
                    n_genes: counts.n_cols,
                    nnz: Some(counts.nnz()),
                    layout: None,
                    meta,
                    body: Body::TenxMtx(counts),
                }
            }
        };
        if input.n_cells == 0 || input.n_genes == 0 {
            return Err(Error::Data(format!(
                "{}: empty matrix ({} cells x {} genes)",
                input.meta.source, input.n_cells, input.n_genes
            )));
        }
        Ok(input)
    }

    /// Stream the counts as CSR chunks of at most `chunk_rows` rows, in order. Chunks from an
    /// `.h5ad` are checked here for their size against the annotations.
    pub fn for_each_chunk(
        &self,
        chunk_rows: usize,
        mut f: impl FnMut(usize, CsrMatrix) -> Result<()>,
    ) -> Result<()> {
        let chunk_rows = chunk_rows.max(1);
        match &self.body {
            Body::Store(s) => {
                let m = s.matrix();
                m.advise(false);
                rows_of(m, chunk_rows, f, |r0, r1| m.release_rows(r0, r1))
            }
            Body::TenxMtx(m) => rows_of(m, chunk_rows, f, |_, _| {}),
            Body::TenxH5(t) => t.for_each_row_chunk(chunk_rows, f),
            Body::H5ad { path, opts } => {
                let mut seen = 0usize;
                h5ad::for_each_row_chunk(path, opts, chunk_rows, |first, chunk| {
                    if chunk.n_cols != self.n_genes {
                        return Err(Error::format(
                            path,
                            format!(
                                "{} has {} columns but var has {} genes",
                                self.meta.field, chunk.n_cols, self.n_genes
                            ),
                        ));
                    }
                    seen = first + chunk.n_rows;
                    if seen > self.n_cells {
                        return Err(Error::format(
                            path,
                            format!(
                                "{} has more rows than obs has cells ({})",
                                self.meta.field, self.n_cells
                            ),
                        ));
                    }
                    f(first, chunk)
                })?;
                if seen != self.n_cells {
                    return Err(Error::format(
                        path,
                        format!(
                            "{} has {seen} rows but obs has {} cells",
                            self.meta.field, self.n_cells
                        ),
                    ));
                }
                Ok(())
            }
        }
    }

    /// The whole input as a [`Dataset`]: a store stays mapped, anything else is read into memory.
    pub fn into_dataset(self) -> Result<Dataset> {
        let meta = self.meta;
        let counts: Box<dyn SparseRows> = match self.body {
            Body::Store(s) => return Ok((*s).into_dataset()),
            Body::TenxMtx(m) => {
                let mut checks = CountChecks::new(&meta.source, &meta.field);
                checks.check_chunk(0, &m)?;
                warn_non_integer(checks, &meta)?;
                Box::new(m)
            }
            body => {
                let mut checks = CountChecks::new(&meta.source, &meta.field);
                let tmp = Input {
                    format: self.format,
                    meta: InputMeta::default(),
                    n_cells: self.n_cells,
                    n_genes: self.n_genes,
                    nnz: self.nnz,
                    layout: None,
                    body,
                };
                let mut all = CsrMatrix::with_cols(self.n_genes);
                tmp.for_each_chunk(1 << 14, |first, c| {
                    checks.check_chunk(first, &c)?;
                    let base = all.indices.len() as u64;
                    all.indptr.extend(c.indptr[1..].iter().map(|&p| p + base));
                    all.indices.extend_from_slice(&c.indices);
                    all.data.extend_from_slice(&c.data);
                    all.n_rows += c.n_rows;
                    Ok(())
                })?;
                warn_non_integer(checks, &meta)?;
                Box::new(all)
            }
        };
        Ok(Dataset {
            counts,
            gene_names: meta.gene_names,
            cell_names: meta.cell_names,
            obs: meta.obs,
            source: meta.source,
        })
    }
}

fn warn_non_integer(checks: CountChecks, meta: &InputMeta) -> Result<()> {
    if let Some(w) = checks.finish()?.warning(&meta.source, &meta.field) {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// Chunks of an in-memory or mapped matrix; `done(r0, r1)` after each chunk is handed on.
fn rows_of(
    m: &dyn SparseRows,
    chunk_rows: usize,
    mut f: impl FnMut(usize, CsrMatrix) -> Result<()>,
    done: impl Fn(usize, usize),
) -> Result<()> {
    let n = m.n_rows();
    let mut r0 = 0;
    while r0 < n {
        let r1 = (r0 + chunk_rows).min(n);
        let mut c = CsrMatrix::with_cols(m.n_cols());
        for i in r0..r1 {
            let (j, v) = m.row(i);
            c.indices.extend_from_slice(j);
            c.data.extend_from_slice(v);
            c.indptr.push(c.indices.len() as u64);
            c.n_rows += 1;
        }
        f(r0, c)?;
        done(r0, r1);
        r0 = r1;
    }
    Ok(())
}

/// Open any input as a [`Dataset`] (a store stays memory-mapped).
pub fn load_dataset(path: &Path, layer: Option<&str>) -> Result<Dataset> {
    Input::open(path, layer)?.into_dataset()
}
