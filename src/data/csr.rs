//! Compressed sparse rows: the one in-memory form of a count matrix (cells x genes).
//!
//! Row pointers are 64-bit so that more than 2^31 non-zeros work; column indices are 32-bit (genes).
//! The engine only ever reads rows through [`SparseRows`], so an in-memory matrix and a memory-mapped
//! store look the same to it.

use crate::error::{Error, Result};

/// Read access to the rows of a sparse count matrix (cells x genes).
pub trait SparseRows: Send + Sync {
    fn n_rows(&self) -> usize;
    fn n_cols(&self) -> usize;
    fn nnz(&self) -> u64;
    /// Column indices (strictly increasing) and values of row `i`.
    fn row(&self, i: usize) -> (&[u32], &[f32]);

    /// Give back memory the rows read so far hold that can be re-read on demand (the resident
    /// pages of a memory-mapped file). The default, for matrices in memory, does nothing.
    fn release(&self) {}

    /// Say that rows will be read in random order (training), so a memory-mapped matrix stops
    /// reading ahead and mapping neighbouring pages. The default does nothing.
    fn expect_random_access(&self) {}

    /// Sum of the values of row `i` (the observed library size).
    fn row_sum(&self, i: usize) -> f64 {
        self.row(i).1.iter().map(|&v| v as f64).sum()
    }
}

/// An owned CSR matrix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CsrMatrix {
    pub n_rows: usize,
    pub n_cols: usize,
    /// `n_rows + 1` offsets into `indices` / `data`.
    pub indptr: Vec<u64>,
    pub indices: Vec<u32>,
    pub data: Vec<f32>,
}

impl CsrMatrix {
    /// An empty matrix with `n_cols` columns, to be filled with [`CsrMatrix::push_row`].
    pub fn with_cols(n_cols: usize) -> Self {
        CsrMatrix {
            n_rows: 0,
            n_cols,
            indptr: vec![0],
            indices: Vec::new(),
            data: Vec::new(),
        }
    }

    /// Append a row given as (column, value) pairs with increasing columns; zeros are dropped.
    pub fn push_row(&mut self, entries: impl IntoIterator<Item = (u32, f32)>) {
        for (j, v) in entries {
            if v != 0.0 {
                self.indices.push(j);
                self.data.push(v);
            }
        }
        self.indptr.push(self.indices.len() as u64);
        self.n_rows += 1;
    }

    /// Build from raw parts, checking that they describe a valid matrix.
    pub fn from_parts(
        n_rows: usize,
        n_cols: usize,
        indptr: Vec<u64>,
        indices: Vec<u32>,
        data: Vec<f32>,
    ) -> Result<Self> {
        let m = CsrMatrix {
            n_rows,
            n_cols,
            indptr,
            indices,
            data,
        };
        m.validate_structure()?;
        Ok(m)
    }

    /// Dense row-major `n_rows x n_cols` (for tests and small data only).
    pub fn to_dense(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.n_rows * self.n_cols];
        for i in 0..self.n_rows {
            let (idx, val) = self.row(i);
            for (&j, &v) in idx.iter().zip(val) {
                out[i * self.n_cols + j as usize] = v;
            }
        }
        out
    }

    /// Structure checks: sizes agree, row pointers never decrease, columns in range and increasing.
    pub fn validate_structure(&self) -> Result<()> {
        if self.indptr.len() != self.n_rows + 1 {
            return Err(Error::Shape(format!(
                "indptr has {} entries, expected n_rows + 1 = {}",
                self.indptr.len(),
                self.n_rows + 1
            )));
        }
        if self.indices.len() != self.data.len() {
            return Err(Error::Shape(format!(
                "{} column indices but {} values",
                self.indices.len(),
                self.data.len()
            )));
        }
        if self.indptr[0] != 0 || *self.indptr.last().unwrap() as usize != self.indices.len() {
            return Err(Error::Shape(format!(
                "indptr must run from 0 to nnz = {}, runs from {} to {}",
                self.indices.len(),
                self.indptr[0],
                self.indptr.last().unwrap()
            )));
        }
        for i in 0..self.n_rows {
            let (a, b) = (self.indptr[i], self.indptr[i + 1]);
            if b < a {
                return Err(Error::Shape(format!("indptr decreases at row {i}")));
            }
            let idx = &self.indices[a as usize..b as usize];
            for w in idx.windows(2) {
                if w[1] <= w[0] {
                    return Err(Error::Shape(format!(
                        "column indices of row {i} are not strictly increasing"
                    )));
                }
            }
            if let Some(&j) = idx.last() {
                if j as usize >= self.n_cols {
                    return Err(Error::Shape(format!(
                        "row {i} has column index {j}, but there are only {} columns",
                        self.n_cols
                    )));
                }
            }
        }
        Ok(())
    }

    /// Keep only the given rows, in the given order.
    pub fn select_rows(&self, rows: &[usize]) -> CsrMatrix {
        let mut out = CsrMatrix::with_cols(self.n_cols);
        for &i in rows {
            let (idx, val) = self.row(i);
            out.push_row(idx.iter().copied().zip(val.iter().copied()));
        }
        out
    }
}

impl SparseRows for CsrMatrix {
    fn n_rows(&self) -> usize {
        self.n_rows
    }
    fn n_cols(&self) -> usize {
        self.n_cols
    }
    fn nnz(&self) -> u64 {
        self.indices.len() as u64
    }
    fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[i] as usize, self.indptr[i + 1] as usize);
        (&self.indices[a..b], &self.data[a..b])
    }
}
