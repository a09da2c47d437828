//! Saving and loading a model directory:
//!
//! - `model.safetensors`: every tensor of scvi-tools' `state_dict` under its own name, f32, with
//!   BatchNorm's `num_batches_tracked` as an i64 scalar as torch stores it;
//! - `model.json`: hyper-parameters, genes, batch and label categories, the scvi-rs version;
//! - `history.csv`: one row per epoch, scvi-tools' column names;
//! - `split.json`: the train and validation cell indices.
//!
//! A directory is written under a temporary name and renamed into place when complete (see
//! `crate::atomic`), so a failed save leaves nothing half-written, and it replaces only a model
//! directory that scvi-rs wrote.

use super::init::ModelState;
use super::layout::Layout;
use crate::atomic::{only_files, OutputKind};
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;
use std::path::Path;

pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Serialise parameters and buffers to safetensors bytes.
pub fn state_to_safetensors(state: &ModelState<f32>) -> Result<Vec<u8>> {
    let mut bytes: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for t in &state.layout.params {
        let b = state.params[t.range()]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        bytes.insert(t.name.clone(), (Dtype::F32, t.shape.clone(), b));
    }
    for t in &state.layout.buffers {
        let vals = &state.buffers[t.range()];
        if t.name.ends_with("num_batches_tracked") {
            let b = (vals[0].round() as i64).to_le_bytes().to_vec();
            bytes.insert(t.name.clone(), (Dtype::I64, vec![], b));
        } else {
            let b = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
            bytes.insert(t.name.clone(), (Dtype::F32, t.shape.clone(), b));
        }
    }
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(k, (dt, shape, b))| {
            Ok((
                k.clone(),
                TensorView::new(*dt, shape.clone(), b).map_err(|e| Error::Shape(e.to_string()))?,
            ))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::Shape(e.to_string()))
}

/// Largest `model.json` read (gene names and categories: megabytes for the largest atlases).
pub const MAX_META_BYTES: u64 = 1 << 30;

/// Check a model file's sizes before anything is allocated for them: the configuration's own
/// ranges ([`ModelConfig::validate`](super::ModelConfig::validate)), the gene and category lists
/// against the sizes they must have, and the weights file against the tensors the configuration
/// implies (every value takes at least 4 bytes there), then against the memory available. `meta`
/// and `weights` are the two files, for messages; `weights_len` the weights file's length.
pub fn check_model_sizes(
    cfg: &super::ModelConfig,
    lists: [(&str, usize); 3],
    meta: &Path,
    weights: &Path,
    weights_len: u64,
) -> Result<Layout> {
    cfg.validate()
        .map_err(|e| Error::format(meta, e.to_string()))?;
    let wants = [cfg.n_input, cfg.n_batch, cfg.n_labels];
    for ((what, len), want) in lists.into_iter().zip(wants) {
        if len != want {
            return Err(Error::format(
                meta,
                format!("lists {len} {what}, but its model section says {want}"),
            ));
        }
    }
    let layout = Layout::new(cfg);
    let n = (layout.n_param_elems + layout.n_buffer_elems) as u64;
    if n.saturating_mul(4) > weights_len {
        return Err(Error::format(
            weights,
            format!(
                "is {}, but the model in {} has {n} values ({} at 4 bytes each): the two files \
                 do not belong together",
                crate::limits::human_bytes(weights_len),
                meta.display(),
                crate::limits::human_bytes(n * 4)
            ),
        ));
    }
    crate::limits::ensure_memory(n.saturating_mul(8).saturating_add(weights_len), || {
        format!("{}: loading the model", weights.display())
    })?;
    Ok(layout)
}

/// Read parameters and buffers for `layout` from safetensors bytes (`path` for messages). Accepts
/// f32 or f64 tensors; every tensor of the layout must be present with its shape, and every value
/// finite (a NaN weight would make every output NaN without a word).
pub fn state_from_safetensors(
    layout: Layout,
    bytes: &[u8],
    path: &Path,
) -> Result<ModelState<f32>> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    let mut state = ModelState::<f32>::zeros(layout);
    let read = |name: &str, shape: &[usize], out: &mut [f32]| -> Result<()> {
        let v = st
            .tensor(name)
            .map_err(|_| Error::format(path, format!("tensor '{name}' is missing")))?;
        let scalar = v.shape().is_empty() && shape.is_empty();
        if v.shape() != shape && !scalar {
            return Err(Error::format(
                path,
                format!(
                    "tensor '{name}' has shape {:?}, the model expects {shape:?}",
                    v.shape()
                ),
            ));
        }
        let data = v.data();
        match v.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .zip(out.iter_mut())
                .for_each(|(c, o)| *o = f32::from_le_bytes(c.try_into().unwrap())),
            Dtype::F64 => data
                .chunks_exact(8)
                .zip(out.iter_mut())
                .for_each(|(c, o)| *o = f64::from_le_bytes(c.try_into().unwrap()) as f32),
            Dtype::I64 => data
                .chunks_exact(8)
                .zip(out.iter_mut())
                .for_each(|(c, o)| *o = i64::from_le_bytes(c.try_into().unwrap()) as f32),
            d => {
                return Err(Error::format(
                    path,
                    format!("tensor '{name}' has dtype {d:?}; expected F32, F64 or I64"),
                ))
            }
        }
        Ok(())
    };
    let finite = |name: &str, vals: &[f32]| -> Result<()> {
        match vals.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(k) => Err(Error::format(
                path,
                format!(
                    "tensor '{name}' holds {} at index {k}: the model is damaged (retrain it)",
                    vals[k]
                ),
            )),
        }
    };
    let layout = state.layout.clone();
    for t in &layout.params {
        read(&t.name, &t.shape, &mut state.params[t.range()])?;
        finite(&t.name, &state.params[t.range()])?;
    }
    for t in &layout.buffers {
        read(&t.name, &t.shape, &mut state.buffers[t.range()])?;
        finite(&t.name, &state.buffers[t.range()])?;
    }
    Ok(state)
}

/// The files of a model directory.
pub const MODEL_FILES: &[&str] = &[WEIGHTS_FILE, META_FILE, "history.csv", "split.json"];
pub const META_FILE: &str = "model.json";

/// A model directory as an output: replaced (with `--force`) only when it is one that scvi-rs
/// wrote, holding nothing else.
pub const MODEL_DIR: OutputKind = OutputKind {
    what: "a scvi-rs model directory",
    dir: true,
    is_ours: is_model_dir,
};

/// Whether `dir` is a complete scvi-rs model directory holding only its own files.
fn is_model_dir(dir: &Path) -> std::result::Result<(), String> {
    let meta = std::fs::read(dir.join(META_FILE))
        .map_err(|_| format!("it has no readable {META_FILE}"))?;
    let v: serde_json::Value =
        serde_json::from_slice(&meta).map_err(|_| format!("its {META_FILE} is not JSON"))?;
    if v.get("scvi_rs_version").is_none() || v.get("format_version").is_none() {
        return Err(format!("its {META_FILE} was not written by scvi-rs"));
    }
    if !dir.join(WEIGHTS_FILE).is_file() {
        return Err(format!("it has no {WEIGHTS_FILE}"));
    }
    only_files(dir, MODEL_FILES)
}
