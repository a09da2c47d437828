//! The 10x Matrix Market folder (`matrix.mtx[.gz]`, `features.tsv[.gz]` or `genes.tsv[.gz]`,
//! `barcodes.tsv[.gz]`). The matrix file is a list of `(gene, cell, value)` triplets in any order,
//! so it is read whole: two passes over the (decompressed) text, the first counting the entries of
//! each cell, the second placing them; memory is 8 bytes per non-zero (the CSR arrays) plus 8 bytes
//! per cell, with no intermediate triplet list.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::{gex_filter, keep_genes, TenxGenes};
use crate::data::CsrMatrix;
use crate::error::{Error, Result};

/// A 10x MTX folder read into memory.
pub struct TenxMtx {
    pub counts: CsrMatrix,
    pub genes: TenxGenes,
    pub barcodes: Vec<String>,
    pub dir: PathBuf,
}

/// `dir/name` or `dir/name.gz`, whichever exists (a folder or a named pipe of that name too:
/// opening it says what is wrong with it).
fn find_file(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    for n in names {
        for cand in [dir.join(n), dir.join(format!("{n}.gz"))] {
            if cand.exists() {
                return Some(cand);
            }
        }
    }
    None
}

/// The longest line read from a 10x text file: an entry line is a few tens of bytes, a feature
/// line a few hundred; a longer one is not such a file (and would otherwise be read whole).
const MAX_LINE: u64 = 1 << 20;

/// Read one line of at most [`MAX_LINE`] bytes into `line` (cleared first); 0 at the end.
fn read_bounded_line(path: &Path, r: &mut dyn BufRead, line: &mut String, n: u64) -> Result<usize> {
    line.clear();
    let got = r
        .take(MAX_LINE)
        .read_line(line)
        .map_err(|e| Error::format(path, format!("line {n}: cannot be read as text: {e}")))?;
    if got as u64 == MAX_LINE && !line.ends_with('\n') {
        return Err(Error::format(
            path,
            format!("line {n} is longer than 1 MiB: not a 10x text file"),
        ));
    }
    Ok(got)
}

/// Is `dir` a folder holding a `matrix.mtx[.gz]`?
pub fn is_mtx_dir(dir: &Path) -> bool {
    dir.is_dir() && find_file(dir, &["matrix.mtx"]).is_some()
}

fn open_text(path: &Path) -> Result<Box<dyn BufRead>> {
    let f = crate::limits::open_regular(path)?;
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

/// The non-empty lines of a text file (features, barcodes), decompressed if `.gz`, read line by
/// line with each line bounded, and the whole bounded by the memory available (a small `.gz` can
/// decompress to anything).
fn read_lines(path: &Path) -> Result<Vec<String>> {
    let mut r = open_text(path)?;
    let budget = crate::limits::mem_available().unwrap_or(u64::MAX) / 2;
    let (mut out, mut line, mut n, mut total) = (Vec::new(), String::new(), 0u64, 0u64);
    loop {
        n += 1;
        let got = read_bounded_line(path, &mut *r, &mut line, n)?;
        if got == 0 {
            return Ok(out);
        }
        total += got as u64 + 24;
        if total > budget {
            return Err(Error::Resource(format!(
                "{}: its lines need more than {}, half the memory available",
                path.display(),
                crate::limits::human_bytes(budget)
            )));
        }
        let l = line.trim_end_matches(['\n', '\r']);
        if !l.is_empty() {
            out.push(l.to_string());
        }
    }
}

/// The MTX header: sizes (genes, cells), the entry count, and whether entries carry no value.
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
    let mut n = 1u64;
    if read_bounded_line(path, r, &mut line, n)? == 0 {
        return Err(ferr("empty file; expected a Matrix Market header".into()));
    }
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
        n += 1;
        if read_bounded_line(path, r, &mut line, n)? == 0 {
            return Err(ferr("no size line after the header".into()));
        }
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

/// Call `f(gene, cell, value)` (0-based) for every entry line of the matrix file read by `r`, which
/// stands after the header's `lineno` lines.
fn for_each_entry(
    path: &Path,
    r: &mut dyn BufRead,
    mut lineno: u64,
    h: &MtxHeader,
    mut f: impl FnMut(usize, usize, f32) -> Result<()>,
) -> Result<()> {
    let mut line = String::new();
    loop {
        lineno += 1;
        if read_bounded_line(path, r, &mut line, lineno)? == 0 {
            return Ok(());
        }
        if let Some((i, j, v)) = parse_entry(&line, h, path, lineno)? {
            f(i, j, v)?;
        }
    }
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
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string()
    };
    for (list, listed, what, n, dim) in [
        (&features, ids.len(), "genes", h.rows, "rows"),
        (&barcodes_p, barcodes.len(), "cells", h.cols, "columns"),
    ] {
        if n != listed {
            return Err(Error::format(
                dir,
                format!(
                    "{} lists {listed} {what} but {} has {n} {dim} ({what})",
                    name(list),
                    name(&mtx)
                ),
            ));
        }
    }
    crate::limits::ensure_memory((h.cols as u64 + 1) * 8, || {
        format!("{}: {} cells", mtx.display(), h.cols)
    })?;
    let mut per_cell = vec![0u64; h.cols + 1];
    let mut seen = 0u64;
    for_each_entry(&mtx, &mut *r, head_lines, &h, |_, j, _| {
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
        Ok(())
    })?;
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
    crate::limits::ensure_memory(h.entries.saturating_mul(8), || {
        format!("{}: {} entries", mtx.display(), h.entries)
    })?;
    let nnz = h.entries as usize;
    let mut indices = vec![0u32; nnz];
    let mut data = vec![0f32; nnz];
    let mut cursor: Vec<u64> = per_cell[..h.cols].to_vec();
    let mut r = open_text(&mtx)?;
    let (_, head_lines) = mtx_header(&mtx, &mut *r)?;
    for_each_entry(&mtx, &mut *r, head_lines, &h, |i, j, v| {
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
        Ok(())
    })?;
    let mut counts = CsrMatrix {
        n_rows: h.cols,
        n_cols: h.rows,
        indptr: per_cell,
        indices,
        data,
    };
    counts.canonicalize();
    counts
        .validate_structure()
        .map_err(|e| Error::format(&mtx, e.to_string()))?;

    let source = dir.display().to_string();
    let (genes, map) = gex_filter(ids, names, types, None, &source);
    Ok(TenxMtx {
        counts: keep_genes(counts, &map),
        genes,
        barcodes,
        dir: dir.to_path_buf(),
    })
}
