//! Value checks on count matrices, shared by every reader and run on each chunk of rows as it is
//! read, so that a bad value is reported with its cell and gene before the whole matrix is held.
//!
//! scVI models non-negative whole counts. A negative, NaN or infinite value makes the likelihood
//! meaningless, so it is an error naming the file, the field (`X`, `layers/counts`, ...), the cell
//! (row) and the gene (column) and the value. Non-integer values are not errors: scvi-tools only
//! warns about them (normalised data still trains, just not on the model it assumes), so they are
//! counted and [`CountChecks::finish`] hands them to the caller to warn. Cells whose counts are all
//! zero are not checked here: the trainer deals with them.
//!
//! Counts too large to be counts are errors as well (above [`MAX_COUNT`]), and counts above 2^24,
//! which float32 cannot hold exactly, a warning (see [`MAX_COUNT`] for why these two limits).
//!
//! [`row_fault`] is the same check for one row whose arrays nobody checked (a memory-mapped store
//! trusts its files only as far as their checksums, which are not recomputed at every open): gene
//! indices in range and strictly increasing, values counts. The loader runs it on every row it
//! gathers, so a corrupt store is an error naming the file and the row, never a panic.

use super::counts::value_said;
pub use super::counts::{
    bad_value_kind, is_count, row_fault, RowFault, F32_EXACT_LIMIT, MAX_COUNT,
};
use super::csr::CsrMatrix;
use crate::error::{Error, Result};

/// Running state of the checks over the chunks of one matrix.
#[derive(Clone, Debug)]
pub struct CountChecks {
    source: String,
    field: String,
    summary: CountSummary,
}

/// What the checks found that is not an error.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CountSummary {
    /// The first non-integer value met: (row, i.e. cell index; column, i.e. gene index; value).
    pub non_integer: Option<(usize, u32, f32)>,
    /// How many stored values are not whole numbers.
    pub n_non_integer: u64,
    /// The first value above 2^24 (not exactly representable in f32): (row, column, value).
    pub above_exact: Option<(usize, u32, f32)>,
    /// How many stored values are above 2^24.
    pub n_above_exact: u64,
}

impl CountSummary {
    /// The warning scvi-tools would give for these values (None when every value is a whole
    /// number). `source` and `field` name the file and the matrix in it, as for [`CountChecks`].
    pub fn warning(&self, source: &str, field: &str) -> Option<String> {
        let (row, col, v) = self.non_integer?;
        Some(format!(
            "{source}: {field} contains non-integer values ({} of them; the first is {v} at cell \
             {row}, gene {col}); scVI expects raw counts (unnormalized whole numbers), so the \
             model will not fit these data as intended",
            self.n_non_integer
        ))
    }

    /// The warning for counts above 2^24, which f32 rounds (None when there are none).
    pub fn large_warning(&self, source: &str, field: &str) -> Option<String> {
        let (row, col, v) = self.above_exact?;
        Some(format!(
            "{source}: {field} holds {} counts above 2^24 = 16,777,216 (the first is {v} at cell \
             {row}, gene {col}); float32, in which scVI trains, rounds such counts",
            self.n_above_exact
        ))
    }

    /// Every warning, one per line.
    pub fn warnings(&self, source: &str, field: &str) -> Vec<String> {
        [
            self.warning(source, field),
            self.large_warning(source, field),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl CountChecks {
    /// `source` names the file (or whatever the data came from), `field` the matrix in it.
    pub fn new(source: &str, field: &str) -> Self {
        CountChecks {
            source: source.to_string(),
            field: field.to_string(),
            summary: CountSummary::default(),
        }
    }

    /// The matrix checked, as messages name it (`X`, `layers/counts`, ...).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Check the stored values of `chunk`, whose first row is row `first_row` of the whole matrix.
    pub fn check_chunk(&mut self, first_row: usize, chunk: &CsrMatrix) -> Result<()> {
        // One branch-light pass over the values; rows are looked up only for what is reported.
        let s = &mut self.summary;
        for (k, &v) in chunk.data.iter().enumerate() {
            if is_count(v) {
                if v.fract() != 0.0 {
                    s.n_non_integer += 1;
                    if s.non_integer.is_none() {
                        let (row, col) = locate(chunk, k);
                        s.non_integer = Some((first_row + row, col, v));
                    }
                } else if v > F32_EXACT_LIMIT {
                    s.n_above_exact += 1;
                    if s.above_exact.is_none() {
                        let (row, col) = locate(chunk, k);
                        s.above_exact = Some((first_row + row, col, v));
                    }
                }
                continue;
            }
            let (row, col) = locate(chunk, k);
            return Err(Error::Data(format!(
                "{}: {} holds {} at cell {}, gene {col}; scVI needs raw counts \
                 (non-negative whole numbers up to 10^9)",
                self.source,
                self.field,
                value_said(v),
                first_row + row
            )));
        }
        Ok(())
    }

    /// End the checks and return what was found that is not an error.
    pub fn finish(self) -> Result<CountSummary> {
        Ok(self.summary)
    }
}

/// (row within the chunk, column) of the `k`-th stored value.
fn locate(chunk: &CsrMatrix, k: usize) -> (usize, u32) {
    let k64 = k as u64;
    // The row whose range [indptr[r], indptr[r + 1]) holds k: the last r with indptr[r] <= k.
    let row = chunk
        .indptr
        .partition_point(|&p| p <= k64)
        .saturating_sub(1);
    let col = chunk.indices.get(k).copied().unwrap_or(0);
    (row.min(chunk.n_rows.saturating_sub(1)), col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: &[&[(u32, f32)]]) -> CsrMatrix {
        let mut out = CsrMatrix::with_cols(4);
        for r in rows {
            out.push_row(r.iter().copied());
        }
        out
    }

    #[test]
    fn reports_row_and_gene_of_bad_values() {
        let chunk = m(&[&[(0, 1.0)], &[], &[(1, 2.0), (3, -1.0)]]);
        let mut c = CountChecks::new("f.h5ad", "X");
        let e = c.check_chunk(10, &chunk).unwrap_err().to_string();
        assert!(
            e.contains("f.h5ad") && e.contains("X") && e.contains("cell 12"),
            "{e}"
        );
        assert!(
            e.contains("gene 3") && e.contains("negative") && e.contains("-1"),
            "{e}"
        );

        let chunk = m(&[&[(2, f32::NAN)]]);
        let e = CountChecks::new("f", "X")
            .check_chunk(0, &chunk)
            .unwrap_err()
            .to_string();
        assert!(e.contains("NaN") && e.contains("cell 0, gene 2"), "{e}");
        let chunk = m(&[&[], &[(1, f32::INFINITY)]]);
        let e = CountChecks::new("f", "X")
            .check_chunk(5, &chunk)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("infinite") && e.contains("cell 6, gene 1"),
            "{e}"
        );
    }

    #[test]
    fn counts_too_large_are_errors_and_above_2_24_warnings() {
        let e = CountChecks::new("f", "X")
            .check_chunk(3, &m(&[&[(2, 1e30)]]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("10^9") && e.contains("cell 3, gene 2"), "{e}");
        let mut c = CountChecks::new("f", "X");
        c.check_chunk(0, &m(&[&[(0, 1e9)], &[(1, 3e7), (2, 4e7)]]))
            .unwrap();
        let s = c.finish().unwrap();
        assert_eq!((s.n_above_exact, s.above_exact), (3, Some((0, 0, 1e9))));
        let w = s.warnings("f", "X");
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("2^24") && w[0].contains("3 counts"), "{w:?}");
    }

    #[test]
    fn row_faults() {
        assert_eq!(row_fault(&[0, 2, 3], &[1.0, 2.0, 3.0], 4), None);
        assert_eq!(row_fault(&[], &[], 0), None);
        assert_eq!(
            row_fault(&[0, 4], &[1.0, 1.0], 4),
            Some(RowFault::GeneOutOfRange {
                k: 1,
                gene: 4,
                n_genes: 4
            })
        );
        assert_eq!(
            row_fault(&[1, 1], &[1.0, 1.0], 4),
            Some(RowFault::NotIncreasing {
                k: 1,
                prev: 1,
                gene: 1
            })
        );
        let f = row_fault(&[1, 2], &[1.0, f32::NAN], 4).unwrap();
        assert!(!f.in_indices() && f.to_string().contains("a NaN"), "{f}");
        assert!(row_fault(&[1], &[-0.5], 4).is_some());
        assert!(row_fault(&[1], &[2e9], 4).is_some());
        assert!(row_fault(&[1], &[f32::INFINITY], 4).is_some());
    }

    #[test]
    fn counts_non_integers() {
        let mut c = CountChecks::new("f", "X");
        c.check_chunk(0, &m(&[&[(0, 1.0)], &[(1, 2.0)]])).unwrap();
        c.check_chunk(2, &m(&[&[(0, 1.5), (2, 0.25)], &[(3, 7.0)]]))
            .unwrap();
        let s = c.finish().unwrap();
        assert_eq!(s.n_non_integer, 2);
        assert_eq!(s.non_integer, Some((2, 0, 1.5)));
        assert!(s.warning("f", "X").unwrap().contains("non-integer"));
        assert_eq!(CountSummary::default().warning("f", "X"), None);
    }
}
