//! Models moving both ways between scvi-rs and scvi-tools: `export` writes a scvi-rs model
//! directory as the directory `scvi.model.SCVI.save` writes (one `model.pt`, see
//! `model::scvi_tools`), `import` reads such a directory into a scvi-rs model directory. The
//! weights already carry scvi-tools' `state_dict` names and shapes, so both ways copy every
//! value unchanged (f32 to f32): a round trip gives the same bits.
//!
//! What does not travel: scvi-tools' training history is pickled as pandas internals, which the
//! reader (it never runs code) does not rebuild, so an imported model has an empty `history.csv`;
//! `seconds`, `cells_per_second` and `kl_weight` are scvi-rs' own history columns and are not
//! exported. The training settings (`TrainConfig`) are not part of a scvi-tools model directory.

use super::{ModelMeta, Scvi, Setup, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::model::io::MODEL_DIR;
use crate::model::scvi_tools::{
    self, AnnDataSetup, Covariate, HistoryColumn, ScviToolsModel, SCVI_TOOLS_VERSION,
};
use crate::train::{History, Split};
use std::path::Path;

/// The history file of a model directory.
const HISTORY_FILE: &str = "history.csv";
/// Columns of `history.csv` that scvi-tools' `history_` does not have.
const NOT_EXPORTED: &[&str] = &["epoch", "seconds", "cells_per_second", "kl_weight"];

/// A scvi-tools model read into scvi-rs, with what the user needs to know to use it.
pub struct Imported {
    pub model: Scvi,
    /// `setup_anndata(layer=...)`: embed etc. need `--layer` with this name.
    pub layer: Option<String>,
    /// The scvi-tools version that saved it.
    pub scvi_version: String,
}

impl Scvi {
    /// The model in scvi-tools' terms, with `history` and the AnnData layer its counts are in.
    pub fn to_scvi_tools(
        &self,
        history: Vec<HistoryColumn>,
        layer: Option<String>,
    ) -> ScviToolsModel {
        let m = &self.meta;
        ScviToolsModel {
            config: m.model.clone(),
            state: self.state.clone(),
            genes: m.genes.clone(),
            setup: AnnDataSetup {
                layer,
                batch: Covariate {
                    key: m.setup.batch_key.clone(),
                    categories: m.batch_categories.clone(),
                },
                labels: Covariate {
                    key: m.setup.labels_key.clone(),
                    categories: m.label_categories.clone(),
                },
            },
            n_cells: m.n_cells_trained,
            split: self
                .split
                .as_ref()
                .map(|s| (s.train.clone(), s.validation.clone())),
            history,
            scvi_version: SCVI_TOOLS_VERSION.to_string(),
        }
    }

    /// A scvi-rs model from a scvi-tools one (its training history is not carried: see the
    /// module documentation).
    pub fn from_scvi_tools(m: ScviToolsModel) -> Scvi {
        let split = m
            .split
            .map(|(train, validation)| Split { train, validation });
        let setup = m.setup;
        Scvi {
            meta: ModelMeta {
                scvi_rs_version: env!("CARGO_PKG_VERSION").to_string(),
                format_version: FORMAT_VERSION,
                model: m.config,
                setup: Setup {
                    batch_key: setup.batch.key,
                    labels_key: setup.labels.key,
                },
                genes: m.genes,
                batch_categories: setup.batch.categories,
                label_categories: setup.labels.categories,
                train: None,
                n_cells_trained: m.n_cells,
                engine: Some(format!("scvi-tools {}", m.scvi_version)),
                stopped_early: false,
            },
            state: m.state,
            history: History::default(),
            split,
        }
    }
}

/// The columns of a model directory's `history.csv` that scvi-tools keeps, each with the epochs
/// it has a value for (an empty cell: no validation that epoch). No file: no history.
pub fn read_history(dir: &Path) -> Result<Vec<HistoryColumn>> {
    let path = dir.join(HISTORY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let epoch_at = header
        .iter()
        .position(|&h| h == "epoch")
        .ok_or_else(|| Error::format(&path, "the header has no 'epoch' column"))?;
    let mut columns: Vec<HistoryColumn> = header
        .iter()
        .map(|&name| HistoryColumn {
            name: name.to_string(),
            epochs: Vec::new(),
            values: Vec::new(),
        })
        .collect();
    for (row, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        let bad = |what: String| Error::format(&path, format!("row {}: {what}", row + 1));
        if cells.len() != header.len() {
            return Err(bad(format!(
                "{} fields, the header has {}",
                cells.len(),
                header.len()
            )));
        }
        let epoch: i64 = cells[epoch_at]
            .parse()
            .map_err(|_| bad(format!("epoch '{}' is not a whole number", cells[epoch_at])))?;
        for (c, cell) in columns
            .iter_mut()
            .zip(&cells)
            .filter(|(_, v)| !v.is_empty())
        {
            let v: f64 = cell
                .parse()
                .map_err(|_| bad(format!("{} '{cell}' is not a number", c.name)))?;
            c.epochs.push(epoch);
            c.values.push(v);
        }
    }
    // An imported model's history is empty: no frames rather than empty ones.
    columns.retain(|c| !NOT_EXPORTED.contains(&c.name.as_str()) && !c.values.is_empty());
    Ok(columns)
}

/// `scvi-rs export`: the scvi-rs model directory `model_dir` as a scvi-tools model directory at
/// `out` (its counts in AnnData layer `layer`, None: X). `out` is refused if it exists, unless
/// `force` and it is an earlier export.
pub fn export(model_dir: &Path, out: &Path, layer: Option<String>, force: bool) -> Result<()> {
    let model = Scvi::load(model_dir)?;
    let history = read_history(model_dir)?;
    scvi_tools::write(&model.to_scvi_tools(history, layer), out, force, "")
}

/// `scvi-rs import`: the scvi-tools SCVI model directory (or `model.pt`) `src` as a scvi-rs
/// model directory at `out` (refused if it exists, unless `force` and it is a scvi-rs model
/// directory).
pub fn import(src: &Path, out: &Path, force: bool) -> Result<Imported> {
    crate::atomic::check_output(out, &MODEL_DIR, force, "")?;
    let m = scvi_tools::read(src)?;
    let (layer, scvi_version) = (m.setup.layer.clone(), m.scvi_version.clone());
    let model = Scvi::from_scvi_tools(m);
    model.save(out, force)?;
    Ok(Imported {
        model,
        layer,
        scvi_version,
    })
}
