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
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

pub const WEIGHTS_FILE: &str = "model.safetensors";

/// One tensor to be written: its name, element type, shape and little-endian bytes.
pub struct NamedTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl NamedTensor {
    /// An f32 tensor named `name`.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        NamedTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// The parameters and buffers as tensors under their `state_dict` names, BatchNorm's
/// `num_batches_tracked` as the i64 scalar torch keeps.
pub fn state_tensors(state: &ModelState<f32>) -> Vec<NamedTensor> {
    let mut out = Vec::new();
    for t in &state.layout.params {
        out.push(NamedTensor::f32(
            &t.name,
            t.shape.clone(),
            &state.params[t.range()],
        ));
    }
    for t in &state.layout.buffers {
        let vals = &state.buffers[t.range()];
        if t.name.ends_with("num_batches_tracked") {
            out.push(NamedTensor {
                name: t.name.clone(),
                dtype: Dtype::I64,
                shape: vec![],
                bytes: (vals[0].round() as i64).to_le_bytes().to_vec(),
            });
        } else {
            out.push(NamedTensor::f32(&t.name, t.shape.clone(), vals));
        }
    }
    out
}

/// Safetensors bytes of `tensors` (any order: the format sorts them), with `metadata` in the
/// header when given.
pub fn serialize_tensors(
    tensors: &[NamedTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|t| {
            Ok((
                t.name.as_str(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                    .map_err(|e| Error::Shape(format!("tensor '{}': {e}", t.name)))?,
            ))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, metadata).map_err(|e| Error::Shape(e.to_string()))
}

/// Serialise parameters and buffers to safetensors bytes.
pub fn state_to_safetensors(state: &ModelState<f32>) -> Result<Vec<u8>> {
    serialize_tensors(&state_tensors(state), None)
}

/// Parse safetensors bytes read from `path` (named in the error).
pub fn parse_safetensors<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))
}

/// Read tensor `name` of `shape` into `out` as f32 (from f32, f64 or i64 data; a scalar where a
/// one-element tensor is expected is accepted, as torch saves `num_batches_tracked`).
pub fn read_f32(
    st: &SafeTensors,
    path: &Path,
    name: &str,
    shape: &[usize],
    out: &mut [f32],
) -> Result<()> {
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
}

/// Read the parameters and buffers of `layout` from parsed safetensors (`path` for messages);
/// every tensor of the layout must be present with its shape.
pub fn read_state(st: &SafeTensors, layout: Layout, path: &Path) -> Result<ModelState<f32>> {
    let mut state = ModelState::<f32>::zeros(layout);
    let layout = state.layout.clone();
    // A value that is not finite means a damaged or diverged model: refused here, naming it.
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
    for t in &layout.params {
        read_f32(st, path, &t.name, &t.shape, &mut state.params[t.range()])?;
        finite(&t.name, &state.params[t.range()])?;
    }
    for t in &layout.buffers {
        read_f32(st, path, &t.name, &t.shape, &mut state.buffers[t.range()])?;
        finite(&t.name, &state.buffers[t.range()])?;
    }
    Ok(state)
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
    read_state(&parse_safetensors(bytes, path)?, layout, path)
}

/// The files of a model directory.
pub const MODEL_FILES: &[&str] = &[WEIGHTS_FILE, META_FILE, "history.csv", "split.json"];
pub const META_FILE: &str = "model.json";
/// A training run's checkpoint (`crate::train::checkpoint`), kept in its model directory while
/// the run goes on.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The safetensors metadata key of a checkpoint's record, and the record's `format`.
pub const CHECKPOINT_KEY: &str = "scvi_rs_checkpoint";
pub const CHECKPOINT_FORMAT: &str = "scvi-rs checkpoint";
/// Everything a model directory may hold.
const DIR_FILES: &[&str] = &[
    WEIGHTS_FILE,
    META_FILE,
    "history.csv",
    "split.json",
    CHECKPOINT_FILE,
];

/// A model directory as an output: replaced (with `--force`) only when it is one that scvi-rs
/// wrote (a trained model, or a run's checkpoint), holding nothing else.
pub const MODEL_DIR: OutputKind = OutputKind {
    what: "a scvi-rs model directory",
    dir: true,
    is_ours: is_model_dir,
};

/// Whether `dir` is a scvi-rs model directory holding only its own files: a complete model, or
/// the checkpoint of a run that has not finished (with whatever model files it had written).
fn is_model_dir(dir: &Path) -> std::result::Result<(), String> {
    let checkpoint = dir.join(CHECKPOINT_FILE);
    if !dir.join(META_FILE).exists() && checkpoint.is_file() {
        let stamp = safetensors_metadata(&checkpoint, CHECKPOINT_KEY)
            .ok()
            .flatten()
            .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok());
        if stamp.as_ref().and_then(|v| v.get("format")?.as_str()) != Some(CHECKPOINT_FORMAT) {
            return Err(format!("its {CHECKPOINT_FILE} was not written by scvi-rs"));
        }
        return only_files(dir, DIR_FILES);
    }
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
    only_files(dir, DIR_FILES)
}

/// The header metadata entry `key` of the safetensors file at `path`, reading only the header
/// (its 8-byte length and JSON), not the tensors. `Ok(None)` when the file has no such entry.
pub fn safetensors_metadata(path: &Path, key: &str) -> Result<Option<String>> {
    /// safetensors' own bound on a header.
    const MAX_HEADER: u64 = 100_000_000;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| Error::format(path, "too short for a safetensors file"))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(Error::format(
            path,
            format!("not a safetensors file (header length {n})"),
        ));
    }
    let mut text = vec![0u8; n as usize];
    f.read_exact(&mut text)
        .map_err(|_| Error::format(path, "the safetensors header is truncated"))?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Error::format(path, format!("not a safetensors file: {e}")))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.get(key))
        .and_then(|s| s.as_str())
        .map(str::to_string))
}
