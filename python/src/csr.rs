//! A scipy CSR matrix read in place: [`BorrowedCsr`] implements the core's `SparseRows` over the
//! `indptr` / `indices` / `data` buffers of numpy arrays, which it keeps alive. Nothing is copied;
//! the checks the file readers make (structure, and values non-negative and finite) run over the
//! buffers once, a chunk of rows at a time, through the core's own `CsrMatrix::from_parts` and
//! `CountChecks`, so memory stays at one chunk whatever the matrix size.

use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use scvi_rs::data::validate::{CountChecks, CountSummary};
use scvi_rs::data::{CsrMatrix, SparseRows};
use scvi_rs::{Error, Result};

/// Stored values checked per chunk: bounds the memory of the one-pass validation.
const CHECK_CHUNK_NNZ: usize = 1 << 22;

/// Row offsets as scipy keeps them: int32 for small matrices, int64 for large ones.
enum Indptr {
    I32(*const i32),
    I64(*const i64),
}

/// `SparseRows` over borrowed numpy buffers.
pub struct BorrowedCsr {
    n_rows: usize,
    n_cols: usize,
    indptr: Indptr,
    indices: *const u32,
    data: *const f32,
    nnz: usize,
    /// The arrays whose buffers the pointers above point into, held so they outlive this.
    _owners: [Py<PyAny>; 3],
}

// SAFETY: the pointers point into numpy buffers owned by the arrays in `_owners`, which this keeps
// alive, and numpy never moves the buffer of an array that others reference (resizing one
// refuses). Only reads happen through them, from any thread.
unsafe impl Send for BorrowedCsr {}
unsafe impl Sync for BorrowedCsr {}

fn contiguous<'py, T: numpy::Element>(
    a: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<Option<Bound<'py, PyArray1<T>>>> {
    let Ok(arr) = a.downcast::<PyArray1<T>>() else {
        return Ok(None);
    };
    if !arr.is_c_contiguous() {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "the CSR matrix's {what} array is not contiguous"
        )));
    }
    Ok(Some(arr.clone()))
}

impl BorrowedCsr {
    /// Borrow the three arrays (indptr int32 or int64, indices int32, data float32) of a CSR
    /// matrix with `n_cols` columns. Fails with a `TypeError` naming the array whose type differs
    /// (the Python side converts those first).
    pub fn new(
        indptr: &Bound<'_, PyAny>,
        indices: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        n_cols: usize,
    ) -> PyResult<Self> {
        let type_err = |what: &str, want: &str| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "the CSR matrix's {what} array must be {want}"
            ))
        };
        let (ptr, n_rows) = if let Some(a) = contiguous::<i64>(indptr, "indptr")? {
            (Indptr::I64(a.data() as *const i64), a.len())
        } else if let Some(a) = contiguous::<i32>(indptr, "indptr")? {
            (Indptr::I32(a.data() as *const i32), a.len())
        } else {
            return Err(type_err("indptr", "int32 or int64"));
        };
        let idx =
            contiguous::<i32>(indices, "indices")?.ok_or_else(|| type_err("indices", "int32"))?;
        let val = contiguous::<f32>(data, "data")?.ok_or_else(|| type_err("data", "float32"))?;
        if n_rows == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "the CSR matrix's indptr array is empty",
            ));
        }
        Ok(BorrowedCsr {
            n_rows: n_rows - 1,
            n_cols,
            indptr: ptr,
            // A negative int32 index reads as a huge u32, which the structure check refuses as
            // beyond the columns: the reinterpretation never lets one through.
            indices: idx.data() as *const u32,
            data: val.data() as *const f32,
            nnz: idx.len().min(val.len()),
            _owners: [
                indptr.clone().unbind(),
                indices.clone().unbind(),
                data.clone().unbind(),
            ],
        })
    }

    /// The raw offset of row `i` (may be anything before [`BorrowedCsr::check`] has passed).
    fn offset(&self, i: usize) -> i64 {
        // SAFETY: i <= n_rows, and indptr holds n_rows + 1 entries.
        unsafe {
            match self.indptr {
                Indptr::I32(p) => *p.add(i) as i64,
                Indptr::I64(p) => *p.add(i),
            }
        }
    }

    /// The addresses of the three buffers read (for tests that prove nothing was copied).
    pub fn addresses(&self) -> (usize, usize, usize) {
        let p = match self.indptr {
            Indptr::I32(p) => p as usize,
            Indptr::I64(p) => p as usize,
        };
        (p, self.indices as usize, self.data as usize)
    }

    /// The file readers' checks over every row, a chunk at a time: offsets within the buffers and
    /// not decreasing, columns in range and strictly increasing, values non-negative and finite.
    /// `source` and `field` name the matrix in messages.
    pub fn check(&self, source: &str, field: &str) -> Result<CountSummary> {
        let mut checks = CountChecks::new(source, field);
        let first = self.offset(0);
        if first != 0 || self.offset(self.n_rows) as u64 != self.nnz as u64 {
            return Err(Error::Shape(format!(
                "{source}: {field}: indptr must run from 0 to nnz = {}, runs from {first} to {}",
                self.nnz,
                self.offset(self.n_rows)
            )));
        }
        let mut row = 0;
        while row < self.n_rows {
            // Rows up to CHECK_CHUNK_NNZ values (at least one row).
            let start = self.offset(row);
            let mut end_row = row + 1;
            while end_row < self.n_rows
                && self.offset(end_row + 1) - start <= CHECK_CHUNK_NNZ as i64
            {
                end_row += 1;
            }
            let mut indptr = Vec::with_capacity(end_row - row + 1);
            for r in row..=end_row {
                let o = self.offset(r);
                if o < start || o as u64 > self.nnz as u64 {
                    return Err(Error::Shape(format!(
                        "{source}: {field}: indptr decreases or leaves the buffers at row {r}"
                    )));
                }
                indptr.push((o - start) as u64);
            }
            let (a, b) = (start as usize, self.offset(end_row) as usize);
            // SAFETY: 0 <= a <= b <= nnz, checked just above.
            let (idx, val) = unsafe {
                (
                    std::slice::from_raw_parts(self.indices.add(a), b - a),
                    std::slice::from_raw_parts(self.data.add(a), b - a),
                )
            };
            let chunk = CsrMatrix::from_parts(
                end_row - row,
                self.n_cols,
                indptr,
                idx.to_vec(),
                val.to_vec(),
            )
            .map_err(|e| match e {
                // Row numbers in the message count from the chunk's first row.
                Error::Shape(m) => {
                    Error::Shape(format!("{source}: {field}: {m} (rows counted from {row})"))
                }
                other => other,
            })?;
            checks.check_chunk(row, &chunk)?;
            row = end_row;
        }
        checks.finish()
    }
}

impl SparseRows for BorrowedCsr {
    fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.offset(i) as usize, self.offset(i + 1) as usize);
        // SAFETY: `check` (run before any `Dataset` holds this) proved 0 <= a <= b <= nnz.
        unsafe {
            (
                std::slice::from_raw_parts(self.indices.add(a), b - a),
                std::slice::from_raw_parts(self.data.add(a), b - a),
            )
        }
    }
    fn n_rows(&self) -> usize {
        self.n_rows
    }
    /// The last row offset (equal to the buffers' length once checked).
    fn nnz(&self) -> u64 {
        self.offset(self.n_rows) as u64
    }
    fn n_cols(&self) -> usize {
        self.n_cols
    }
}
