//! Store format version 1: the header (`header.json`) and the metadata file (`meta.bin`).
//! The full description, for people and for other implementations, is `docs/store-format.md`.

use serde::{Deserialize, Serialize};

use super::hash::{hex, wfnv64};
use crate::data::ObsColumn;
use crate::error::{Error, Result};
use std::path::Path;

pub const FORMAT_NAME: &str = "scvi-rs-store";
pub const FORMAT_VERSION: u32 = 1;

pub const HEADER_FILE: &str = "header.json";
pub const INDPTR_FILE: &str = "indptr.u64";
pub const INDICES_FILE: &str = "indices.u32";
pub const DATA_FILE: &str = "data.f32";
pub const META_FILE: &str = "meta.bin";

/// Largest `header.json` accepted (it holds no per-cell data, so it is small).
pub const MAX_HEADER_BYTES: u64 = 16 << 20;

/// One of the binary files of the store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub file: String,
    /// `u64`, `u32`, `f32` or `u8`.
    pub dtype: String,
    /// Number of elements.
    pub len: u64,
    /// wfnv64 of the file's bytes, 16 hex digits.
    pub checksum: String,
}

/// The four binary files.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Files {
    pub indptr: FileEntry,
    pub indices: FileEntry,
    pub data: FileEntry,
    pub meta: FileEntry,
}

/// A little-endian array inside `meta.bin`, starting at an 8-byte-aligned byte offset.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ArrayRef {
    pub offset: u64,
    /// `u64`, `i32`, `i64`, `f64` or `u8`.
    pub dtype: String,
    pub len: u64,
}

/// A list of `n` UTF-8 strings: `offsets` (`u64`, `n + 1` entries from 0) into `bytes` (`u8`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StringsRef {
    pub offsets: ArrayRef,
    pub bytes: ArrayRef,
}

/// A named string column (a `var` column: gene IDs, original gene names, ...).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VarEntry {
    pub name: String,
    pub values: StringsRef,
}

/// An `obs` column. `kind` is `categorical` (`codes` i32 with -1 missing, `categories`),
/// `strings` (`strings`), `integers` (`values` i64), `floats` (`values` f64) or `bools`
/// (`values` u8, 0 or 1).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ObsEntry {
    pub name: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<ArrayRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<StringsRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<ArrayRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strings: Option<StringsRef>,
}

/// What the value checks at conversion found.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ValueSummary {
    /// Stored values that are not whole numbers.
    pub n_non_integer: u64,
    /// Sum of all values.
    pub total: f64,
    /// Largest value.
    pub max: f64,
    /// Cells whose counts are all zero.
    pub n_empty_cells: u64,
}

/// `header.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub n_cells: u64,
    pub n_genes: u64,
    pub nnz: u64,
    /// Where the data came from.
    pub source: String,
    /// The program that wrote the store.
    pub created_by: String,
    pub values: ValueSummary,
    pub files: Files,
    pub gene_names: StringsRef,
    pub cell_names: StringsRef,
    #[serde(default)]
    pub var: Vec<VarEntry>,
    #[serde(default)]
    pub obs: Vec<ObsEntry>,
    /// Free-form lines: what conversion did (gene subset, names made unique, ...).
    #[serde(default)]
    pub notes: Vec<String>,
    /// wfnv64 of this file's bytes with these 16 hex digits replaced by `0`s. Always last.
    pub header_checksum: String,
}

impl Header {
    /// The header as written: pretty JSON whose checksum field covers the whole text.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut h = self.clone();
        h.header_checksum = "0".repeat(16);
        let mut text = serde_json::to_vec_pretty(&h)
            .map_err(|e| Error::Data(format!("cannot serialise store header: {e}")))?;
        text.push(b'\n');
        let sum = hex(wfnv64(&text));
        let at = checksum_position(&text)
            .ok_or_else(|| Error::Data("store header lost its checksum field".into()))?;
        text[at..at + 16].copy_from_slice(sum.as_bytes());
        Ok(text)
    }

    /// Parse and check `header.json`'s bytes: the checksum, the format name and the version.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Header> {
        let at = checksum_position(bytes).ok_or_else(|| {
            Error::format(
                path,
                "not a scvi-rs store header (no header_checksum field)",
            )
        })?;
        let stored = std::str::from_utf8(&bytes[at..at + 16])
            .unwrap_or("")
            .to_string();
        let mut zeroed = bytes.to_vec();
        zeroed[at..at + 16].copy_from_slice(b"0000000000000000");
        let actual = hex(wfnv64(&zeroed));
        if stored != actual {
            return Err(Error::format(
                path,
                format!(
                    "header checksum mismatch (stored {stored}, computed {actual}): the store is \
                     corrupt or was edited; convert it again"
                ),
            ));
        }
        // Peek at the format and version before the full parse, so that a newer version gets a
        // message about the version rather than about a field.
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::format(path, format!("header is not valid JSON: {e}")))?;
        if v.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
            return Err(Error::format(path, format!("not a {FORMAT_NAME} header")));
        }
        let version = v.get("version").and_then(|x| x.as_u64()).unwrap_or(0);
        if version != FORMAT_VERSION as u64 {
            return Err(Error::format(
                path,
                format!(
                    "store format version {version}; this scvi-rs reads version {FORMAT_VERSION} \
                     only"
                ),
            ));
        }
        serde_json::from_value(v)
            .map_err(|e| Error::format(path, format!("malformed store header: {e}")))
    }
}

/// Byte position of the 16 hex digits of the last `"header_checksum": "..."` in `text`.
fn checksum_position(text: &[u8]) -> Option<usize> {
    let key = b"\"header_checksum\"";
    let start = text.windows(key.len()).rposition(|w| w == key)? + key.len();
    let mut i = start;
    while i < text.len() && (text[i] == b' ' || text[i] == b':' || text[i] == b'\n') {
        i += 1;
    }
    if text.get(i) == Some(&b'"') && text.get(i + 17) == Some(&b'"') {
        Some(i + 1)
    } else {
        None
    }
}

pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "u8" => 1,
        "u32" | "i32" | "f32" => 4,
        "u64" | "i64" | "f64" => 8,
        _ => return None,
    })
}

// ------------------------------------------------------------------------------------------------
// meta.bin: built in memory at conversion (it is O(n_cells + n_genes)), decoded at open.

/// A number stored little-endian in `meta.bin`, with its dtype name there.
trait Le: Copy {
    const DTYPE: &'static str;
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    /// From exactly `SIZE` bytes.
    fn get(b: &[u8]) -> Self;
}

macro_rules! le {
    ($($t:ty => $name:literal),*) => {$(
        impl Le for $t {
            const DTYPE: &'static str = $name;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
        }
    )*};
}
le!(u8 => "u8", i32 => "i32", i64 => "i64", u64 => "u64", f64 => "f64");

/// Builds `meta.bin`: each array padded to an 8-byte boundary.
#[derive(Default)]
pub struct MetaBuilder {
    pub buf: Vec<u8>,
}

impl MetaBuilder {
    /// Append `values` as an array starting at an 8-byte boundary.
    fn array<T: Le>(&mut self, values: impl ExactSizeIterator<Item = T>) -> ArrayRef {
        while !self.buf.len().is_multiple_of(8) {
            self.buf.push(0);
        }
        let (offset, len) = (self.buf.len() as u64, values.len() as u64);
        values.for_each(|x| x.put(&mut self.buf));
        ArrayRef {
            offset,
            dtype: T::DTYPE.to_string(),
            len,
        }
    }

    pub fn strings(&mut self, values: &[String]) -> StringsRef {
        let ends = values.iter().scan(0u64, |o, s| {
            *o += s.len() as u64;
            Some(*o)
        });
        let offsets = self.array(
            std::iter::once(0u64)
                .chain(ends)
                .collect::<Vec<_>>()
                .into_iter(),
        );
        let bytes = self.array(
            values
                .iter()
                .flat_map(|s| s.bytes())
                .collect::<Vec<_>>()
                .into_iter(),
        );
        StringsRef { offsets, bytes }
    }

    pub fn obs(&mut self, name: &str, col: &ObsColumn) -> ObsEntry {
        let mut e = ObsEntry {
            name: name.to_string(),
            kind: String::new(),
            codes: None,
            categories: None,
            values: None,
            strings: None,
        };
        match col {
            ObsColumn::Categorical { codes, categories } => {
                e.kind = "categorical".into();
                e.codes = Some(self.array(codes.iter().copied()));
                e.categories = Some(self.strings(categories));
            }
            ObsColumn::Strings(v) => {
                e.kind = "strings".into();
                e.strings = Some(self.strings(v));
            }
            ObsColumn::Integers(v) => {
                e.kind = "integers".into();
                e.values = Some(self.array(v.iter().copied()));
            }
            ObsColumn::Floats(v) => {
                e.kind = "floats".into();
                e.values = Some(self.array(v.iter().copied()));
            }
            ObsColumn::Bools(v) => {
                e.kind = "bools".into();
                e.values = Some(self.array(v.iter().map(|&x| x as u8)));
            }
        }
        e
    }
}

/// Reads arrays out of `meta.bin`, checking every bound (no panic on a crafted file).
pub struct MetaReader<'a> {
    pub path: &'a Path,
    pub buf: &'a [u8],
}

impl MetaReader<'_> {
    fn bytes(&self, a: &ArrayRef, dtype: &str, what: &str) -> Result<&[u8]> {
        if a.dtype != dtype {
            return Err(Error::format(
                self.path,
                format!("{what}: dtype {} where {dtype} was expected", a.dtype),
            ));
        }
        let size = dtype_size(dtype).unwrap_or(1);
        let end = a
            .len
            .checked_mul(size)
            .and_then(|n| n.checked_add(a.offset))
            .filter(|&e| e <= self.buf.len() as u64);
        match end {
            Some(end) => Ok(&self.buf[a.offset as usize..end as usize]),
            None => Err(Error::format(
                self.path,
                format!(
                    "{what}: array at byte {} of {} entries runs past meta.bin",
                    a.offset, a.len
                ),
            )),
        }
    }

    fn expect_len(&self, a: &ArrayRef, n: u64, what: &str) -> Result<()> {
        if a.len != n {
            return Err(Error::format(
                self.path,
                format!("{what} has {} entries, expected {n}", a.len),
            ));
        }
        Ok(())
    }

    /// An array of `T`; `n` is the expected count when known.
    fn array<T: Le>(&self, a: &ArrayRef, n: Option<u64>, what: &str) -> Result<Vec<T>> {
        if let Some(n) = n {
            self.expect_len(a, n, what)?;
        }
        let b = self.bytes(a, T::DTYPE, what)?;
        Ok(b.chunks_exact(T::SIZE).map(T::get).collect())
    }

    /// Strings; `n` is the expected count when known.
    pub fn strings(&self, s: &StringsRef, n: Option<u64>, what: &str) -> Result<Vec<String>> {
        let offs = self.bytes(&s.offsets, "u64", what)?;
        let bytes = self.bytes(&s.bytes, "u8", what)?;
        if s.offsets.len == 0 {
            return Err(Error::format(self.path, format!("{what}: empty offsets")));
        }
        if let Some(n) = n {
            self.expect_len(&s.offsets, n + 1, what)?;
        }
        let offs: Vec<u64> = offs.chunks_exact(8).map(u64::get).collect();
        let mut out = Vec::with_capacity(offs.len() - 1);
        for w in offs.windows(2) {
            if w[1] < w[0] || w[1] > bytes.len() as u64 {
                return Err(Error::format(
                    self.path,
                    format!("{what}: bad string offsets"),
                ));
            }
            let s = std::str::from_utf8(&bytes[w[0] as usize..w[1] as usize])
                .map_err(|_| Error::format(self.path, format!("{what}: a name is not UTF-8")))?;
            out.push(s.to_string());
        }
        Ok(out)
    }

    pub fn obs(&self, e: &ObsEntry, n_cells: u64) -> Result<ObsColumn> {
        let what = format!("obs column '{}'", e.name);
        let missing = |f: &str| Error::format(self.path, format!("{what}: no {f} array"));
        let n = Some(n_cells);
        let values = || e.values.as_ref().ok_or_else(|| missing("values"));
        Ok(match e.kind.as_str() {
            "categorical" => {
                let c = e.codes.as_ref().ok_or_else(|| missing("codes"))?;
                let codes: Vec<i32> = self.array(c, n, &what)?;
                let cats = e.categories.as_ref().ok_or_else(|| missing("categories"))?;
                let categories = self.strings(cats, None, &what)?;
                if let Some(&bad) = codes
                    .iter()
                    .find(|&&c| c < -1 || c >= categories.len() as i32)
                {
                    return Err(Error::format(
                        self.path,
                        format!("{what}: code {bad} but {} categories", categories.len()),
                    ));
                }
                ObsColumn::Categorical { codes, categories }
            }
            "strings" => {
                let s = e.strings.as_ref().ok_or_else(|| missing("strings"))?;
                ObsColumn::Strings(self.strings(s, n, &what)?)
            }
            "integers" => ObsColumn::Integers(self.array(values()?, n, &what)?),
            "floats" => ObsColumn::Floats(self.array(values()?, n, &what)?),
            "bools" => {
                let v: Vec<u8> = self.array(values()?, n, &what)?;
                ObsColumn::Bools(v.iter().map(|&b| b != 0).collect())
            }
            k => {
                return Err(Error::format(
                    self.path,
                    format!("{what}: unknown kind '{k}'"),
                ))
            }
        })
    }
}
