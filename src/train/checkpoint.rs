//! Checkpoints: a training run's whole state in one file, `checkpoint.safetensors`, kept in the
//! run's model directory. One file, so that writing it under a temporary name and renaming it
//! into place (`crate::atomic`) replaces the previous checkpoint in one step: a run killed at any
//! moment leaves the previous checkpoint or the new one, whole.
//!
//! Tensors (safetensors, little-endian):
//!
//! ```text
//! <state_dict name>              every parameter and buffer, as in model.safetensors (f32;
//!                                BatchNorm num_batches_tracked i64)
//! optimizer.exp_avg.<name>       Adam's first moment of each tensor that trains (f32; torch's
//! optimizer.exp_avg_sq.<name>    names for Adam's state), second moment
//! optimizer.step                 Adam's update count (i64 scalar)
//! split.train, split.validation  the cells of each set (u32)
//! ```
//!
//! The header's metadata holds, under `scvi_rs_checkpoint`, one JSON object: `format`
//! ("scvi-rs checkpoint"), `format_version`, `scvi_rs_version`, `content_hash` (wfnv64 over every
//! tensor's name, type, shape and bytes, in name order: a flipped bit is an error, not a silently
//! different run), `run` (the caller's record of the model, the data and the command) and
//! `progress` ([`Progress`], floats written exactly).

use super::progress::Progress;
use super::split::Split;
use crate::engine::{Engine, OptimizerState};
use crate::error::{Error, Result};
use crate::model::init::ModelState;
use crate::model::io::{
    parse_safetensors, read_f32, read_state, safetensors_metadata, serialize_tensors,
    state_tensors, NamedTensor,
};
use crate::model::layout::Layout;
use crate::store::Hasher64;
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

pub use crate::model::io::CHECKPOINT_FILE;
use crate::model::io::{CHECKPOINT_FORMAT as FORMAT, CHECKPOINT_KEY as HEADER_KEY};
/// The layout described above. A checkpoint of another version is refused, never guessed at.
pub const FORMAT_VERSION: u32 = 1;

/// A training run's state: `run` is the caller's record of what is trained on what (the model's
/// description, the data's identity, the command's settings); the rest is the loop's.
#[derive(Clone, Debug)]
pub struct Checkpoint<M> {
    pub run: M,
    pub progress: Progress,
    pub state: ModelState<f32>,
    pub optimizer: OptimizerState,
    pub split: Split,
}

#[derive(Serialize, Deserialize)]
struct Header<M> {
    format: String,
    format_version: u32,
    scvi_rs_version: String,
    content_hash: String,
    run: M,
    progress: Progress,
}

/// The header fields every version has: enough to refuse another version by name.
#[derive(Deserialize)]
struct Stamp {
    format: String,
    format_version: u32,
    #[serde(default)]
    scvi_rs_version: String,
}

fn exp_avg(name: &str) -> String {
    format!("optimizer.exp_avg.{name}")
}
fn exp_avg_sq(name: &str) -> String {
    format!("optimizer.exp_avg_sq.{name}")
}

/// wfnv64 over the tensors in name order: each name, dtype, shape and bytes.
fn content_hash<'a>(tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>) -> u64 {
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Hasher64::new();
    for (name, dtype, shape, bytes) in sorted {
        h.update(name.as_bytes());
        h.update(format!("{dtype:?}{shape:?}").as_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finish()
}

fn u32_tensor(name: &str, v: &[usize]) -> Result<NamedTensor> {
    let bytes = v
        .iter()
        .map(|&i| u32::try_from(i).map(u32::to_le_bytes))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| Error::Config(format!("{name}: a cell index beyond 2^32")))?
        .concat();
    Ok(NamedTensor {
        name: name.to_string(),
        dtype: Dtype::U32,
        shape: vec![v.len()],
        bytes,
    })
}

/// A running training's state as a sink sees it: the engine (the model's values, the optimiser)
/// and the loop's position and split.
#[derive(Clone, Copy)]
pub struct RunView<'a> {
    pub engine: &'a dyn Engine,
    pub progress: &'a Progress,
    pub split: &'a Split,
}

/// What a run does with its state as it goes (`Scvi::run` calls it): write checkpoints.
pub trait CheckpointSink {
    /// After every epoch, with the progress after it: write a checkpoint if one is due.
    fn epoch_end(&mut self, run: RunView, max_epochs: usize) -> Result<()>;
    /// The run was interrupted between two steps: write a checkpoint.
    fn interrupted(&mut self, run: RunView) -> Result<()>;
}

/// The bytes of a checkpoint of `run` (the engine's model and optimiser state, the loop's
/// position and split), with `record` as its run record.
pub fn checkpoint_bytes<M: Serialize>(record: &M, run: RunView) -> Result<Vec<u8>> {
    let (state, optimizer) = (run.engine.state()?, run.engine.optimizer_state()?);
    to_bytes(record, run.progress, &state, &optimizer, run.split)
}

fn to_bytes<M: Serialize>(
    run: &M,
    progress: &Progress,
    state: &ModelState<f32>,
    optimizer: &OptimizerState,
    split: &Split,
) -> Result<Vec<u8>> {
    let layout = &state.layout;
    optimizer.check(layout)?;
    let mut tensors = state_tensors(state);
    for t in layout.params.iter().filter(|t| t.trainable) {
        for (name, moment) in [
            (exp_avg(&t.name), &optimizer.m),
            (exp_avg_sq(&t.name), &optimizer.v),
        ] {
            tensors.push(NamedTensor::f32(name, t.shape.clone(), &moment[t.range()]));
        }
    }
    tensors.push(NamedTensor {
        name: "optimizer.step".into(),
        dtype: Dtype::I64,
        shape: vec![],
        bytes: (optimizer.step as i64).to_le_bytes().to_vec(),
    });
    tensors.push(u32_tensor("split.train", &split.train)?);
    tensors.push(u32_tensor("split.validation", &split.validation)?);
    let hash = content_hash(tensors.iter().map(|t| {
        (
            t.name.as_str(),
            t.dtype,
            t.shape.as_slice(),
            t.bytes.as_slice(),
        )
    }));
    let header = Header {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        scvi_rs_version: env!("CARGO_PKG_VERSION").into(),
        content_hash: format!("{hash:016x}"),
        run,
        progress: progress.clone(),
    };
    let json = serde_json::to_string(&header).map_err(|e| Error::Config(e.to_string()))?;
    serialize_tensors(&tensors, Some(HashMap::from([(HEADER_KEY.into(), json)])))
}

impl<M: Serialize + DeserializeOwned> Checkpoint<M> {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        to_bytes(
            &self.run,
            &self.progress,
            &self.state,
            &self.optimizer,
            &self.split,
        )
    }

    /// Read the checkpoint at `path`. `layout` gives the model's layout from the run record (the
    /// tensors are read against it). Every failure names the file: not a checkpoint, another
    /// format version, a truncated or altered file, a missing or misshapen tensor.
    pub fn read(path: &Path, layout: impl FnOnce(&M) -> Result<Layout>) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = parse_safetensors(&bytes, path).map_err(|e| {
            Error::format(
                path,
                format!("the checkpoint is truncated or damaged ({e}); resume from an earlier copy or train again"),
            )
        })?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::format(path, format!("unreadable header: {e}")))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(HEADER_KEY))
            .ok_or_else(|| not_a_checkpoint(path))?;
        let header: Header<M> = parse_header(json, path)?;
        let found = content_hash(
            st.tensors()
                .iter()
                .map(|(name, v)| (name.as_str(), v.dtype(), v.shape(), v.data())),
        );
        if format!("{found:016x}") != header.content_hash {
            return Err(Error::format(
                path,
                "the checkpoint's tensors do not match its recorded checksum (the file was \
                 altered or damaged); resume from an earlier copy or train again",
            ));
        }
        let layout = layout(&header.run)?;
        let state = read_state(&st, layout, path)?;
        let layout = &state.layout;
        let mut optimizer = OptimizerState::zeros(layout);
        let OptimizerState { m, v, .. } = &mut optimizer;
        for t in layout.params.iter().filter(|t| t.trainable) {
            for (name, moment) in [(exp_avg(&t.name), &mut *m), (exp_avg_sq(&t.name), &mut *v)] {
                read_f32(&st, path, &name, &t.shape, &mut moment[t.range()])?;
            }
        }
        // The step is an i64; read it exactly rather than through f32.
        let v = st
            .tensor("optimizer.step")
            .map_err(|_| Error::format(path, "tensor 'optimizer.step' is missing"))?;
        if v.dtype() != Dtype::I64 || v.data().len() != 8 {
            return Err(Error::format(
                path,
                "tensor 'optimizer.step' is not an i64 scalar",
            ));
        }
        optimizer.step = i64::from_le_bytes(v.data().try_into().unwrap()) as u64;
        let indices = |name: &str| -> Result<Vec<usize>> {
            let v = st
                .tensor(name)
                .map_err(|_| Error::format(path, format!("tensor '{name}' is missing")))?;
            if v.dtype() != Dtype::U32 || v.shape().len() != 1 {
                return Err(Error::format(
                    path,
                    format!("tensor '{name}' is not a u32 vector"),
                ));
            }
            Ok(v.data()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as usize)
                .collect())
        };
        let split = Split {
            train: indices("split.train")?,
            validation: indices("split.validation")?,
        };
        Ok(Checkpoint {
            run: header.run,
            progress: header.progress,
            state,
            optimizer,
            split,
        })
    }
}

fn not_a_checkpoint(path: &Path) -> Error {
    Error::format(
        path,
        "not a scvi-rs checkpoint (its header has no scvi_rs_checkpoint record)",
    )
}

/// The header's JSON as `T`, after checking its format and version by name.
fn parse_header<T: DeserializeOwned>(json: &str, path: &Path) -> Result<T> {
    let stamp: Stamp = serde_json::from_str(json).map_err(|_| not_a_checkpoint(path))?;
    if stamp.format != FORMAT {
        return Err(not_a_checkpoint(path));
    }
    if stamp.format_version != FORMAT_VERSION {
        return Err(Error::format(
            path,
            format!(
                "checkpoint format version {} (written by scvi-rs {}); this scvi-rs ({}) reads \
                 version {FORMAT_VERSION} only: resume it with the scvi-rs that wrote it",
                stamp.format_version,
                if stamp.scvi_rs_version.is_empty() {
                    "?"
                } else {
                    &stamp.scvi_rs_version
                },
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    serde_json::from_str(json)
        .map_err(|e| Error::format(path, format!("invalid checkpoint record: {e}")))
}

/// The run record and progress of the checkpoint at `path`, reading only the file's header (a few
/// kilobytes, however large the model): for messages, and to find the data before the tensors.
pub fn read_header<M: DeserializeOwned>(path: &Path) -> Result<(M, Progress)> {
    let json = safetensors_metadata(path, HEADER_KEY)?.ok_or_else(|| not_a_checkpoint(path))?;
    let h: Header<M> = parse_header(&json, path)?;
    Ok((h.run, h.progress))
}
