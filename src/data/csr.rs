//! Compressed sparse rows: the one in-memory form of a count matrix (cells x genes).
//!
//! Row pointers are 64-bit so that more than 2^31 non-zeros work; column indices are 32-bit (genes).
//! The engine only ever reads rows through [`SparseRows`], so an in-memory matrix and a memory-mapped
//! store look the same to it.

use super::counts::row_fault;
use crate::error::{Error, Result};

/// Read access to the rows of a sparse count matrix (cells x genes).
pub trait SparseRows: Send + Sync {
    fn n_rows(&self) -> usize;
    fn n_cols(&self) -> usize;
    fn nnz(&self) -> u64;
    /// Column indices and values of row `i`: slices of the matrix's arrays, always in bounds, but
    /// trustworthy (indices in range and strictly increasing, values counts) only after
    /// [`check_row`](Self::check_row) said so, for a matrix whose arrays nobody checked.
    fn row(&self, i: usize) -> (&[u32], &[f32]);

    /// An error when row `i` is not a valid row of counts (see
    /// [`row_fault`](super::counts::row_fault)). Everything that hands rows to the engines (the
    /// minibatch loader, the passes over a whole matrix) calls it first, so a matrix whose arrays
    /// were never checked (a memory-mapped store, a matrix built by hand) cannot make them index
    /// out of range or train on NaN. A store names its file; this default names only the row.
    fn check_row(&self, i: usize) -> Result<()> {
        let (idx, val) = self.row(i);
        match row_fault(idx, val, self.n_cols()) {
            None => Ok(()),
            Some(f) => Err(Error::Data(format!("count matrix row {i}: {f}"))),
        }
    }

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

    /// Rows `r0..r1` of any row source, copied as they are (explicit zeros included).
    pub fn from_rows(src: &dyn SparseRows, r0: usize, r1: usize) -> CsrMatrix {
        let mut out = CsrMatrix::with_cols(src.n_cols());
        for i in r0..r1 {
            let (j, v) = src.row(i);
            out.indices.extend_from_slice(j);
            out.data.extend_from_slice(v);
            out.indptr.push(out.indices.len() as u64);
            out.n_rows += 1;
        }
        out
    }

    /// Append the rows of `other` (same number of columns) below these.
    pub fn append_rows(&mut self, other: &CsrMatrix) {
        let (a, b) = (other.indptr[0], other.indptr[other.n_rows]);
        let base = self.indices.len() as u64;
        self.indices
            .extend_from_slice(&other.indices[a as usize..b as usize]);
        self.data
            .extend_from_slice(&other.data[a as usize..b as usize]);
        self.indptr
            .extend(other.indptr[1..].iter().map(|&p| p - a + base));
        self.n_rows += other.n_rows;
    }

    /// Make every row canonical: columns sorted, repeated columns summed (in their stored order),
    /// as scipy's `sum_duplicates` does. Explicit zeros stay. One read-only pass when the rows are
    /// already canonical, as the files nearly always store them.
    pub fn canonicalize(&mut self) {
        let canonical = (0..self.n_rows).all(|i| self.row(i).0.windows(2).all(|w| w[0] < w[1]));
        if canonical {
            return;
        }
        let mut indices = Vec::with_capacity(self.indices.len());
        let mut data = Vec::with_capacity(self.data.len());
        let mut pairs: Vec<(u32, f32)> = Vec::new();
        for i in 0..self.n_rows {
            let (j, v) = self.row(i);
            pairs.clear();
            pairs.extend(j.iter().copied().zip(v.iter().copied()));
            // Stable, so repeats are summed left to right.
            pairs.sort_by_key(|p| p.0);
            let row_start = indices.len();
            for &(j, v) in &pairs {
                if indices.len() > row_start && indices.last() == Some(&j) {
                    *data.last_mut().unwrap() += v;
                } else {
                    indices.push(j);
                    data.push(v);
                }
            }
            self.indptr[i] = row_start as u64;
        }
        self.indptr[self.n_rows] = indices.len() as u64;
        self.indices = indices;
        self.data = data;
    }

    /// The columns that `map` keeps, renumbered; values as they are (explicit zeros included).
    pub fn select_columns(&self, map: &ColumnMap) -> CsrMatrix {
        let mut out = CsrMatrix::with_cols(map.n_new);
        let mut row: Vec<(u32, f32)> = Vec::new();
        for i in 0..self.n_rows {
            let (j, v) = self.row(i);
            row.clear();
            for (&j, &v) in j.iter().zip(v) {
                let m = map.new_of[j as usize];
                if m != ColumnMap::DROPPED {
                    row.push((m, v));
                }
            }
            if !map.in_order {
                row.sort_unstable_by_key(|p| p.0);
            }
            out.indices.extend(row.iter().map(|p| p.0));
            out.data.extend(row.iter().map(|p| p.1));
            out.indptr.push(out.indices.len() as u64);
            out.n_rows += 1;
        }
        out
    }

    /// The same rows without their explicit zeros (the matrix itself when it has none).
    pub fn without_zeros(self) -> CsrMatrix {
        if !self.data.contains(&0.0) {
            return self;
        }
        let mut out = CsrMatrix::with_cols(self.n_cols);
        for i in 0..self.n_rows {
            let (j, v) = self.row(i);
            out.push_row(j.iter().copied().zip(v.iter().copied()));
        }
        out
    }
}

/// Which columns of a matrix to keep, and where each goes: old column -> new column.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnMap {
    /// New index of every old column, or [`ColumnMap::DROPPED`].
    new_of: Vec<u32>,
    n_new: usize,
    /// The kept columns keep their relative order (rows stay sorted without a sort).
    in_order: bool,
}

impl ColumnMap {
    const DROPPED: u32 = u32::MAX;

    /// Keep the old columns `keep`, in that order (old column `keep[k]` becomes column `k`).
    pub fn keep(n_old: usize, keep: &[usize]) -> ColumnMap {
        let mut new_of = vec![Self::DROPPED; n_old];
        for (new, &old) in keep.iter().enumerate() {
            new_of[old] = new as u32;
        }
        ColumnMap {
            new_of,
            n_new: keep.len(),
            in_order: keep.windows(2).all(|w| w[0] < w[1]),
        }
    }

    /// Keep the columns where `mask` is true, in their order.
    pub fn from_mask(mask: &[bool]) -> ColumnMap {
        let keep: Vec<usize> = (0..mask.len()).filter(|&j| mask[j]).collect();
        ColumnMap::keep(mask.len(), &keep)
    }

    /// Number of columns after selection.
    pub fn n_new(&self) -> usize {
        self.n_new
    }

    /// Every column kept where it was.
    pub fn is_identity(&self) -> bool {
        self.n_new == self.new_of.len() && self.in_order
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_rows_sum_duplicates() {
        let mut m = CsrMatrix {
            n_rows: 2,
            n_cols: 4,
            indptr: vec![0, 3, 4],
            indices: vec![3, 0, 3, 1],
            data: vec![1.0, 2.0, 5.0, 1.0],
        };
        m.canonicalize();
        assert_eq!(m.indptr, vec![0, 2, 3]);
        assert_eq!(m.indices, vec![0, 3, 1]);
        assert_eq!(m.data, vec![2.0, 6.0, 1.0]);
    }

    #[test]
    fn columns_rows_and_zeros() {
        let mut m = CsrMatrix::with_cols(4);
        m.push_row([(0, 1.0), (2, 3.0), (3, 4.0)]);
        m.push_row([(1, 2.0)]);
        // Reordered: old 3 -> 0, old 0 -> 1; rows come out sorted by the new column.
        let s = m.select_columns(&ColumnMap::keep(4, &[3, 0]));
        assert_eq!((s.n_rows, s.n_cols), (2, 2));
        assert_eq!(s.row(0), (&[0u32, 1][..], &[4.0f32, 1.0][..]));
        assert_eq!(s.row(1).0.len(), 0);
        assert!(ColumnMap::keep(4, &[0, 1, 2, 3]).is_identity());
        assert!(!ColumnMap::from_mask(&[true, false]).is_identity());

        let mut all = m.select_rows(&[1]);
        all.append_rows(&m);
        assert_eq!(all.n_rows, 3);
        assert_eq!(all.row(2), m.row(1));
        all.validate_structure().unwrap();
        assert_eq!(CsrMatrix::from_rows(&all, 1, 3), m);

        let z = CsrMatrix::from_parts(1, 2, vec![0, 2], vec![0, 1], vec![0.0, 5.0]).unwrap();
        assert_eq!(z.without_zeros().row(0), (&[1u32][..], &[5.0f32][..]));
    }
}
