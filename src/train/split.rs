//! The train / validation split, as scvi-tools' `DataSplitter` makes it: `n_train = ceil(train_size
//! n)`, the rest validation, from a seeded permutation; a trailing training minibatch of 1 or 2 cells
//! is moved to validation (BatchNorm cannot train on one cell, and scvi-tools avoids two).

use crate::error::{Error, Result};
use crate::rng::{Philox, Stream};

#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
}

pub fn train_validation_split(
    n: usize,
    train_size: f64,
    batch_size: usize,
    seed: u64,
) -> Result<Split> {
    if !(train_size > 0.0 && train_size <= 1.0) {
        return Err(Error::Config(format!(
            "train_size must be in (0, 1], got {train_size}"
        )));
    }
    if n == 0 {
        return Err(Error::Data("no cells to train on".into()));
    }
    let mut n_train = ((train_size * n as f64).ceil() as usize).min(n);
    let rem = n_train % batch_size;
    if (1..3).contains(&rem) && n_train > rem {
        n_train -= rem;
    }
    let perm = Philox::new(seed).permutation(Stream::Split, 0, n);
    let n_val = n - n_train;
    let mut validation = perm[..n_val].to_vec();
    let mut train = perm[n_val..].to_vec();
    validation.sort_unstable();
    train.sort_unstable();
    Ok(Split { train, validation })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_scvi_tools() {
        let s = train_validation_split(1000, 0.9, 128, 0).unwrap();
        assert_eq!(s.train.len(), 900);
        assert_eq!(s.validation.len(), 100);
        // ceil(0.9 * 143) = 129 = 128 + 1: the lone cell goes to validation.
        let s = train_validation_split(143, 0.9, 128, 0).unwrap();
        assert_eq!((s.train.len(), s.validation.len()), (128, 15));
        let mut all: Vec<usize> = s.train.iter().chain(&s.validation).copied().collect();
        all.sort();
        assert_eq!(all, (0..143).collect::<Vec<_>>());
        assert_eq!(
            train_validation_split(50, 1.0, 128, 0)
                .unwrap()
                .validation
                .len(),
            0
        );
    }
}
