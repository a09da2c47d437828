//! 10x Genomics readers: Cell Ranger's HDF5 matrix (`filtered_feature_bc_matrix.h5`) and the
//! Matrix Market folder (`matrix.mtx[.gz]`, `features.tsv[.gz]` or `genes.tsv[.gz]`,
//! `barcodes.tsv[.gz]`).
//!
//! Both hold a genes x cells matrix. In the HDF5 file it is CSC over cells, i.e. exactly the CSR
//! form of cells x genes: cell `j`'s genes are `indices[indptr[j]..indptr[j+1]]`, so rows are read
//! a chunk at a time with no transposition (memory: `indptr`, 8 bytes per cell, plus one chunk).
//! The MTX file is a list of `(gene, cell, value)` triplets in any order, so it is read whole:
//! two passes over the (decompressed) text, the first counting the entries of each cell, the second
//! placing them; memory is 8 bytes per non-zero (the CSR arrays) plus 8 bytes per cell, with no
//! intermediate triplet list.
//!
//! As scanpy's `read_10x_h5` / `read_10x_mtx` do by default, only "Gene Expression" features are
//! kept when the file lists feature types (`gex_only=True`), gene symbols are the names and
//! repeated symbols are made unique (`var_names_make_unique`, with a warning); the Ensembl IDs
//! (`gene_ids`), the feature types and the original symbols are kept as var columns. Cell Ranger 2
//! files (a single genome group with `genes` / `gene_names`) are read too.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use hdf5_reader::{Dataset as H5Dataset, Datatype, Hdf5File, SliceInfo, SliceInfoElem};

use super::names::make_unique_warn;
use super::{CsrMatrix, Dataset};
use crate::error::{Error, Result};

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

/// Which file features survive the gene-expression filter, and their new column indices.
fn gex_filter(
    ids: Vec<String>,
    names: Vec<String>,
    types: Option<Vec<String>>,
    source: &str,
) -> (TenxGenes, Vec<u32>) {
    let keep: Vec<bool> = match &types {
        Some(t) if t.iter().any(|x| x == "Gene Expression") => {
            t.iter().map(|x| x == "Gene Expression").collect()
        }
        _ => vec![true; names.len()],
    };
    let mut map = vec![u32::MAX; names.len()];
    let mut k = 0u32;
    for (i, &kp) in keep.iter().enumerate() {
        if kp {
            map[i] = k;
            k += 1;
        }
    }
    let dropped = names.len() - k as usize;
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

/// Apply a feature map (file index -> kept index or `u32::MAX`) to a chunk of rows.
fn remap_chunk(chunk: CsrMatrix, map: &[u32], n_kept: usize) -> CsrMatrix {
    if map.iter().enumerate().all(|(i, &m)| m == i as u32) {
        return chunk;
    }
    let mut out = CsrMatrix::with_cols(n_kept);
    for i in 0..chunk.n_rows {
        let (a, b) = (chunk.indptr[i] as usize, chunk.indptr[i + 1] as usize);
        // The kept features keep their order, so rows stay sorted.
        out.push_row(
            (a..b)
                .filter(|&k| map[chunk.indices[k] as usize] != u32::MAX)
                .map(|k| (map[chunk.indices[k] as usize], chunk.data[k])),
        );
    }
    out
}

// ------------------------------------------------------------------------------------------------
// HDF5 (Cell Ranger)

type H5Error = hdf5_reader::error::Error;

/// Is `path` an HDF5 file laid out as a Cell Ranger matrix (a `matrix` group, or a Cell Ranger 2
/// genome group with `barcodes` and `indptr`)?
pub fn is_10x_h5(path: &Path) -> bool {
    let Ok(f) = Hdf5File::open(path) else {
        return false;
    };
    let Ok(root) = f.root_group() else {
        return false;
    };
    find_matrix_group(&root).is_some()
}

/// The name of the group holding the matrix, and whether it is the Cell Ranger 3+ layout.
fn find_matrix_group(root: &hdf5_reader::group::Group) -> Option<(String, bool)> {
    let (groups, _) = root.member_names().ok()?;
    if groups.iter().any(|g| g == "matrix") {
        return Some(("matrix".to_string(), true));
    }
    // Cell Ranger 2: one group per genome holding the arrays directly.
    for g in groups {
        let grp = root.group(&g).ok()?;
        let (_, ds) = grp.member_names().ok()?;
        if ["barcodes", "indptr", "indices", "data", "shape"]
            .iter()
            .all(|n| ds.iter().any(|d| d == n))
        {
            return Some((g, false));
        }
    }
    None
}

/// An opened Cell Ranger HDF5 matrix: annotations read, matrix streamed on demand.
pub struct TenxH5 {
    path: PathBuf,
    file: Hdf5File,
    group: String,
    /// Per-cell offsets (the file's CSC column pointers).
    indptr: Vec<u64>,
    n_file_genes: usize,
    /// File feature index -> kept gene index, or `u32::MAX`.
    map: Vec<u32>,
    pub genes: TenxGenes,
    pub barcodes: Vec<String>,
}

macro_rules! read_as {
    ($ds:expr, $sel:expr, $out:ty, $conv:expr) => {{
        fn go<S: hdf5_reader::H5Type + Copy>(
            ds: &H5Dataset,
            sel: Option<&SliceInfo>,
            conv: impl Fn(S) -> $out,
        ) -> std::result::Result<Vec<$out>, H5Error> {
            let arr = match sel {
                Some(s) => ds.read_slice::<S>(s)?,
                None => ds.read_array::<S>()?,
            };
            Ok(arr.iter().map(|&x| conv(x)).collect())
        }
        let ds: &H5Dataset = $ds;
        match ds.dtype() {
            Datatype::FixedPoint {
                size: 1,
                signed: true,
                ..
            } => go::<i8>(ds, $sel, |x| $conv(x as f64)),
            Datatype::FixedPoint {
                size: 2,
                signed: true,
                ..
            } => go::<i16>(ds, $sel, |x| $conv(x as f64)),
            Datatype::FixedPoint {
                size: 4,
                signed: true,
                ..
            } => go::<i32>(ds, $sel, |x| $conv(x as f64)),
            Datatype::FixedPoint {
                size: 8,
                signed: true,
                ..
            } => go::<i64>(ds, $sel, |x| $conv(x as f64)),
            Datatype::FixedPoint {
                size: 1,
                signed: false,
                ..
            } => go::<u8>(ds, $sel, |x| $conv(x as f64)),
            Datatype::FixedPoint {
                size: 2,
                signed: false,
                ..
            } => go::<u16>(ds, $sel, |x| $conv(x as f64)),
            Datatype::FixedPoint {
                size: 4,
                signed: false,
                ..
            } => go::<u32>(ds, $sel, |x| $conv(x as f64)),
            Datatype::FixedPoint {
                size: 8,
                signed: false,
                ..
            } => go::<u64>(ds, $sel, |x| $conv(x as f64)),
            Datatype::FloatingPoint { size: 4, .. } => go::<f32>(ds, $sel, |x| $conv(x as f64)),
            Datatype::FloatingPoint { size: 8, .. } => go::<f64>(ds, $sel, |x| $conv(x)),
            other => Err(H5Error::Other(format!("unsupported type {other:?}"))),
        }
    }};
}

fn range(a: u64, b: u64) -> SliceInfo {
    SliceInfo {
        selections: vec![SliceInfoElem::Slice {
            start: a,
            end: b,
            step: 1,
        }],
    }
}

impl TenxH5 {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(&self.path, msg)
    }

    pub fn open(path: &Path) -> Result<TenxH5> {
        std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let ferr = |m: String| Error::format(path, m);
        let file =
            Hdf5File::open(path).map_err(|e| ferr(format!("cannot be read as HDF5: {e}")))?;
        let root = file.root_group().map_err(|e| ferr(format!("/: {e}")))?;
        let (group, v3) = find_matrix_group(&root).ok_or_else(|| {
            ferr("not a 10x Cell Ranger matrix (no 'matrix' group nor a genome group)".into())
        })?;
        let g = root
            .group(&group)
            .map_err(|e| ferr(format!("{group}: {e}")))?;
        let ds = |name: &str| -> Result<H5Dataset> {
            g.dataset(name)
                .map_err(|e| ferr(format!("{group}/{name}: {e}")))
        };
        let strings = |name: &str| -> Result<Vec<String>> {
            ds(name)?
                .read_strings()
                .map_err(|e| ferr(format!("{group}/{name}: {e}")))
        };
        let shape: Vec<f64> = read_as!(&ds("shape")?, None, f64, |x| x)
            .map_err(|e| ferr(format!("{group}/shape: {e}")))?;
        if shape.len() != 2 || shape.iter().any(|&s| s < 0.0) {
            return Err(ferr(format!(
                "{group}/shape is {shape:?}, expected [genes, cells]"
            )));
        }
        let (n_genes, n_cells) = (shape[0] as usize, shape[1] as usize);
        let barcodes = strings("barcodes")?;
        let (ids, names, types) = if v3 {
            let fg = g
                .group("features")
                .map_err(|e| ferr(format!("{group}/features: {e}")))?;
            let fstr = |name: &str| -> Result<Vec<String>> {
                fg.dataset(name)
                    .and_then(|d| d.read_strings())
                    .map_err(|e| ferr(format!("{group}/features/{name}: {e}")))
            };
            let (_, members) = fg
                .member_names()
                .map_err(|e| ferr(format!("features: {e}")))?;
            let types = if members.iter().any(|m| m == "feature_type") {
                Some(fstr("feature_type")?)
            } else {
                None
            };
            (fstr("id")?, fstr("name")?, types)
        } else {
            (strings("genes")?, strings("gene_names")?, None)
        };
        let gname = format!(
            "{group}/{}",
            if v3 { "features/name" } else { "gene_names" }
        );
        if names.len() != n_genes || ids.len() != n_genes {
            return Err(ferr(format!(
                "{gname} has {} entries but {group}/shape says {n_genes} genes",
                names.len()
            )));
        }
        if types.as_ref().is_some_and(|t| t.len() != n_genes) {
            return Err(ferr(format!(
                "{group}/features/feature_type: not {n_genes} entries"
            )));
        }
        if barcodes.len() != n_cells {
            return Err(ferr(format!(
                "{group}/barcodes has {} entries but {group}/shape says {n_cells} cells",
                barcodes.len()
            )));
        }
        let indptr_f: Vec<f64> = read_as!(&ds("indptr")?, None, f64, |x| x)
            .map_err(|e| ferr(format!("{group}/indptr: {e}")))?;
        if indptr_f.len() != n_cells + 1 {
            return Err(ferr(format!(
                "{group}/indptr has {} entries, expected cells + 1 = {}",
                indptr_f.len(),
                n_cells + 1
            )));
        }
        let nnz = ds("data")?.shape().first().copied().unwrap_or(0);
        let n_idx = ds("indices")?.shape().first().copied().unwrap_or(0);
        if n_idx != nnz {
            return Err(ferr(format!(
                "{group}/indices has {n_idx} entries, data has {nnz}"
            )));
        }
        let mut indptr = Vec::with_capacity(indptr_f.len());
        for (i, &p) in indptr_f.iter().enumerate() {
            if p < 0.0 || p > nnz as f64 || (i > 0 && p < indptr_f[i - 1]) || (i == 0 && p != 0.0) {
                return Err(ferr(format!(
                    "{group}/indptr[{i}] = {p}: offsets must run from 0 to nnz = {nnz}, never \
                     decreasing"
                )));
            }
            indptr.push(p as u64);
        }
        if indptr.last() != Some(&nnz) {
            return Err(ferr(format!(
                "{group}/indptr ends at {:?}, not nnz = {nnz}",
                indptr.last()
            )));
        }
        let source = path.display().to_string();
        let (genes, map) = gex_filter(ids, names, types, &source);
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
        let root = self
            .file
            .root_group()
            .map_err(|e| self.err(format!("/: {e}")))?;
        let g = root
            .group(&self.group)
            .map_err(|e| self.err(format!("{}: {e}", self.group)))?;
        let data = g
            .dataset("data")
            .map_err(|e| self.err(format!("data: {e}")))?;
        let indices = g
            .dataset("indices")
            .map_err(|e| self.err(format!("indices: {e}")))?;
        let n = self.n_cells();
        let step = chunk_rows.max(1);
        let mut r0 = 0;
        while r0 < n {
            let r1 = (r0 + step).min(n);
            let (a, b) = (self.indptr[r0], self.indptr[r1]);
            let (idx, val) = if a == b {
                (Vec::new(), Vec::new())
            } else {
                let sel = range(a, b);
                let idx: Vec<f64> = read_as!(&indices, Some(&sel), f64, |x| x)
                    .map_err(|e| self.err(format!("{}/indices: {e}", self.group)))?;
                let val: Vec<f32> = read_as!(&data, Some(&sel), f32, |x: f64| x as f32)
                    .map_err(|e| self.err(format!("{}/data: {e}", self.group)))?;
                (idx, val)
            };
            let mut chunk = CsrMatrix::with_cols(self.n_file_genes);
            chunk.n_rows = r1 - r0;
            chunk.indptr = self.indptr[r0..=r1].iter().map(|&p| p - a).collect();
            chunk.indices.reserve(idx.len());
            for (k, &j) in idx.iter().enumerate() {
                if !(j >= 0.0 && j < self.n_file_genes as f64) {
                    return Err(self.err(format!(
                        "{}/indices[{}] = {j} is not a gene index (0..{})",
                        self.group,
                        a + k as u64,
                        self.n_file_genes
                    )));
                }
                chunk.indices.push(j as u32);
            }
            chunk.data = val;
            sort_rows(&mut chunk);
            chunk.validate_structure().map_err(|e| {
                self.err(format!(
                    "{} (cells {r0}..{r1}, rows counted from {r0}): {e}",
                    self.group
                ))
            })?;
            f(r0, remap_chunk(chunk, &self.map, self.n_genes()))?;
            r0 = r1;
        }
        Ok(())
    }
}

/// Sort each row by column and sum repeated columns (Cell Ranger writes sorted rows; this makes
/// any other writer's rows canonical).
fn sort_rows(m: &mut CsrMatrix) {
    let sorted = (0..m.n_rows).all(|i| {
        m.indices[m.indptr[i] as usize..m.indptr[i + 1] as usize]
            .windows(2)
            .all(|w| w[0] < w[1])
    });
    if sorted {
        return;
    }
    let mut out = CsrMatrix::with_cols(m.n_cols);
    let mut pairs: Vec<(u32, f32)> = Vec::new();
    for i in 0..m.n_rows {
        let (a, b) = (m.indptr[i] as usize, m.indptr[i + 1] as usize);
        pairs.clear();
        pairs.extend(
            m.indices[a..b]
                .iter()
                .copied()
                .zip(m.data[a..b].iter().copied()),
        );
        pairs.sort_by_key(|p| p.0);
        let mut merged: Vec<(u32, f32)> = Vec::with_capacity(pairs.len());
        for &(j, v) in &pairs {
            match merged.last_mut() {
                Some(last) if last.0 == j => last.1 += v,
                _ => merged.push((j, v)),
            }
        }
        out.indices.extend(merged.iter().map(|p| p.0));
        out.data.extend(merged.iter().map(|p| p.1));
        out.indptr.push(out.indices.len() as u64);
        out.n_rows += 1;
    }
    *m = out;
}

/// Read a whole Cell Ranger HDF5 matrix into memory.
pub fn read_10x_h5(path: &Path) -> Result<Dataset> {
    let t = TenxH5::open(path)?;
    let mut counts = CsrMatrix::with_cols(t.n_genes());
    t.for_each_row_chunk(1 << 14, |_, c| {
        append(&mut counts, c);
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

fn append(acc: &mut CsrMatrix, c: CsrMatrix) {
    let base = acc.indices.len() as u64;
    acc.indptr.extend(c.indptr[1..].iter().map(|&p| p + base));
    acc.indices.extend_from_slice(&c.indices);
    acc.data.extend_from_slice(&c.data);
    acc.n_rows += c.n_rows;
}

// ------------------------------------------------------------------------------------------------
// Matrix Market folder

/// A 10x MTX folder read into memory.
pub struct TenxMtx {
    pub counts: CsrMatrix,
    pub genes: TenxGenes,
    pub barcodes: Vec<String>,
    pub dir: PathBuf,
}

/// `dir/name` or `dir/name.gz`, whichever exists.
fn find_file(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    for n in names {
        for cand in [dir.join(n), dir.join(format!("{n}.gz"))] {
            if cand.is_file() {
                return Some(cand);
            }
        }
    }
    None
}

/// Is `dir` a folder holding a `matrix.mtx[.gz]`?
pub fn is_mtx_dir(dir: &Path) -> bool {
    dir.is_dir() && find_file(dir, &["matrix.mtx"]).is_some()
}

fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    Ok(if gz {
        Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::read::MultiGzDecoder::new(f),
        ))
    } else {
        Box::new(BufReader::with_capacity(1 << 20, f))
    })
}

/// The lines of a small text file (features, barcodes), decompressed if `.gz`.
fn read_lines(path: &Path) -> Result<Vec<String>> {
    let mut text = String::new();
    open_text(path)?
        .read_to_string(&mut text)
        .map_err(|e| Error::format(path, format!("cannot read as text: {e}")))?;
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.to_string())
        .collect())
}

/// The MTX header: (genes, cells, entries, has values, integer values, symmetric).
struct MtxHeader {
    rows: usize,
    cols: usize,
    entries: u64,
    pattern: bool,
}

/// Read the banner, comments and size line; returns the header and the reader positioned after it,
/// plus the number of lines consumed (for messages).
fn mtx_header(path: &Path, r: &mut dyn BufRead) -> Result<(MtxHeader, u64)> {
    let ferr = |m: String| Error::format(path, m);
    let mut line = String::new();
    let mut n = 0u64;
    let read = |r: &mut dyn BufRead, line: &mut String| -> Result<usize> {
        line.clear();
        r.read_line(line)
            .map_err(|e| Error::format(path, format!("read error: {e}")))
    };
    if read(r, &mut line)? == 0 {
        return Err(ferr("empty file; expected a Matrix Market header".into()));
    }
    n += 1;
    let banner: Vec<String> = line
        .split_whitespace()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if banner.len() < 5 || banner[0] != "%%matrixmarket" || banner[1] != "matrix" {
        return Err(ferr(format!(
            "line 1 is '{}', expected '%%MatrixMarket matrix coordinate <field> general'",
            line.trim_end()
        )));
    }
    if banner[2] != "coordinate" {
        return Err(ferr(format!(
            "'{}' format; only 'coordinate' (sparse) is supported",
            banner[2]
        )));
    }
    let pattern = match banner[3].as_str() {
        "integer" | "real" | "double" => false,
        "pattern" => true,
        f => {
            return Err(ferr(format!(
                "field '{f}'; expected integer, real or pattern"
            )))
        }
    };
    if banner[4] != "general" {
        return Err(ferr(format!(
            "symmetry '{}'; only 'general' is supported",
            banner[4]
        )));
    }
    loop {
        if read(r, &mut line)? == 0 {
            return Err(ferr("no size line after the header".into()));
        }
        n += 1;
        let t = line.trim();
        if t.is_empty() || t.starts_with('%') {
            continue;
        }
        let v: Vec<&str> = t.split_whitespace().collect();
        let nums: Option<Vec<u64>> = v.iter().map(|s| s.parse::<u64>().ok()).collect();
        match nums {
            Some(x) if x.len() == 3 => {
                if x[0] > u32::MAX as u64 || x[1] > u32::MAX as u64 {
                    return Err(ferr(format!("size line {n}: dimensions too large")));
                }
                return Ok((
                    MtxHeader {
                        rows: x[0] as usize,
                        cols: x[1] as usize,
                        entries: x[2],
                        pattern,
                    },
                    n,
                ));
            }
            _ => {
                return Err(ferr(format!(
                    "line {n} '{t}' is not a size line 'genes cells entries'"
                )))
            }
        }
    }
}

/// Parse one entry line: (gene 0-based, cell 0-based, value).
#[inline]
fn parse_entry(
    line: &str,
    h: &MtxHeader,
    path: &Path,
    lineno: u64,
) -> Result<Option<(usize, usize, f32)>> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('%') {
        return Ok(None);
    }
    let mut it = t.split_ascii_whitespace();
    let bad = || {
        Error::format(
            path,
            format!("line {lineno} '{t}' is not an entry 'gene cell value'"),
        )
    };
    let i: u64 = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let j: u64 = it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let v: f32 = if h.pattern {
        1.0
    } else {
        it.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?
    };
    if i == 0 || i > h.rows as u64 || j == 0 || j > h.cols as u64 {
        return Err(Error::format(
            path,
            format!(
                "line {lineno}: entry ({i}, {j}) is outside the {} x {} matrix (genes x cells, \
                 1-based)",
                h.rows, h.cols
            ),
        ));
    }
    Ok(Some(((i - 1) as usize, (j - 1) as usize, v)))
}

/// Read a 10x MTX folder. Memory: the CSR arrays (8 bytes per non-zero) plus 8 bytes per cell; the
/// matrix file is read (and decompressed) twice.
pub fn read_10x_mtx(dir: &Path) -> Result<TenxMtx> {
    if !dir.is_dir() {
        return Err(Error::format(
            dir,
            "not a folder; expected a 10x MTX folder",
        ));
    }
    let missing = |what: &str| Error::format(dir, format!("10x MTX folder without {what}"));
    let mtx = find_file(dir, &["matrix.mtx"]).ok_or_else(|| missing("matrix.mtx[.gz]"))?;
    let features = find_file(dir, &["features.tsv", "genes.tsv"])
        .ok_or_else(|| missing("features.tsv[.gz] (or genes.tsv)"))?;
    let barcodes_p =
        find_file(dir, &["barcodes.tsv"]).ok_or_else(|| missing("barcodes.tsv[.gz]"))?;

    let feat_lines = read_lines(&features)?;
    let (mut ids, mut names, mut types) = (Vec::new(), Vec::new(), Vec::new());
    let mut has_types = true;
    for (k, l) in feat_lines.iter().enumerate() {
        let cols: Vec<&str> = l.split('\t').collect();
        if cols.len() < 2 && cols[0].is_empty() {
            return Err(Error::format(&features, format!("line {} is empty", k + 1)));
        }
        ids.push(cols[0].to_string());
        names.push(cols.get(1).unwrap_or(&cols[0]).to_string());
        match cols.get(2) {
            Some(t) => types.push(t.to_string()),
            None => has_types = false,
        }
    }
    let types = if has_types && !types.is_empty() {
        Some(types)
    } else {
        None
    };
    let barcodes: Vec<String> = read_lines(&barcodes_p)?
        .into_iter()
        .map(|l| l.split('\t').next().unwrap_or("").to_string())
        .collect();

    // Pass 1: header, sizes, entries per cell.
    let mut r = open_text(&mtx)?;
    let (h, head_lines) = mtx_header(&mtx, &mut *r)?;
    if h.rows != ids.len() {
        return Err(Error::format(
            dir,
            format!(
                "{} lists {} genes but {} has {} rows (genes)",
                features.file_name().unwrap_or_default().to_string_lossy(),
                ids.len(),
                mtx.file_name().unwrap_or_default().to_string_lossy(),
                h.rows
            ),
        ));
    }
    if h.cols != barcodes.len() {
        return Err(Error::format(
            dir,
            format!(
                "{} lists {} cells but {} has {} columns (cells)",
                barcodes_p.file_name().unwrap_or_default().to_string_lossy(),
                barcodes.len(),
                mtx.file_name().unwrap_or_default().to_string_lossy(),
                h.cols
            ),
        ));
    }
    let mut per_cell = vec![0u64; h.cols + 1];
    let mut line = String::new();
    let mut lineno = head_lines;
    let mut seen = 0u64;
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .map_err(|e| Error::format(&mtx, format!("read error: {e}")))?;
        if n == 0 {
            break;
        }
        lineno += 1;
        if let Some((_, j, _)) = parse_entry(&line, &h, &mtx, lineno)? {
            seen += 1;
            if seen > h.entries {
                return Err(Error::format(
                    &mtx,
                    format!(
                        "more entries than the {} the size line announces",
                        h.entries
                    ),
                ));
            }
            per_cell[j + 1] += 1;
        }
    }
    if seen != h.entries {
        return Err(Error::format(
            &mtx,
            format!(
                "{seen} entries, but the size line announces {} (truncated file?)",
                h.entries
            ),
        ));
    }
    for j in 0..h.cols {
        per_cell[j + 1] += per_cell[j];
    }
    // Pass 2: place the entries.
    let nnz = h.entries as usize;
    let mut indices = vec![0u32; nnz];
    let mut data = vec![0f32; nnz];
    let mut cursor: Vec<u64> = per_cell[..h.cols].to_vec();
    let mut r = open_text(&mtx)?;
    let (_, head_lines) = mtx_header(&mtx, &mut *r)?;
    let mut lineno = head_lines;
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .map_err(|e| Error::format(&mtx, format!("read error: {e}")))?;
        if n == 0 {
            break;
        }
        lineno += 1;
        if let Some((i, j, v)) = parse_entry(&line, &h, &mtx, lineno)? {
            let c = &mut cursor[j];
            if *c >= per_cell[j + 1] {
                return Err(Error::format(
                    &mtx,
                    "the file changed while it was read".to_string(),
                ));
            }
            indices[*c as usize] = i as u32;
            data[*c as usize] = v;
            *c += 1;
        }
    }
    let mut counts = CsrMatrix {
        n_rows: h.cols,
        n_cols: h.rows,
        indptr: per_cell,
        indices,
        data,
    };
    sort_rows(&mut counts);
    counts
        .validate_structure()
        .map_err(|e| Error::format(&mtx, e.to_string()))?;

    let source = dir.display().to_string();
    let (genes, map) = gex_filter(ids, names, types, &source);
    let n_kept = genes.names.len();
    let counts = remap_chunk(counts, &map, n_kept);
    Ok(TenxMtx {
        counts,
        genes,
        barcodes,
        dir: dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_rows_sums_duplicates() {
        let mut m = CsrMatrix {
            n_rows: 2,
            n_cols: 4,
            indptr: vec![0, 3, 4],
            indices: vec![3, 0, 3, 1],
            data: vec![1.0, 2.0, 5.0, 1.0],
        };
        sort_rows(&mut m);
        assert_eq!(m.indptr, vec![0, 2, 3]);
        assert_eq!(m.indices, vec![0, 3, 1]);
        assert_eq!(m.data, vec![2.0, 6.0, 1.0]);
    }
}
