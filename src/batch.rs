//! A minibatch as the engines see it: the gathered sparse rows of B cells with their covariates.

use crate::data::SparseRows;

/// B cells' counts as CSR rows (indices into the genes), their batch and label codes and their
/// observed log library size `log(sum_g x_g)`.
#[derive(Clone, Debug, Default)]
pub struct Minibatch {
    pub n_genes: usize,
    /// Row ids of the cells in the data set.
    pub cells: Vec<usize>,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
    pub batch: Vec<u32>,
    pub labels: Vec<u32>,
    pub log_library: Vec<f64>,
}

impl Minibatch {
    pub fn len(&self) -> usize {
        self.cells.len()
    }
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// Column indices and values of row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[i], self.indptr[i + 1]);
        (&self.indices[a..b], &self.values[a..b])
    }

    /// Refill from rows of `x` (the one copy of a minibatch), reusing the allocations. Its device
    /// twin, for data held on the GPU: kernels/gather.cu.
    pub fn gather(
        &mut self,
        x: &dyn SparseRows,
        cells: &[usize],
        batch_codes: &[u32],
        label_codes: &[u32],
    ) {
        self.n_genes = x.n_cols();
        self.cells.clear();
        self.indptr.clear();
        self.indices.clear();
        self.values.clear();
        self.batch.clear();
        self.labels.clear();
        self.log_library.clear();
        self.indptr.push(0);
        for &c in cells {
            let (idx, val) = x.row(c);
            self.indices.extend_from_slice(idx);
            self.values.extend_from_slice(val);
            self.indptr.push(self.indices.len());
            self.cells.push(c);
            self.batch.push(batch_codes.get(c).copied().unwrap_or(0));
            self.labels.push(label_codes.get(c).copied().unwrap_or(0));
            self.log_library
                .push(val.iter().map(|&v| v as f64).sum::<f64>().ln());
        }
    }

    /// A minibatch from dense rows (tests and fixtures).
    pub fn from_dense(x: &[f64], n_genes: usize, batch: Vec<u32>, labels: Vec<u32>) -> Self {
        let mut m = Minibatch {
            n_genes,
            indptr: vec![0],
            ..Default::default()
        };
        for (i, row) in x.chunks(n_genes).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    m.indices.push(j as u32);
                    m.values.push(v as f32);
                }
            }
            m.indptr.push(m.indices.len());
            m.cells.push(i);
            m.log_library.push(row.iter().sum::<f64>().ln());
        }
        m.batch = batch;
        m.labels = labels;
        m
    }
}
