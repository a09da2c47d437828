//! Open any supported input by its form: an `.h5ad` file, a scvi-rs store, a 10x `.h5` file or a 10x
//! MTX folder. Warnings (non-integer counts, renamed genes) are returned for the caller to print.

use super::h5ad::{read_h5ad_with_summary, H5adOptions};
use super::Dataset;
use crate::error::{Error, Result};
use std::path::Path;

/// A data set and the warnings its reading produced.
pub struct Opened {
    pub data: Dataset,
    pub warnings: Vec<String>,
}

pub fn open_dataset(path: &Path, layer: Option<&str>) -> Result<Opened> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "h5ad" => {
            let opts = H5adOptions {
                layer: layer.map(str::to_string),
            };
            let (data, summary) = read_h5ad_with_summary(path, &opts)?;
            let field = layer
                .map(|l| format!("layers/{l}"))
                .unwrap_or_else(|| "X".into());
            let warnings = summary.warning(&data.source, &field).into_iter().collect();
            Ok(Opened { data, warnings })
        }
        // A store, a 10x .h5 file or a 10x MTX folder (the store's reader tells them apart and
        // says what it expected when the input is none of them).
        _ => Ok(Opened {
            data: crate::store::input::load_dataset(path, layer)?,
            warnings: Vec::new(),
        }),
    }
}
