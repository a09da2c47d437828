//! Looking at data sets in tests.

use scvi_rs::data::Dataset;

/// The obs column `key` made categorical (codes, categories), as a batch or label key is.
pub fn categorical(ds: &Dataset, key: &str) -> (Vec<u32>, Vec<String>) {
    ds.obs_column(key).unwrap().to_categorical(key).unwrap()
}

/// The names of the genes where `chosen` is true, in gene order.
pub fn chosen_names<'a>(names: &'a [String], chosen: &[bool]) -> Vec<&'a str> {
    names
        .iter()
        .zip(chosen)
        .filter(|(_, &c)| c)
        .map(|(g, _)| g.as_str())
        .collect()
}
