//! What the `.h5ad` and 10x readers share over `hdf5-reader`: the one decoder of stored numbers,
//! the names of stored types for messages, 1-D slice selections and the file signature.
//!
//! `hdf5-reader` hands values back only in the type they are stored in, and files store counts,
//! indices and codes in any of int8/16/32/64, uint8/16/32/64, float32/64. [`NumField`] reads a
//! dataset (whole, a range, or any selection) or [`attr_ints`] an attribute, dispatching once on
//! the stored type and converting every value to the type the caller asks for ([`Num`]: `f32`,
//! `f64`, or `i128`, which holds every stored integer exactly). Any other stored type is an error
//! naming the file and the field (`X/data: float16 is not supported; expected integer or
//! float32/float64`).
//!
//! Files are opened here too ([`open_file`]): only regular files (a named pipe would block the
//! open), with a read budget of the memory available. Every read of a whole dataset or a selection
//! is sized first ([`check_read`]): a dataset whose shape claims more than the file could hold, or
//! more memory than the machine has, is an error before anything is allocated, so a small file
//! that lies about its shapes cannot make the process abort.

use std::path::Path;
use std::sync::Arc;

use hdf5_reader::{
    Attribute, Dataset as H5Dataset, Datatype, Hdf5File, OpenOptions, SliceInfo, SliceInfoElem,
};

use super::CsrMatrix;
use crate::error::{Error, Result};
use crate::limits::{self, bytes_of, human_bytes};

/// `hdf5-reader`'s error type.
pub type H5Error = hdf5_reader::error::Error;

/// The reader's error as said after the field: without the reader's own context prefix (the
/// dataset's name, which the field before it already says).
pub fn h5_text(e: &H5Error) -> String {
    match e {
        H5Error::Context { source, .. } => h5_text(source),
        _ => e.to_string(),
    }
}

/// The numeric types a dataset may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumKind {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    F32,
    F64,
}

impl NumKind {
    /// The kind of a stored type, or None when it is not one of the ten numeric types.
    pub fn of(dt: &Datatype) -> Option<NumKind> {
        use NumKind::*;
        Some(match *dt {
            Datatype::FixedPoint { size, signed, .. } => match (size, signed) {
                (1, true) => I8,
                (2, true) => I16,
                (4, true) => I32,
                (8, true) => I64,
                (1, false) => U8,
                (2, false) => U16,
                (4, false) => U32,
                (8, false) => U64,
                _ => return None,
            },
            Datatype::FloatingPoint { size: 4, .. } => F32,
            Datatype::FloatingPoint { size: 8, .. } => F64,
            _ => return None,
        })
    }

    pub fn is_float(self) -> bool {
        matches!(self, NumKind::F32 | NumKind::F64)
    }

    /// numpy's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            NumKind::I8 => "int8",
            NumKind::I16 => "int16",
            NumKind::I32 => "int32",
            NumKind::I64 => "int64",
            NumKind::U8 => "uint8",
            NumKind::U16 => "uint16",
            NumKind::U32 => "uint32",
            NumKind::U64 => "uint64",
            NumKind::F32 => "float32",
            NumKind::F64 => "float64",
        }
    }
}

/// A type that stored numbers convert to: `as` casts from each stored type (exact for `i128` from
/// any integer and for `f64` from `f32`; rounding to nearest for floats from wider types).
pub trait Num: Copy {
    fn from_i128(x: i128) -> Self;
    fn from_f64(x: f64) -> Self;
    fn from_f32(x: f32) -> Self;
}

impl Num for f32 {
    fn from_i128(x: i128) -> Self {
        x as f32
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl Num for f64 {
    fn from_i128(x: i128) -> Self {
        x as f64
    }
    fn from_f64(x: f64) -> Self {
        x
    }
    fn from_f32(x: f32) -> Self {
        x as f64
    }
}

impl Num for i128 {
    fn from_i128(x: i128) -> Self {
        x
    }
    fn from_f64(x: f64) -> Self {
        x as i128
    }
    fn from_f32(x: f32) -> Self {
        x as i128
    }
}

/// A stored numeric type and how it converts.
trait Stored: hdf5_reader::H5Type + Copy {
    fn conv<T: Num>(self) -> T;
}

macro_rules! stored_int {
    ($($t:ty),*) => {$(
        impl Stored for $t {
            #[inline]
            fn conv<T: Num>(self) -> T {
                T::from_i128(self as i128)
            }
        }
    )*};
}
stored_int!(i8, i16, i32, i64, u8, u16, u32, u64);

impl Stored for f32 {
    #[inline]
    fn conv<T: Num>(self) -> T {
        T::from_f32(self)
    }
}

impl Stored for f64 {
    #[inline]
    fn conv<T: Num>(self) -> T {
        T::from_f64(self)
    }
}

/// Where stored values come from: something that reads them in their stored type `S`.
trait Source {
    fn values<S: Stored>(&self) -> std::result::Result<Vec<S>, H5Error>;
}

/// Read `src` as the stored type of `kind` and convert every value to `T`: the one dispatch on the
/// stored type.
fn decode<T: Num>(kind: NumKind, src: &impl Source) -> std::result::Result<Vec<T>, H5Error> {
    fn go<S: Stored, T: Num>(v: Vec<S>) -> Vec<T> {
        v.into_iter().map(Stored::conv::<T>).collect()
    }
    Ok(match kind {
        NumKind::I8 => go::<i8, T>(src.values()?),
        NumKind::I16 => go::<i16, T>(src.values()?),
        NumKind::I32 => go::<i32, T>(src.values()?),
        NumKind::I64 => go::<i64, T>(src.values()?),
        NumKind::U8 => go::<u8, T>(src.values()?),
        NumKind::U16 => go::<u16, T>(src.values()?),
        NumKind::U32 => go::<u32, T>(src.values()?),
        NumKind::U64 => go::<u64, T>(src.values()?),
        NumKind::F32 => go::<f32, T>(src.values()?),
        NumKind::F64 => go::<f64, T>(src.values()?),
    })
}

impl NumKind {
    /// Bytes of one stored value.
    pub fn size(self) -> u64 {
        match self {
            NumKind::I8 | NumKind::U8 => 1,
            NumKind::I16 | NumKind::U16 => 2,
            NumKind::I32 | NumKind::U32 | NumKind::F32 => 4,
            NumKind::I64 | NumKind::U64 | NumKind::F64 => 8,
        }
    }
}

/// Open `path` as HDF5 for reading: a regular file (never blocking on a named pipe or a device),
/// with reads refused beyond the memory available (`hdf5-reader`'s own budget, behind the sizing
/// of [`check_read`]). An error says whether the file is unreadable, not HDF5 at all, or damaged.
pub fn open_file(path: &Path) -> Result<Hdf5File> {
    let file = limits::open_regular(path)?;
    let storage = hdf5_reader::storage::FileStorage::from_file(file)
        .map_err(|e| Error::format(path, format!("cannot be read: {e}")))?;
    let opts = OpenOptions {
        max_read_bytes: limits::mem_available()
            .and_then(|b| usize::try_from(b).ok())
            .unwrap_or(usize::MAX),
        ..OpenOptions::default()
    };
    Hdf5File::from_storage_with_options(Arc::new(storage), opts).map_err(|e| {
        if has_signature(path) {
            Error::format(path, format!("cannot be read as HDF5: {e}"))
        } else {
            Error::format(
                path,
                "is not an HDF5 file (no HDF5 signature); expected an AnnData .h5ad file, a 10x \
                 Cell Ranger .h5 file, a scvi-rs store or a 10x MTX folder",
            )
        }
    })
}

/// The best ratio HDF5's deflate filter reaches (1032:1 on runs of one byte), rounded up. A dataset
/// claiming more decoded bytes than this times the file's size is either corrupt or made of chunks
/// that were never written, which anndata and Cell Ranger never leave.
const MAX_COMPRESSION: u64 = 1100;

/// Size a read of `n` entries of `field` in `path` before anything is allocated for it:
/// `stored_bytes` per entry as the file holds them (for what the file can hold) and `memory_bytes`
/// per entry in memory once decoded (for the memory available). An error names the file, the
/// field, the count and what there is.
pub fn check_read(
    path: &Path,
    field: &str,
    n: u64,
    stored_bytes: u64,
    memory_bytes: u64,
) -> Result<()> {
    const SMALL: u64 = 256 << 20;
    let stored = bytes_of(n, stored_bytes);
    if stored > SMALL {
        let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
        if stored / MAX_COMPRESSION > file_len {
            return Err(Error::format(
                path,
                format!(
                    "{field} claims {n} entries ({} decoded), more than this {} file can hold \
                     even compressed at deflate's best ratio: the file is corrupt",
                    human_bytes(stored),
                    human_bytes(file_len)
                ),
            ));
        }
    }
    limits::ensure_memory(bytes_of(n, memory_bytes), || {
        format!("{}: reading {field} ({n} entries)", path.display())
    })
}

/// Entries in a dataset of this shape (saturating: an absurd shape is refused by the sizing).
pub fn n_entries(shape: &[u64]) -> u64 {
    shape.iter().fold(1u64, |n, &d| n.saturating_mul(d))
}

/// Bytes one entry of type `dt` takes in a file: a fixed-length string or number its size, a
/// variable-length string its 16-byte heap reference.
fn stored_size(dt: &Datatype) -> u64 {
    match dt {
        Datatype::String {
            size: hdf5_reader::StringSize::Fixed(n),
            ..
        } => (*n as u64).max(1),
        Datatype::String { .. } => 16,
        Datatype::VarLen { .. } => 16,
        _ => NumKind::of(dt).map_or(1, NumKind::size),
    }
}

/// A string dataset (an index, a column, barcodes), sized first ([`check_read`]: a string takes
/// 24 bytes plus its text in memory).
pub fn read_strings(path: &Path, field: &str, ds: &H5Dataset) -> Result<Vec<String>> {
    let stored = stored_size(ds.dtype());
    check_read(path, field, n_entries(ds.shape()), stored, 24 + stored)?;
    ds.read_strings()
        .map_err(|e| Error::format(path, format!("{field}: {}", h5_text(&e))))
}

/// The raw bytes of a dataset of 1-byte values (booleans), sized first.
pub fn read_bytes(path: &Path, field: &str, ds: &H5Dataset) -> Result<Vec<u8>> {
    check_read(path, field, n_entries(ds.shape()), 1, 1)?;
    ds.read_raw_bytes()
        .map_err(|e| Error::format(path, format!("{field}: {}", h5_text(&e))))
}

/// A selection of a dataset (None: all of it).
struct Selected<'a>(&'a H5Dataset, Option<&'a SliceInfo>);

impl Source for Selected<'_> {
    fn values<S: Stored>(&self) -> std::result::Result<Vec<S>, H5Error> {
        let arr = match self.1 {
            Some(sel) => self.0.read_slice_parallel::<S>(sel)?,
            None => self.0.read_array::<S>()?,
        };
        Ok(if arr.is_standard_layout() {
            let (v, offset) = arr.into_raw_vec_and_offset();
            match offset {
                Some(0) | None => v,
                Some(o) => v[o..].to_vec(),
            }
        } else {
            arr.iter().copied().collect()
        })
    }
}

impl Source for Attribute {
    fn values<S: Stored>(&self) -> std::result::Result<Vec<S>, H5Error> {
        self.read_1d::<S>()
    }
}

/// A numeric dataset of a file, named for messages: `X/data`, `matrix/indptr`, ...
pub struct NumField<'a> {
    path: &'a Path,
    field: &'a str,
    ds: &'a H5Dataset,
    kind: NumKind,
}

impl<'a> NumField<'a> {
    /// The dataset `ds`, called `field` in `path`; an error when it does not hold numbers.
    pub fn new(path: &'a Path, field: &'a str, ds: &'a H5Dataset) -> Result<NumField<'a>> {
        let kind = num_kind(path, field, ds.dtype())?;
        Ok(NumField {
            path,
            field,
            ds,
            kind,
        })
    }

    pub fn kind(&self) -> NumKind {
        self.kind
    }

    /// The whole dataset.
    pub fn all<T: Num>(&self) -> Result<Vec<T>> {
        self.size::<T>(n_entries(self.ds.shape()))?;
        self.read(None)
    }

    /// Size a read of `n` entries decoded as `T` ([`check_read`]): the stored values and the
    /// converted ones are in memory together for a moment.
    fn size<T: Num>(&self, n: u64) -> Result<()> {
        let t = std::mem::size_of::<T>() as u64;
        check_read(
            self.path,
            self.field,
            n,
            self.kind.size(),
            self.kind.size() + t,
        )
    }

    /// Entries `a..b` of a 1-D dataset.
    pub fn range<T: Num>(&self, a: u64, b: u64) -> Result<Vec<T>> {
        if a == b {
            return Ok(Vec::new());
        }
        self.size::<T>(b.saturating_sub(a))?;
        self.read(Some(&slice(a, b)))
    }

    /// Rows `r0..r1` (all `n_cols` columns) of a 2-D dataset, row-major.
    pub fn rows<T: Num>(&self, r0: u64, r1: u64, n_cols: u64) -> Result<Vec<T>> {
        self.size::<T>(r1.saturating_sub(r0).saturating_mul(n_cols))?;
        let mut sel = slice(r0, r1);
        sel.selections.extend(slice(0, n_cols).selections);
        self.read(Some(&sel))
    }

    /// Entries `a..b` of an integer dataset of indices, each checked to lie in `0..bound`; `what`
    /// names an entry in the message ("column", "row", "offset").
    pub fn indices(&self, a: u64, b: u64, bound: u64, what: &str) -> Result<Vec<u64>> {
        let v: Vec<i128> = self.range(a, b)?;
        let mut out = Vec::with_capacity(v.len());
        for (k, &x) in v.iter().enumerate() {
            if x < 0 || x as u128 >= bound as u128 {
                return Err(Error::format(
                    self.path,
                    format!(
                        "{}[{}] = {x} is not a valid {what} index{}",
                        self.field,
                        a + k as u64,
                        if bound == u64::MAX {
                            String::new()
                        } else {
                            format!(" (0..{bound})")
                        }
                    ),
                ));
            }
            out.push(x as u64);
        }
        Ok(out)
    }

    /// The offsets of a compressed sparse matrix (the whole 1-D dataset), checked: from 0, never
    /// decreasing, ending at `nnz`; `values` names the array they index, for the message.
    pub fn offsets(&self, nnz: u64, values: &str) -> Result<Vec<u64>> {
        let n = self.ds.shape().first().copied().unwrap_or(0);
        let ptr = self.indices(0, n, u64::MAX, "offset")?;
        let field = self.field;
        let err = |msg: String| Error::format(self.path, msg);
        if ptr.first() != Some(&0) {
            return Err(err(format!(
                "{field} starts at {:?}, expected 0",
                ptr.first()
            )));
        }
        if let Some(i) = ptr.windows(2).position(|w| w[1] < w[0]) {
            return Err(err(format!(
                "{field} decreases at entry {} ({} then {})",
                i + 1,
                ptr[i],
                ptr[i + 1]
            )));
        }
        let last = *ptr.last().unwrap_or(&0);
        if last != nnz {
            return Err(err(format!(
                "{field} ends at {last}, but {values} holds {nnz} values"
            )));
        }
        Ok(ptr)
    }

    fn read<T: Num>(&self, sel: Option<&SliceInfo>) -> Result<Vec<T>> {
        decode(self.kind, &Selected(self.ds, sel))
            .map_err(|e| Error::format(self.path, format!("{}: {}", self.field, h5_text(&e))))
    }
}

/// A compressed sparse matrix in a file, read a range of rows at a time: its row offsets (read
/// whole and checked), its column indices and its values. An `.h5ad` CSR matrix is one; so is a
/// 10x matrix, whose genes x cells CSC is the CSR of cells x genes.
pub struct StoredCsr<'a> {
    /// `X`, `layers/counts`, `matrix`: the matrix in messages.
    pub name: &'a str,
    pub ptr: &'a [u64],
    pub indices: NumField<'a>,
    pub values: NumField<'a>,
}

impl StoredCsr<'_> {
    /// Rows `r0..r1`, every column index checked to lie in `0..n_cols`, rows made canonical.
    pub fn rows(&self, r0: usize, r1: usize, n_cols: usize) -> Result<CsrMatrix> {
        let (a, b) = (self.ptr[r0], self.ptr[r1]);
        let idx = self.indices.indices(a, b, n_cols as u64, "column")?;
        let chunk = CsrMatrix {
            n_rows: r1 - r0,
            n_cols,
            indptr: self.ptr[r0..=r1].iter().map(|&p| p - a).collect(),
            indices: idx.into_iter().map(|x| x as u32).collect(),
            data: self.values.range(a, b)?,
        };
        canonical_rows(chunk, self.indices.path, self.name, r0)
    }
}

/// Make a chunk of rows (whose first row is row `r0` of matrix `name` in `path`) canonical, as
/// scipy's `sum_duplicates` does (files nearly always store them so already), and check its
/// structure.
pub fn canonical_rows(
    mut chunk: CsrMatrix,
    path: &Path,
    name: &str,
    r0: usize,
) -> Result<CsrMatrix> {
    chunk.canonicalize();
    chunk.validate_structure().map_err(|e| {
        Error::format(
            path,
            format!(
                "{name} (rows {r0}..{}; row numbers below count from {r0}): {e}",
                r0 + chunk.n_rows
            ),
        )
    })?;
    Ok(chunk)
}

/// The numeric kind of a stored type, or an error naming the file and the field.
pub fn num_kind(path: &Path, field: &str, dt: &Datatype) -> Result<NumKind> {
    NumKind::of(dt).ok_or_else(|| {
        let name = dtype_name(dt);
        Error::format(
            path,
            match dt {
                Datatype::FixedPoint { .. } | Datatype::FloatingPoint { .. } => {
                    format!("{field}: {name} is not supported; expected integer or float32/float64")
                }
                _ => format!("{field} has type {name}, expected numbers"),
            },
        )
    })
}

/// An integer attribute (a scalar or a 1-D array) as `i64`s; None when it is absent, not integer,
/// or holds a value beyond `i64`.
pub fn attr_ints(attrs: &[Attribute], name: &str) -> Option<Vec<i64>> {
    let a = attrs.iter().find(|a| a.name == name)?;
    let kind = NumKind::of(&a.datatype).filter(|k| !k.is_float())?;
    let v: Vec<i128> = decode(kind, a).ok()?;
    v.into_iter().map(|x| i64::try_from(x).ok()).collect()
}

/// The selection of entries `a..b` of a 1-D dataset.
pub fn slice(a: u64, b: u64) -> SliceInfo {
    SliceInfo {
        selections: vec![SliceInfoElem::Slice {
            start: a,
            end: b,
            step: 1,
        }],
    }
}

pub fn is_string_type(dt: &Datatype) -> bool {
    match dt {
        Datatype::String { .. } => true,
        Datatype::VarLen { kind, base, .. } => {
            *kind == hdf5_reader::VarLenKind::String && base.is_vlen_string_base()
        }
        _ => false,
    }
}

/// numpy's bool, as h5py stores it: an enum over a 1-byte integer (FALSE = 0, TRUE = 1).
pub fn is_bool_type(dt: &Datatype) -> bool {
    match dt {
        Datatype::Enum { base, .. } => matches!(**base, Datatype::FixedPoint { size: 1, .. }),
        Datatype::Bitfield { size: 1, .. } => true,
        _ => false,
    }
}

/// A stored type's name for messages (numpy's names where there is one).
pub fn dtype_name(dt: &Datatype) -> String {
    if let Some(k) = NumKind::of(dt) {
        return k.name().to_string();
    }
    match dt {
        _ if is_string_type(dt) => "string".into(),
        _ if is_bool_type(dt) => "bool".into(),
        Datatype::FloatingPoint { size, .. } => format!("float{}", size * 8),
        Datatype::FixedPoint { size, signed, .. } => {
            format!("{}int{}", if *signed { "" } else { "u" }, size * 8)
        }
        Datatype::Compound { .. } => "compound".into(),
        Datatype::Enum { .. } => "enum".into(),
        Datatype::Array { .. } => "array".into(),
        Datatype::Opaque { .. } => "opaque".into(),
        Datatype::Reference { .. } => "reference".into(),
        Datatype::VarLen { .. } => "variable-length sequence".into(),
        other => format!("{other:?}"),
    }
}

/// Whether `path` carries the HDF5 signature where the format allows it (offset 0, 512, 1024,
/// 2048, ...).
pub fn has_signature(path: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    const SIG: [u8; 8] = [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut at = 0u64;
    while at + 8 <= len {
        let mut buf = [0u8; 8];
        if file.seek(SeekFrom::Start(at)).is_err() || file.read_exact(&mut buf).is_err() {
            return false;
        }
        if buf == SIG {
            return true;
        }
        at = if at == 0 { 512 } else { at * 2 };
    }
    false
}
