//! The `obs` and `var` dataframes as anndata before 0.7 wrote them, read as anndata still reads
//! them (`read_dataframe_legacy` and `_clean_uns`):
//!
//! - the dataframe is one compound dataset, one record per row; its first field is the index (the
//!   cell or gene names), every other field a column, in the record's order;
//! - a column of integer codes whose categories sit in `uns/<column>_categories` is categorical,
//!   when every code is below the number of categories (anndata's own test; -1 is missing);
//! - strings are fixed-length bytes (UTF-8), booleans numpy's `?` (an enum over one byte).
//!
//! The matrix of such files (`X` dense, or an `h5sparse` group) is read by [`super::matrix`];
//! `raw.X` / `raw.var` are not read (scvi-rs reads `X` or a layer, as before).

use hdf5_reader::group::Group;
use hdf5_reader::{Datatype, StringPadding, StringSize};

use super::frames::Column;
use super::H5ad;
use crate::data::hdf5::{self, NumKind};
use crate::data::ObsColumn;
use crate::error::Result;

/// A legacy dataframe: its row names and its columns (or why a column is skipped).
pub(super) struct LegacyFrame {
    pub(super) names: Vec<String>,
    pub(super) columns: Vec<(String, Column)>,
}

impl H5ad {
    /// Whether `frame` (`obs` or `var`) is a dataset at the top of the file (the legacy layout);
    /// the record's field names when it is.
    pub(super) fn legacy_fields(&self, frame: &str) -> Result<Option<Vec<String>>> {
        let root = self.root_group()?;
        let (_, datasets) = self.members(&root, "/")?;
        if !datasets.iter().any(|d| d == frame) {
            return Ok(None);
        }
        let ds = self.dataset(&root, frame, frame)?;
        match ds.dtype() {
            Datatype::Compound { fields, .. } => {
                Ok(Some(fields.iter().map(|f| f.name.clone()).collect()))
            }
            other => Err(self.err(format!(
                "{frame} is a dataset of type {}; expected a group (anndata 0.7+) or a compound \
                 dataset (anndata < 0.7)",
                hdf5::dtype_name(other)
            ))),
        }
    }

    /// The number of rows of a legacy dataframe (from its shape; no values read).
    pub(super) fn legacy_len(&self, frame: &str) -> Result<Option<u64>> {
        if self.legacy_fields(frame)?.is_none() {
            return Ok(None);
        }
        let ds = self.dataset(&self.root_group()?, frame, frame)?;
        Ok(ds.shape().first().copied())
    }

    /// Read the legacy dataframe `frame`, or None when `frame` is not a dataset.
    pub(super) fn legacy_frame(&self, frame: &str) -> Result<Option<LegacyFrame>> {
        if self.legacy_fields(frame)?.is_none() {
            return Ok(None);
        }
        let root = self.root_group()?;
        let ds = self.dataset(&root, frame, frame)?;
        let Datatype::Compound { size, fields } = ds.dtype().clone() else {
            return Ok(None);
        };
        if ds.ndim() != 1 {
            return Err(self.err(format!(
                "{frame} has shape {:?}, expected one record per row (1-D)",
                ds.shape()
            )));
        }
        let n = ds.shape()[0];
        let record = size as usize;
        hdf5::check_read(&self.path, frame, n, record as u64, record as u64)?;
        let bytes = ds.read_native_bytes().map_err(self.h5err(frame))?;
        if fields.is_empty() || bytes.len() < n as usize * record {
            return Err(self.err(format!("{frame}: no fields, or fewer bytes than records")));
        }
        let mut columns = Vec::with_capacity(fields.len());
        for f in &fields {
            let field = format!("{frame}['{}']", f.name);
            let at = f.byte_offset as usize;
            let values = |width: usize| -> Result<Vec<&[u8]>> {
                if at + width > record {
                    return Err(self.err(format!("{field} lies beyond the {record}-byte record")));
                }
                Ok(bytes
                    .chunks_exact(record)
                    .map(|r| &r[at..at + width])
                    .collect())
            };
            let col =
                match &f.datatype {
                    Datatype::String {
                        size: StringSize::Fixed(w),
                        padding,
                        ..
                    } => {
                        let mut out = Vec::with_capacity(n as usize);
                        for (i, v) in values(*w as usize)?.into_iter().enumerate() {
                            out.push(fixed_string(v, *padding).ok_or_else(|| {
                                self.err(format!("{field}[{i}] is not UTF-8 text"))
                            })?);
                        }
                        Ok(ObsColumn::Strings(out))
                    }
                    dt if hdf5::is_bool_type(dt) => Ok(ObsColumn::Bools(
                        values(1)?.into_iter().map(|v| v[0] != 0).collect(),
                    )),
                    dt if hdf5::is_string_type(dt) => Err(
                        "variable-length strings in a compound record, which scvi-rs does not \
                         read (anndata < 0.7 wrote fixed-length ones; re-save the file with a \
                         recent anndata)"
                            .into(),
                    ),
                    dt => match NumKind::of(dt) {
                        Some(kind) => Ok(numbers(kind, &values(kind.size() as usize)?)),
                        None => Err(format!("values of type {}", hdf5::dtype_name(dt))),
                    },
                };
            columns.push((f.name.clone(), col));
        }
        let (index_name, index) = columns.remove(0);
        let index_field = format!("{frame}['{index_name}']");
        let names = match index {
            Ok(ObsColumn::Strings(v)) => v,
            Ok(ObsColumn::Integers(v)) => v.iter().map(|x| x.to_string()).collect(),
            Ok(_) => {
                return Err(self.err(format!(
                    "{index_field}: an index of this type is not supported"
                )))
            }
            Err(why) => return Err(self.err(format!("{index_field}: {why}"))),
        };
        for (name, col) in columns.iter_mut() {
            if let Ok(ObsColumn::Integers(codes)) = col {
                if let Some(c) = self.legacy_categories(frame, name, codes)? {
                    *col = Ok(c);
                }
            }
        }
        Ok(Some(LegacyFrame { names, columns }))
    }

    /// `uns/<name>_categories` applied to `codes`, as anndata's `_clean_uns` does: only when the
    /// categories exist and every code is below their number (otherwise the column stays integers).
    fn legacy_categories(
        &self,
        frame: &str,
        name: &str,
        codes: &[i64],
    ) -> Result<Option<ObsColumn>> {
        let root = self.root_group()?;
        let Some(uns) = self.child_group(&root, "uns", "uns")? else {
            return Ok(None);
        };
        let key = format!("{name}_categories");
        let (_, datasets) = self.members(&uns, "uns")?;
        if !datasets.contains(&key) {
            return Ok(None);
        }
        let field = format!("uns/{key}");
        let ds = self.dataset(&uns, &key, &field)?;
        let categories = match self.category_names(&ds, &field) {
            Ok(c) => c,
            // anndata leaves the column as integers when its categories cannot be used.
            Err(_) => return Ok(None),
        };
        if codes.iter().any(|&c| c >= categories.len() as i64) {
            return Ok(None);
        }
        self.categorical(&format!("{frame}['{name}']"), &field, codes, categories)
            .map(Some)
    }

    /// A categorical column as anndata 0.7 wrote it (dataframe encoding 0.1.0): the codes are the
    /// column's dataset, whose `categories` attribute references `<frame>/__categories/<name>`,
    /// where anndata 0.7 always put them (anndata's `read_series`).
    pub(super) fn categories_0_7(
        &self,
        frame: &Group,
        name: &str,
        codes: &[i64],
    ) -> Result<ObsColumn> {
        let (codes_field, cats_field) = (format!("obs/{name}"), format!("obs/__categories/{name}"));
        let cats = self
            .child_group(frame, "__categories", "obs/__categories")?
            .ok_or_else(|| {
                self.err(format!(
                    "{codes_field} has a 'categories' attribute (anndata 0.7) but there is no \
                     {cats_field}"
                ))
            })?;
        let ds = self.dataset(&cats, name, &cats_field)?;
        let categories = self.category_names(&ds, &cats_field)?;
        self.categorical(&codes_field, &cats_field, codes, categories)
    }

    /// A dataset of categories as names (strings, or numbers as pandas prints them).
    fn category_names(&self, ds: &hdf5_reader::Dataset, field: &str) -> Result<Vec<String>> {
        match self.read_dataset_column(ds, field)? {
            Ok(col) => super::frames::as_names(col)
                .ok_or_else(|| self.err(format!("{field}: categories of an unexpected kind"))),
            Err(why) => Err(self.err(format!("{field}: {why}"))),
        }
    }
}

/// A fixed-length string field: up to the first NUL (null-terminated or null-padded) or without
/// its trailing spaces (space-padded); None when it is not UTF-8.
fn fixed_string(v: &[u8], padding: StringPadding) -> Option<String> {
    let s = match padding {
        StringPadding::SpacePad => {
            let end = v.iter().rposition(|&b| b != b' ').map_or(0, |e| e + 1);
            &v[..end]
        }
        _ => &v[..v.iter().position(|&b| b == 0).unwrap_or(v.len())],
    };
    String::from_utf8(s.to_vec()).ok()
}

/// Numeric fields (native-endian bytes, `kind.size()` each) as a column: floats, or integers (floats
/// when an unsigned value exceeds `i64`).
fn numbers(kind: NumKind, values: &[&[u8]]) -> ObsColumn {
    fn arr<const N: usize>(v: &[u8]) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&v[..N]);
        a
    }
    let int = |v: &[u8]| -> i128 {
        match kind {
            NumKind::I8 => v[0] as i8 as i128,
            NumKind::U8 => v[0] as i128,
            NumKind::I16 => i16::from_ne_bytes(arr(v)) as i128,
            NumKind::U16 => u16::from_ne_bytes(arr(v)) as i128,
            NumKind::I32 => i32::from_ne_bytes(arr(v)) as i128,
            NumKind::U32 => u32::from_ne_bytes(arr(v)) as i128,
            NumKind::I64 => i64::from_ne_bytes(arr(v)) as i128,
            NumKind::U64 => u64::from_ne_bytes(arr(v)) as i128,
            NumKind::F32 | NumKind::F64 => 0,
        }
    };
    match kind {
        NumKind::F32 => ObsColumn::Floats(
            values
                .iter()
                .map(|v| f32::from_ne_bytes(arr(v)) as f64)
                .collect(),
        ),
        NumKind::F64 => {
            ObsColumn::Floats(values.iter().map(|v| f64::from_ne_bytes(arr(v))).collect())
        }
        _ => super::frames::integers(values.iter().map(|v| int(v)).collect()),
    }
}
