//! `info`: what an input holds, as JSON: its format, sizes, obs columns (with category counts) and
//! var columns; for a store also its header (version, source, value summary, notes), and on demand
//! the full O(nnz) check.

use std::path::Path;

use serde_json::{json, Value};

use super::input::{Input, InputOptions};
use crate::data::ObsColumn;
use crate::error::{Error, Result};

/// Categories listed per categorical column (the rest are counted in `n_categories`).
const MAX_CATEGORIES_SHOWN: usize = 1000;

/// The `info` JSON of any input; `verify` runs [`Store::verify`](crate::store::Store::verify) on a store (and is an error
/// for any other input).
pub fn info_json(path: &Path, verify: bool) -> Result<Value> {
    info_json_with(path, &InputOptions::default(), verify)
}

/// [`info_json`] of an input read with options (`--genome`).
pub fn info_json_with(path: &Path, opts: &InputOptions, verify: bool) -> Result<Value> {
    let input = Input::open_with(path, opts)?;
    let m = &input.meta;
    let mut v = json!({
        "path": path.display().to_string(),
        "format": input.format.name(),
        "n_cells": input.n_cells,
        "n_genes": input.n_genes,
        "nnz": input.nnz,
        "obs": m.obs.iter().map(|(k, c)| obs_json(k, c)).collect::<Vec<_>>(),
        "var": m.var.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
    });
    match input.store() {
        Some(s) => {
            let h = s.header();
            v["format_version"] = json!(h.version);
            v["source"] = json!(h.source);
            v["created_by"] = json!(h.created_by);
            v["values"] = serde_json::to_value(&h.values)
                .map_err(|e| Error::Data(format!("cannot describe the store's values: {e}")))?;
            v["notes"] = json!(h.notes);
            if verify {
                s.verify()?;
                v["verified"] = json!(true);
            }
        }
        None => {
            v["format_version"] = Value::Null;
            v["source"] = json!(m.source);
            if verify {
                return Err(Error::Config(format!(
                    "--verify checks a store; {} is a {}",
                    path.display(),
                    input.format.name()
                )));
            }
        }
    }
    Ok(v)
}

fn obs_json(name: &str, col: &ObsColumn) -> Value {
    match col {
        ObsColumn::Categorical { codes, categories } => {
            let mut counts = vec![0u64; categories.len()];
            let mut missing = 0u64;
            for &c in codes {
                match counts.get_mut(c as usize) {
                    Some(n) if c >= 0 => *n += 1,
                    _ => missing += 1,
                }
            }
            let shown = categories.len().min(MAX_CATEGORIES_SHOWN);
            json!({
                "name": name,
                "kind": "categorical",
                "n_categories": categories.len(),
                "categories": &categories[..shown],
                "counts": &counts[..shown],
                "missing": missing,
                "truncated": shown < categories.len(),
            })
        }
        ObsColumn::Strings(v) => {
            let mut u: Vec<&String> = v.iter().collect();
            u.sort();
            u.dedup();
            json!({"name": name, "kind": "strings", "n_unique": u.len()})
        }
        ObsColumn::Integers(v) => json!({
            "name": name, "kind": "integers",
            "min": v.iter().min(), "max": v.iter().max(),
        }),
        ObsColumn::Floats(v) => {
            let fin: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
            json!({
                "name": name, "kind": "floats",
                "min": fin.iter().copied().reduce(f64::min),
                "max": fin.iter().copied().reduce(f64::max),
                "n_missing": v.len() - fin.len(),
            })
        }
        ObsColumn::Bools(v) => json!({
            "name": name, "kind": "bools",
            "n_true": v.iter().filter(|&&b| b).count(),
        }),
    }
}
