//! Writing a cells x dims matrix as `.npy` (little-endian f32, C order, numpy format 1.0) or `.csv`
//! (a header, then the cell name and its values per line), atomically.

use crate::atomic::write_file;
use crate::error::{Error, Result};
use std::fmt::Write as _;
use std::path::Path;

/// The header of a C-order little-endian f32 `.npy` of `shape` (numpy format 1.0).
pub fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic (6) + version (2) + header length (2) + header + '\n', padded to a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

pub fn npy_bytes(values: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let mut out = npy_header(&[rows, cols]);
    out.reserve(values.len() * 4);
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
        s.push_str(&csv_field(name));
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

/// A cells x columns f32 matrix written chunk of rows by chunk of rows, by the extension of its
/// path: `.npy` (the header first: the shape is known) or `.csv` (a header `cell,<column names>`,
/// then each cell's name and values). Written under a temporary name, renamed by
/// [`finish`](Self::finish); dropped unfinished, nothing is left.
pub struct MatrixFile {
    target: crate::atomic::AtomicFile,
    w: std::io::BufWriter<std::fs::File>,
    csv_rows: Option<Vec<String>>,
    n_rows: usize,
    n_cols: usize,
    written: usize,
}

impl MatrixFile {
    /// Start `path` (`.npy` or `.csv`) for `n_rows` rows named `row_names` (used by `.csv`) and
    /// columns named `col_names`. An existing `path` is replaced only with `force`.
    pub fn create(
        path: &Path,
        force: bool,
        flag: &str,
        row_names: &[String],
        col_names: &[String],
    ) -> Result<MatrixFile> {
        use std::io::Write as _;
        let csv = match path.extension().and_then(|e| e.to_str()) {
            Some("npy") => false,
            Some("csv") => true,
            _ => {
                return Err(Error::Config(format!(
                    "{}: the output must end in .npy or .csv",
                    path.display()
                )))
            }
        };
        let mut target = crate::atomic::AtomicFile::create(path, force, flag)?;
        let tmp = target.path().to_path_buf();
        let f = target.file().try_clone().map_err(|e| Error::io(&tmp, e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let (n_rows, n_cols) = (row_names.len(), col_names.len());
        let head = if csv {
            let mut s = String::from("cell");
            for c in col_names {
                s.push(',');
                s.push_str(&csv_field(c));
            }
            s.push('\n');
            s.into_bytes()
        } else {
            npy_header(&[n_rows, n_cols])
        };
        w.write_all(&head).map_err(|e| Error::io(&tmp, e))?;
        Ok(MatrixFile {
            target,
            w,
            csv_rows: csv.then(|| row_names.to_vec()),
            n_rows,
            n_cols,
            written: 0,
        })
    }

    /// The next rows, `[n, n_cols]` row-major.
    pub fn rows(&mut self, values: &[f32]) -> Result<()> {
        use std::io::Write as _;
        let n = values.len() / self.n_cols.max(1);
        if n * self.n_cols != values.len() || self.written + n > self.n_rows {
            return Err(Error::Shape(format!(
                "{}: {} values do not continue a {} x {} matrix at row {}",
                self.target.target().display(),
                values.len(),
                self.n_rows,
                self.n_cols,
                self.written
            )));
        }
        let mut buf = Vec::with_capacity(values.len() * 4);
        match &self.csv_rows {
            None => values
                .iter()
                .for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
            Some(names) => {
                let mut s = String::new();
                for (i, row) in values.chunks(self.n_cols).enumerate() {
                    s.push_str(&csv_field(&names[self.written + i]));
                    for v in row {
                        let _ = write!(s, ",{v}");
                    }
                    s.push('\n');
                }
                buf = s.into_bytes();
            }
        }
        self.written += n;
        let tmp = self.target.path().to_path_buf();
        self.w.write_all(&buf).map_err(|e| Error::io(&tmp, e))
    }

    /// Check that every row came, flush and rename into place.
    pub fn finish(self) -> Result<()> {
        use std::io::Write as _;
        let MatrixFile {
            target,
            mut w,
            n_rows,
            written,
            ..
        } = self;
        if written != n_rows {
            return Err(Error::Shape(format!(
                "{}: {written} of {n_rows} rows written",
                target.target().display()
            )));
        }
        w.flush().map_err(|e| Error::io(target.path(), e))?;
        drop(w);
        target.commit()
    }
}

/// A CSV field, quoted when it needs to be.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
