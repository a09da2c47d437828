//! Writing a cells x dims matrix as `.npy` (little-endian f32, C order, numpy format 1.0) or `.csv`
//! (a header, then the cell name and its values per line), atomically.

use crate::atomic::write_file;
use crate::error::{Error, Result};
use std::fmt::Write as _;
use std::path::Path;

pub fn npy_bytes(values: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + header + '\n', padded to a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + values.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    values
        .iter()
        .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    out
}

pub fn csv_text(
    values: &[f32],
    rows: usize,
    cols: usize,
    row_names: &[String],
    prefix: &str,
) -> String {
    let mut s = String::from("cell");
    (0..cols).for_each(|j| {
        let _ = write!(s, ",{prefix}{j}");
    });
    s.push('\n');
    for i in 0..rows {
        let name = row_names.get(i).map(|n| n.as_str()).unwrap_or("");
        if name.contains([',', '"', '\n']) {
            let _ = write!(s, "\"{}\"", name.replace('"', "\"\""));
        } else {
            s.push_str(name);
        }
        for v in &values[i * cols..(i + 1) * cols] {
            let _ = write!(s, ",{v}");
        }
        s.push('\n');
    }
    s
}

/// Write by the extension of `path`: `.npy` or `.csv`. An existing `path` is replaced only with
/// `force` (see `crate::atomic`).
pub fn write_matrix(
    path: &Path,
    values: &[f32],
    rows: usize,
    cols: usize,
    row_names: &[String],
    prefix: &str,
    force: bool,
) -> Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => write_file(path, &npy_bytes(values, rows, cols), force, "--out"),
        Some("csv") => write_file(
            path,
            csv_text(values, rows, cols, row_names, prefix).as_bytes(),
            force,
            "--out",
        ),
        _ => Err(Error::Config(format!(
            "{}: the output must end in .npy or .csv",
            path.display()
        ))),
    }
}
