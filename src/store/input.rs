//! The one input opener: every command reads its data through [`open_input`], which tells a store,
//! an `.h5ad` file, a 10x Cell Ranger `.h5` file and a 10x MTX folder apart by their content (not
//! their names). An opened [`Input`] knows its sizes and annotations; its counts come as a stream of
//! row chunks ([`Input::for_each_chunk`], what `convert` reads in one or more passes) or whole
//! ([`Input::into_dataset`], what training reads: a store stays memory-mapped, anything else is
//! read into memory with every value checked).
//!
//! Warnings go to stderr as the input is read: gene names made unique, features dropped by the
//! 10x gene-expression filter, obs columns skipped, non-integer counts.

use std::path::Path;

use super::mapped::{is_store, Store};
use crate::data::h5ad::{self, H5adOptions, H5adReader};
use crate::data::names::make_unique_warn;
use crate::data::tenx::{self, TenxH5, TenxMtx};
use crate::data::validate::{CountChecks, CountSummary};
use crate::data::{hdf5, CsrMatrix, Dataset, ObsColumn, SparseRows};
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

/// What `path` is, by its content: a store or an MTX folder by the files in it; a 10x `.h5` by its
/// groups (a `matrix` group, or a Cell Ranger 2 genome group); an `.h5ad` by the AnnData layout (`X`,
/// `obs` or `var`, or an `anndata` encoding). An HDF5 file that is none of these is an error, but
/// one that cannot be opened as HDF5 counts as an `.h5ad`, whose reader says what is wrong with it.
pub fn detect_format(path: &Path) -> Result<InputFormat> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    // A named pipe or a device would block the first read, or never end.
    crate::limits::refuse_special(path, "")?;
    if path.is_dir() {
        if is_store(path) {
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
    if !hdf5::has_signature(path) {
        return Err(Error::format(
            path,
            "is not an HDF5 file (no HDF5 signature); expected an AnnData .h5ad file, a 10x \
             Cell Ranger .h5 file, a scvi-rs store or a 10x MTX folder",
        ));
    }
    if tenx::is_10x_h5(path) {
        return Ok(InputFormat::TenxH5);
    }
    if h5ad::is_anndata(path) == Some(false) {
        return Err(Error::format(
            path,
            "an HDF5 file that is neither an AnnData .h5ad (no X, obs or var) nor a 10x Cell \
             Ranger matrix (no 'matrix' group nor a genome group)",
        ));
    }
    Ok(InputFormat::H5ad)
}

/// What to read of an input beyond its path (the command line's `--layer` and `--genome`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InputOptions {
    /// `layers/<layer>` of an `.h5ad` instead of `X` (an error for other inputs).
    pub layer: Option<String>,
    /// Only the genes of this genome of a 10x `.h5` (scanpy's `read_10x_h5(genome=...)`): needed
    /// for a Cell Ranger 2 file holding several (an error for other inputs).
    pub genome: Option<String>,
}

impl InputOptions {
    /// Only a layer (the common case).
    pub fn layer(layer: Option<&str>) -> Self {
        InputOptions {
            layer: layer.map(str::to_string),
            genome: None,
        }
    }
}

/// Open any input (see [`Input::open`]).
pub fn open_input(path: &Path, layer: Option<&str>) -> Result<Input> {
    Input::open(path, layer)
}

/// Open any input with its options (see [`Input::open_with`]).
pub fn open_input_with(path: &Path, opts: &InputOptions) -> Result<Input> {
    Input::open_with(path, opts)
}

/// Open any input and read it whole as a [`Dataset`] (a store stays memory-mapped); see
/// [`Input::into_dataset`].
pub fn load_dataset(path: &Path, layer: Option<&str>) -> Result<Dataset> {
    Input::open(path, layer)?.into_dataset()
}

/// [`load_dataset`] with its options (`--layer`, `--genome`).
pub fn load_dataset_with(path: &Path, opts: &InputOptions) -> Result<Dataset> {
    Input::open_with(path, opts)?.into_dataset()
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
    H5ad(Box<H5adReader>),
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
        Self::open_with(path, &InputOptions::layer(layer))
    }

    /// [`Input::open`] with every option: `--genome` too, which applies to 10x `.h5` files.
    pub fn open_with(path: &Path, opts: &InputOptions) -> Result<Input> {
        let format = detect_format(path)?;
        let layer = opts.layer.as_deref();
        if layer.is_some() && format != InputFormat::H5ad {
            return Err(Error::Config(format!(
                "--layer applies to .h5ad input only; {} is a {}",
                path.display(),
                format.name()
            )));
        }
        if opts.genome.is_some() && format != InputFormat::TenxH5 {
            return Err(Error::Config(format!(
                "--genome applies to 10x .h5 input only; {} is a {}",
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
                let r = H5adReader::open(
                    path,
                    &H5adOptions {
                        layer: layer.map(str::to_string),
                    },
                )?;
                let names = r.var_names()?;
                let (cell_names, obs) = r.obs()?;
                let (gene_names, renamed) = make_unique_warn(&names, &source);
                let var = if renamed > 0 {
                    vec![("gene_names_original".to_string(), names)]
                } else {
                    Vec::new()
                };
                let (n_cells, n_genes) = (r.n_rows(), r.n_cols());
                if n_cells != cell_names.len() || n_genes != gene_names.len() {
                    return Err(Error::format(
                        path,
                        format!(
                            "{} is {n_cells} x {n_genes} but obs has {} cells and var {} genes",
                            r.field(),
                            cell_names.len(),
                            gene_names.len()
                        ),
                    ));
                }
                let meta = InputMeta {
                    gene_names,
                    cell_names,
                    obs,
                    var,
                    source,
                    field: r.field().to_string(),
                };
                Input {
                    format,
                    meta,
                    n_cells,
                    n_genes,
                    nnz: r.nnz(),
                    layout: Some(r.encoding().to_string()),
                    body: Body::H5ad(Box::new(r)),
                }
            }
            InputFormat::TenxH5 => {
                let t = TenxH5::open_genome(path, opts.genome.as_deref())?;
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
        if let Some(w) = repeated_names(&input.meta.cell_names) {
            // anndata warns too ("obs_names are not unique"); cells are used by position, so
            // nothing breaks, but outputs listing cells by name become ambiguous.
            eprintln!(
                "warning: {}: cell names are not unique ({w}); outputs that list cells by name \
                 will repeat them (anndata: adata.obs_names_make_unique())",
                input.meta.source
            );
        }
        Ok(input)
    }

    /// The store, when the input is one.
    pub fn store(&self) -> Option<&Store> {
        match &self.body {
            Body::Store(s) => Some(s),
            _ => None,
        }
    }

    /// Stream the counts as CSR chunks of at most `chunk_rows` rows, in order. The values are not
    /// checked here (the writers and [`Input::into_dataset`] check them), but a store's rows are
    /// ([`SparseRows::check_row`]: a corrupt store is an error naming the file and the row).
    pub fn for_each_chunk(
        &self,
        chunk_rows: usize,
        f: impl FnMut(usize, CsrMatrix) -> Result<()>,
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
            Body::H5ad(r) => r.for_each_row_chunk(chunk_rows, f),
        }
    }

    /// The whole input as a [`Dataset`]: a store stays mapped, anything else is read into memory
    /// with every value checked (a negative, NaN or infinite count is an error naming the cell and
    /// the gene; non-integer counts are a warning).
    pub fn into_dataset(self) -> Result<Dataset> {
        let meta = self.meta;
        let source = &meta.source;
        let (counts, summary) = match self.body {
            Body::Store(s) => return Ok((*s).into_dataset()),
            Body::H5ad(r) => r.read_counts()?,
            Body::TenxMtx(m) => {
                let mut checks = CountChecks::new(source, &meta.field);
                checks.check_chunk(0, &m)?;
                (m, checks.finish()?)
            }
            Body::TenxH5(t) => {
                let mut checks = CountChecks::new(source, &meta.field);
                let mut all = CsrMatrix::with_cols(self.n_genes);
                t.for_each_row_chunk(1 << 14, |first, c| {
                    checks.check_chunk(first, &c)?;
                    all.append_rows(&c);
                    Ok(())
                })?;
                (all, checks.finish()?)
            }
        };
        warn_non_integer(&summary, &meta);
        Ok(Dataset {
            counts: Box::new(counts),
            gene_names: meta.gene_names,
            cell_names: meta.cell_names,
            obs: meta.obs,
            source: meta.source,
        })
    }
}

/// How many names repeat an earlier one, with the first repeat and where: None when all are
/// unique.
pub fn repeated_names(names: &[String]) -> Option<String> {
    let mut first = std::collections::HashMap::with_capacity(names.len());
    let mut repeats = 0usize;
    let mut example = None;
    for (i, n) in names.iter().enumerate() {
        if let Some(&j) = first.get(n.as_str()) {
            repeats += 1;
            example.get_or_insert_with(|| format!("'{n}' at {j} and {i}"));
        } else {
            first.insert(n.as_str(), i);
        }
    }
    example.map(|e| format!("{repeats} repeated; the first: {e}"))
}

fn warn_non_integer(summary: &CountSummary, meta: &InputMeta) {
    for w in summary.warnings(&meta.source, &meta.field) {
        eprintln!("warning: {w}");
    }
}

/// Chunks of an in-memory or mapped matrix, every row checked first; `done(r0, r1)` after each
/// chunk is handed on.
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
        (r0..r1).try_for_each(|i| m.check_row(i))?;
        f(r0, CsrMatrix::from_rows(m, r0, r1))?;
        done(r0, r1);
        r0 = r1;
    }
    Ok(())
}
