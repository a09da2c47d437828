//! PyTorch's file format (`torch.save` since 1.6): a zip archive holding `<name>/data.pkl` (a
//! pickle whose tensors point, by persistent id, at storages) and one entry per storage,
//! `<name>/data/<key>`, raw little-endian. Read and written here without Python or torch, for
//! scvi-tools' `model.pt` (see `model::scvi_tools` for what scvi-tools keeps in it).
//!
//! Reading checks every size against the archive (a tensor's extent against its storage, a
//! storage's length against its dtype) and fails with the file and the entry named. numpy arrays
//! inside the pickle (gene names, categories, split indices) are decoded by [`numpy_array`].

use super::pickle::{self, Pickle, Value};
use crate::atomic::AtomicFile;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Largest `data.pkl` read (a model's pickle is tens of kilobytes; this bounds a hostile file).
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Largest archive entry read into memory (a storage).
const MAX_ENTRY_BYTES: u64 = 8 << 30;

/// A tensor's element type, as torch names its storages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    fn from_storage(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }
    fn storage_name(self) -> &'static str {
        match self {
            DType::F32 => "FloatStorage",
            DType::F64 => "DoubleStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
    /// One element from its little-endian bytes, as f64.
    fn decode(self, b: &[u8]) -> f64 {
        match self {
            DType::F32 => f32::from_le_bytes(b.try_into().unwrap()) as f64,
            DType::F64 => f64::from_le_bytes(b.try_into().unwrap()),
            DType::F16 => half_to_f32(u16::from_le_bytes(b.try_into().unwrap())) as f64,
            DType::BF16 => {
                f32::from_bits((u16::from_le_bytes(b.try_into().unwrap()) as u32) << 16) as f64
            }
            DType::I64 => i64::from_le_bytes(b.try_into().unwrap()) as f64,
            DType::I32 => i32::from_le_bytes(b.try_into().unwrap()) as f64,
            DType::I16 => i16::from_le_bytes(b.try_into().unwrap()) as f64,
            DType::I8 => b[0] as i8 as f64,
            DType::U8 | DType::Bool => b[0] as f64,
        }
    }
}

/// IEEE half to f32 (subnormals included).
fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match exp {
        0 if mant == 0 => sign,
        0 => {
            // Subnormal: normalise.
            let mut e = 127 - 15 + 1;
            let mut m = mant;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((m & 0x3ff) << 13)
        }
        0x1f => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// A tensor read from a file: its values in f64 (exact for every dtype a model holds), row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

/// A `torch.save` file read into memory.
pub struct TorchFile {
    pub path: PathBuf,
    /// The unpickled object.
    pub root: Value,
    /// The zip archive's comment (torch writes none; scvi-rs' exports sign theirs).
    pub comment: Vec<u8>,
    storages: HashMap<String, Vec<u8>>,
}

fn format_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::format(path, msg)
}

impl TorchFile {
    /// Read a `torch.save` zip archive. The pickle is decoded, the storages loaded.
    pub fn read(path: &Path) -> Result<TorchFile> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut zip = zip::ZipArchive::new(f).map_err(|e| {
            format_err(
                path,
                format!(
                    "not a PyTorch file (torch.save writes a zip archive; this one cannot be read: \
                     {e})"
                ),
            )
        })?;
        let names: Vec<String> = zip
            .file_names()
            .map(|n| n.map(|n| n.into_owned()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| format_err(path, format!("unreadable entry name in the archive: {e}")))?;
        let pkl = names
            .iter()
            .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .cloned()
            .ok_or_else(|| {
                format_err(
                    path,
                    "no <name>/data.pkl in the archive (not a torch.save file, or a legacy \
                     pre-1.6 one)",
                )
            })?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let read_entry = |zip: &mut zip::ZipArchive<std::fs::File>, name: &str, max: u64| {
            let mut e = zip
                .by_name(name)
                .map_err(|e| format_err(path, format!("entry '{name}': {e}")))?;
            if e.size() > max {
                return Err(format_err(
                    path,
                    format!("entry '{name}' claims {} bytes, more than {max}", e.size()),
                ));
            }
            let mut buf = Vec::with_capacity(e.size() as usize);
            e.read_to_end(&mut buf)
                .map_err(|err| format_err(path, format!("entry '{name}': {err}")))?;
            Ok(buf)
        };
        if names.contains(&format!("{prefix}byteorder")) {
            let b = read_entry(&mut zip, &format!("{prefix}byteorder"), 64)?;
            if b != b"little" {
                return Err(format_err(
                    path,
                    format!(
                        "byte order '{}' (only little-endian files are read)",
                        String::from_utf8_lossy(&b)
                    ),
                ));
            }
        }
        let bytes = read_entry(&mut zip, &pkl, MAX_PICKLE_BYTES)?;
        let root = pickle::loads(&bytes).map_err(|e| format_err(path, format!("{pkl}: {e}")))?;
        let data_prefix = format!("{prefix}data/");
        let mut storages = HashMap::new();
        for n in &names {
            if let Some(key) = n.strip_prefix(&data_prefix) {
                if !key.is_empty() && !key.contains('/') {
                    let b = read_entry(&mut zip, n, MAX_ENTRY_BYTES)?;
                    storages.insert(key.to_string(), b);
                }
            }
        }
        Ok(TorchFile {
            path: path.to_path_buf(),
            root,
            comment: zip.comment().to_vec(),
            storages,
        })
    }

    /// Whether `v` is a tensor (a call of torch's `_rebuild_tensor*` / `_rebuild_parameter`).
    pub fn is_tensor(v: &Value) -> bool {
        v.object()
            .and_then(|o| {
                o.callable
                    .global()
                    .map(|(m, n)| m == "torch._utils" && n.starts_with("_rebuild_"))
            })
            .unwrap_or(false)
    }

    /// The tensor `v` (what `_rebuild_tensor_v2(storage, offset, size, stride, ...)` builds),
    /// read from its storage; `what` names it in messages.
    pub fn tensor(&self, v: &Value, what: &str) -> Result<Tensor> {
        let err = |m: String| format_err(&self.path, format!("tensor '{what}': {m}"));
        let o = v
            .object()
            .ok_or_else(|| err(format!("expected a tensor, found a {}", v.kind())))?;
        let (m, n) = o.callable.global().unwrap_or(("", ""));
        if m != "torch._utils" {
            return Err(err(format!("expected a tensor, found a {}", v.kind())));
        }
        if n == "_rebuild_parameter" || n == "_rebuild_parameter_with_state" {
            let inner = o
                .args
                .first()
                .ok_or_else(|| err("empty parameter".into()))?;
            return self.tensor(inner, what);
        }
        if n != "_rebuild_tensor_v2" && n != "_rebuild_tensor" {
            return Err(err(format!(
                "torch._utils.{n} tensors (sparse, quantized, ...) are not supported"
            )));
        }
        if o.args.len() < 4 {
            return Err(err("too few arguments to rebuild it".into()));
        }
        let Value::PersId(pid) = &o.args[0] else {
            return Err(err("its storage is not a persistent id".into()));
        };
        let pid = pid
            .items()
            .ok_or_else(|| err("malformed storage reference".into()))?;
        // ('storage', torch.FloatStorage, key, location, numel)
        if pid.len() < 5 || pid[0].as_str() != Some("storage") {
            return Err(err("malformed storage reference".into()));
        }
        let dtype = pid[1]
            .global()
            .and_then(|(_, n)| DType::from_storage(n))
            .ok_or_else(|| err(format!("storage type {} not supported", pid[1].kind())))?;
        let key = match &pid[2] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            other => return Err(err(format!("storage key is a {}", other.kind()))),
        };
        let raw = self
            .storages
            .get(&key)
            .ok_or_else(|| err(format!("storage data/{key} is missing from the archive")))?;
        let numel = raw.len() / dtype.size();
        if !raw.len().is_multiple_of(dtype.size()) {
            return Err(err(format!(
                "storage data/{key} has {} bytes, not a whole number of {}-byte elements",
                raw.len(),
                dtype.size()
            )));
        }
        let ints = |v: &Value, name: &str| -> Result<Vec<i64>> {
            v.items()
                .ok_or_else(|| err(format!("{name} is not a tuple")))?
                .iter()
                .map(|x| {
                    x.as_int()
                        .ok_or_else(|| err(format!("{name} holds a non-integer")))
                })
                .collect()
        };
        let offset = o.args[1]
            .as_int()
            .ok_or_else(|| err("offset is not an integer".into()))?;
        let shape = ints(&o.args[2], "size")?;
        let stride = ints(&o.args[3], "stride")?;
        if shape.len() != stride.len() || shape.iter().chain(&stride).any(|&x| x < 0) || offset < 0
        {
            return Err(err(format!(
                "inconsistent size {shape:?}, stride {stride:?} or offset {offset}"
            )));
        }
        let count = shape
            .iter()
            .try_fold(1usize, |a, &s| a.checked_mul(s as usize))
            .ok_or_else(|| err("size overflows".into()))?;
        // The furthest element must lie inside the storage.
        if count > 0 {
            let last = shape
                .iter()
                .zip(&stride)
                .try_fold(offset as u128, |a, (&s, &t)| {
                    Some(a + (s as u128 - 1) * t as u128)
                });
            if last.is_none_or(|l| l >= numel as u128) {
                return Err(err(format!(
                    "size {shape:?} with stride {stride:?} at offset {offset} runs past its \
                     storage of {numel} elements"
                )));
            }
        }
        let es = dtype.size();
        let mut values = Vec::with_capacity(count);
        let mut idx = vec![0usize; shape.len()];
        for _ in 0..count {
            let at = offset as usize
                + idx
                    .iter()
                    .zip(&stride)
                    .map(|(&i, &t)| i * t as usize)
                    .sum::<usize>();
            values.push(dtype.decode(&raw[at * es..(at + 1) * es]));
            // Next row-major index.
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < shape[d] as usize {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(Tensor {
            dtype,
            shape: shape.iter().map(|&s| s as usize).collect(),
            values,
        })
    }
}

/// A numpy array decoded from a pickle.
#[derive(Clone, Debug)]
pub enum NdArray {
    /// dtype object (`O`): the Python values (strings, mostly).
    Objects(Vec<Value>),
    /// Fixed-width unicode (`U<n>`) or bytes (`S<n>`) strings.
    Strings(Vec<String>),
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Bools(Vec<bool>),
}

impl NdArray {
    /// The elements as strings (object arrays of str, and fixed-width string arrays), else None.
    pub fn strings(&self) -> Option<Vec<String>> {
        match self {
            NdArray::Strings(s) => Some(s.clone()),
            NdArray::Objects(v) => v.iter().map(|x| x.as_str().map(str::to_string)).collect(),
            _ => None,
        }
    }
    /// The elements as text, whatever their type (category names may be numbers).
    pub fn labels(&self) -> Vec<String> {
        match self {
            NdArray::Strings(s) => s.clone(),
            NdArray::Objects(v) => v
                .iter()
                .map(|x| match x {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    Value::Float(f) => format!("{f}"),
                    Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
                    other => other.kind(),
                })
                .collect(),
            NdArray::Ints(v) => v.iter().map(|i| i.to_string()).collect(),
            NdArray::Floats(v) => v.iter().map(|f| format!("{f}")).collect(),
            NdArray::Bools(v) => v
                .iter()
                .map(|&b| if b { "True" } else { "False" }.to_string())
                .collect(),
        }
    }
}

/// Decode a numpy array pickled by `ndarray.__reduce__` (`_reconstruct` + `BUILD` with
/// `(version, shape, dtype, fortran, data)`). None if `v` is not one or uses a layout not read here
/// (big-endian data, structured dtypes).
pub fn numpy_array(v: &Value) -> Option<NdArray> {
    let o = v.object()?;
    let (m, n) = o.callable.global()?;
    if !(m.ends_with("multiarray") && n == "_reconstruct") {
        return None;
    }
    let state = o.state?.items()?;
    if state.len() < 5 {
        return None;
    }
    let shape: Vec<i64> = state[1]
        .items()?
        .iter()
        .map(|x| x.as_int())
        .collect::<Option<_>>()?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(usize::try_from(s).ok()?))?;
    let dt = state[2].object()?;
    let code = dt.args.first()?.as_str()?.to_string();
    let order = dt
        .state
        .as_ref()
        .and_then(|s| s.items())
        .and_then(|s| s.get(1).and_then(|b| b.as_str().map(str::to_string)))
        .unwrap_or_else(|| "<".into());
    if order == ">" {
        return None;
    }
    let data = &state[4];
    if code.starts_with('O') {
        let items = data.items()?;
        return (items.len() == count).then_some(NdArray::Objects(items));
    }
    let Value::Bytes(raw) = data else {
        return None;
    };
    let width = |c: &str| c[1..].parse::<usize>().ok();
    let arr = match code.as_bytes().first()? {
        b'U' => {
            let w = width(&code)?;
            if raw.len() != count * w * 4 {
                return None;
            }
            NdArray::Strings(
                raw.chunks(w * 4)
                    .map(|c| {
                        c.chunks(4)
                            .map(|u| u32::from_le_bytes(u.try_into().unwrap()))
                            .take_while(|&u| u != 0)
                            .filter_map(char::from_u32)
                            .collect()
                    })
                    .collect(),
            )
        }
        b'S' => {
            let w = width(&code)?;
            if raw.len() != count * w {
                return None;
            }
            NdArray::Strings(
                raw.chunks(w)
                    .map(|c| {
                        let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
                        String::from_utf8_lossy(&c[..end]).into_owned()
                    })
                    .collect(),
            )
        }
        b'i' | b'u' => {
            let w = width(&code)?;
            if !matches!(w, 1 | 2 | 4 | 8) || raw.len() != count * w {
                return None;
            }
            let signed = code.starts_with('i');
            NdArray::Ints(
                raw.chunks(w)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b[..w].copy_from_slice(c);
                        if signed && c[w - 1] & 0x80 != 0 {
                            b[w..].fill(0xff);
                        }
                        i64::from_le_bytes(b)
                    })
                    .collect(),
            )
        }
        b'f' => {
            let w = width(&code)?;
            if raw.len() != count * w {
                return None;
            }
            match w {
                4 => NdArray::Floats(
                    raw.chunks(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                        .collect(),
                ),
                8 => NdArray::Floats(
                    raw.chunks(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                        .collect(),
                ),
                _ => return None,
            }
        }
        b'b' if code == "b1" => {
            if raw.len() != count {
                return None;
            }
            NdArray::Bools(raw.iter().map(|&b| b != 0).collect())
        }
        _ => return None,
    };
    Some(arr)
}

// ------------------------------------------------------------------------------------------------
// Writing.

/// A numpy array pickle, as `ndarray.__reduce__` writes it under protocol 2 (readable by numpy 1
/// and 2: `numpy.core.multiarray` is the name both know).
fn numpy_pickle(code: &str, shape: usize, data: Pickle) -> Pickle {
    let dtype = Pickle::Build(
        Box::new(Pickle::call(
            Pickle::global("numpy", "dtype"),
            vec![Pickle::str(code), Pickle::Bool(false), Pickle::Bool(true)],
        )),
        Box::new(Pickle::Tuple(vec![
            Pickle::Int(3),
            Pickle::str(if code.starts_with('O') { "|" } else { "<" }),
            Pickle::None,
            Pickle::None,
            Pickle::None,
            Pickle::Int(-1),
            Pickle::Int(-1),
            Pickle::Int(if code.starts_with('O') { 63 } else { 0 }),
        ])),
    );
    Pickle::Build(
        Box::new(Pickle::call(
            Pickle::global("numpy.core.multiarray", "_reconstruct"),
            vec![
                Pickle::global("numpy", "ndarray"),
                Pickle::Tuple(vec![Pickle::Int(0)]),
                Pickle::Bytes(b"b".to_vec()),
            ],
        )),
        Box::new(Pickle::Tuple(vec![
            Pickle::Int(1),
            Pickle::Tuple(vec![Pickle::Int(shape as i64)]),
            dtype,
            Pickle::Bool(false),
            data,
        ])),
    )
}

/// `np.array(strings, dtype=object)`.
pub fn numpy_strings(v: &[String]) -> Pickle {
    numpy_pickle(
        "O8",
        v.len(),
        Pickle::List(v.iter().map(|s| Pickle::str(s.clone())).collect()),
    )
}

/// `np.array(values, dtype=np.int64)`.
pub fn numpy_i64(v: &[i64]) -> Pickle {
    let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    numpy_pickle("i8", v.len(), Pickle::Bytes(raw))
}

/// Tensors to be written: each becomes one storage entry.
#[derive(Default)]
pub struct TorchWriter {
    storages: Vec<Vec<u8>>,
    /// The archive's comment (torch.load ignores it).
    pub comment: String,
}

impl TorchWriter {
    /// A tensor of `dtype` with `shape` and row-major little-endian `raw` bytes, as the pickle
    /// that rebuilds it (its storage is written by [`finish`](Self::finish)).
    pub fn tensor(&mut self, dtype: DType, shape: &[usize], raw: Vec<u8>) -> Pickle {
        let key = self.storages.len().to_string();
        let numel = raw.len() / dtype.size();
        self.storages.push(raw);
        let mut stride = vec![1i64; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1] as i64;
        }
        let storage = Pickle::PersId(Box::new(Pickle::Tuple(vec![
            Pickle::str("storage"),
            Pickle::global("torch", dtype.storage_name()),
            Pickle::Str(key),
            Pickle::str("cpu"),
            Pickle::Int(numel as i64),
        ])));
        Pickle::call(
            Pickle::global("torch._utils", "_rebuild_tensor_v2"),
            vec![
                storage,
                Pickle::Int(0),
                Pickle::Tuple(shape.iter().map(|&s| Pickle::Int(s as i64)).collect()),
                Pickle::Tuple(stride.into_iter().map(Pickle::Int).collect()),
                Pickle::Bool(false),
                Pickle::call(Pickle::global("collections", "OrderedDict"), vec![]),
            ],
        )
    }

    /// An f32 tensor.
    pub fn f32_tensor(&mut self, shape: &[usize], values: &[f32]) -> Pickle {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(DType::F32, shape, raw)
    }

    /// Write the archive at `path` (through a temporary file; `force` as for any output):
    /// `<stem>/data.pkl`, `version`, `byteorder` and the storages, uncompressed and 64-byte
    /// aligned as torch writes them.
    pub fn finish(self, root: &Pickle, path: &Path, force: bool) -> Result<()> {
        let stem = "archive";
        let mut out = AtomicFile::create(path, force, "")?;
        let tmp = out.path().to_path_buf();
        let file = out.file().try_clone().map_err(|e| Error::io(&tmp, e))?;
        let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
        let zerr = |e: zip::result::ZipError| Error::io(&tmp, std::io::Error::other(e));
        zip.set_comment(self.comment.as_str()).map_err(zerr)?;
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .with_alignment(64);
        let mut put = |name: String, bytes: &[u8]| -> Result<()> {
            zip.start_file(name, opts).map_err(zerr)?;
            zip.write_all(bytes).map_err(|e| Error::io(&tmp, e))
        };
        put(format!("{stem}/data.pkl"), &pickle::dumps(root))?;
        put(format!("{stem}/byteorder"), b"little")?;
        for (k, raw) in self.storages.iter().enumerate() {
            put(format!("{stem}/data/{k}"), raw)?;
        }
        put(format!("{stem}/version"), b"3\n")?;
        let w = zip.finish().map_err(zerr)?;
        w.into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?
            .sync_all()
            .map_err(|e| Error::io(&tmp, e))?;
        out.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_and_arrays_round_trip() {
        let d = std::env::temp_dir().join(format!("scvi-rs-torchfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("m.pt");
        let mut w = TorchWriter::default();
        let t = w.f32_tensor(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        let root = Pickle::dict([
            ("w", t),
            ("names", numpy_strings(&["a".into(), "bé".into()])),
            ("idx", numpy_i64(&[3, -1, 1 << 40])),
        ]);
        w.finish(&root, &p, false).unwrap();
        let f = TorchFile::read(&p).unwrap();
        let t = f.tensor(&f.root.get("w").unwrap(), "w").unwrap();
        assert_eq!(t.shape, [2, 3]);
        assert_eq!(t.values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        let names = numpy_array(&f.root.get("names").unwrap()).unwrap();
        assert_eq!(names.strings().unwrap(), ["a", "bé"]);
        assert!(matches!(
            numpy_array(&f.root.get("idx").unwrap()).unwrap(),
            NdArray::Ints(v) if v == [3, -1, 1 << 40]
        ));
        // Not a zip; a truncated zip: clear errors naming the file.
        std::fs::write(d.join("bad.pt"), b"not a zip").unwrap();
        let e = TorchFile::read(&d.join("bad.pt"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("bad.pt") && e.contains("zip"), "{e}");
        let bytes = std::fs::read(&p).unwrap();
        for n in [10, bytes.len() / 2, bytes.len() - 5] {
            std::fs::write(d.join("cut.pt"), &bytes[..n]).unwrap();
            assert!(TorchFile::read(&d.join("cut.pt")).is_err());
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn half_precision_decodes() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
        assert_eq!(half_to_f32(0x0001), 2f32.powi(-24));
        assert!(half_to_f32(0x7e00).is_nan());
    }
}
