//! Saving and loading a model directory:
//!
//! - `model.safetensors`: every tensor of scvi-tools' `state_dict` under its own name, f32, with
//!   BatchNorm's `num_batches_tracked` as an i64 scalar as torch stores it;
//! - `model.json`: hyper-parameters, genes, batch and label categories, the scvi-rs version;
//! - `history.csv`: one row per epoch, scvi-tools' column names;
//! - `split.json`: the train and validation cell indices.
//!
//! A directory is written under a temporary name and renamed into place when complete, so a failed
//! save leaves nothing half-written.

use super::init::ModelState;
use super::layout::Layout;
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// Read parameters and buffers for `layout` from safetensors bytes (`path` for messages). Accepts
/// f32 or f64 tensors; every tensor of the layout must be present with its shape.
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
    let layout = state.layout.clone();
    for t in &layout.params {
        read(&t.name, &t.shape, &mut state.params[t.range()])?;
    }
    for t in &layout.buffers {
        read(&t.name, &t.shape, &mut state.buffers[t.range()])?;
    }
    Ok(state)
}

/// A directory being written: files go to `<dir>.tmp-<pid>`, renamed to `dir` by `commit`.
pub struct StagedDir {
    pub tmp: PathBuf,
    pub target: PathBuf,
}

impl StagedDir {
    /// Refuses an existing `target` unless `force`.
    pub fn new(target: &Path, force: bool) -> Result<Self> {
        if target.exists() && !force {
            return Err(Error::Config(format!(
                "{} already exists; pass --force to overwrite it",
                target.display()
            )));
        }
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "out".into());
        let tmp = target.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(StagedDir {
            tmp,
            target: target.to_path_buf(),
        })
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.tmp.join(name);
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))
    }

    pub fn commit(self) -> Result<()> {
        if self.target.exists() {
            let old = self.target.with_file_name(format!(
                ".{}.old-{}",
                self.target
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy(),
                std::process::id()
            ));
            std::fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
            std::fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
            let _ = if old.is_dir() {
                std::fs::remove_dir_all(&old)
            } else {
                std::fs::remove_file(&old)
            };
        } else {
            std::fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if self.tmp.exists() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Write `bytes` to `path` atomically (temporary name, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
