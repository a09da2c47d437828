//! The `obs` and `var` dataframes of an `.h5ad`: their indexes (cell and gene names) and the `obs`
//! columns, as anndata 0.8+ encodes them (plain arrays, string arrays, categoricals, nullable
//! integers / booleans / strings).

use hdf5_reader::group::Group;
use hdf5_reader::{Attribute, Dataset as H5Dataset};

use super::{attr_string, H5ad, ObsTable};
use crate::data::hdf5::{self, NumKind};
use crate::data::ObsColumn;
use crate::error::Result;

/// A column as read, or why it is skipped (a kind scvi-rs does not read).
pub(super) type Column = std::result::Result<ObsColumn, String>;

impl H5ad {
    pub(super) fn read_var_names(&self) -> Result<Vec<String>> {
        if let Some(legacy) = self.legacy_frame("var")? {
            return Ok(legacy.names);
        }
        Ok(self.dataframe("var", "gene names")?.2)
    }

    pub(super) fn read_obs(&self) -> Result<ObsTable> {
        if let Some(legacy) = self.legacy_frame("obs")? {
            let mut columns = Vec::with_capacity(legacy.columns.len());
            for (name, col) in legacy.columns {
                match col {
                    Ok(c) => columns.push((name, c)),
                    Err(why) => self.warn_skipped(&format!("obs['{name}']"), &why),
                }
            }
            return Ok((legacy.names, columns));
        }
        let (obs, attrs, names) = self.dataframe("obs", "cell annotations")?;
        let order = column_order(&attrs).ok_or_else(|| {
            self.err("obs: the 'column-order' attribute is missing or not a list of names")
        })?;
        let (groups, datasets) = self.members(&obs, "obs")?;
        let mut columns = Vec::with_capacity(order.len());
        for name in order {
            let field = format!("obs/{name}");
            let col = if groups.contains(&name) {
                let g = obs.group(&name).map_err(self.h5err(&field))?;
                self.read_group_column(&g, &field)?
            } else if datasets.contains(&name) {
                let ds = self.dataset(&obs, &name, &field)?;
                match self.read_dataset_column(&ds, &field)? {
                    Ok(ObsColumn::Integers(codes)) if ds.attribute("categories").is_ok() => {
                        Ok(self.categories_0_7(&obs, &name, &codes)?)
                    }
                    col => col,
                }
            } else {
                return Err(self.err(format!(
                    "obs: 'column-order' lists '{name}' but there is no '{field}'"
                )));
            };
            match col {
                Ok(c) if c.len() == names.len() => columns.push((name, c)),
                Ok(c) => {
                    return Err(self.err(format!(
                        "{field} has {} values but obs has {} cells",
                        c.len(),
                        names.len()
                    )))
                }
                Err(why) => self.warn_skipped(&field, &why),
            }
        }
        Ok((names, columns))
    }

    /// The warning for an obs column of a kind scvi-rs does not read.
    fn warn_skipped(&self, field: &str, why: &str) {
        eprintln!(
            "warning: {}: {field} skipped: {why}; scvi-rs reads categorical, string, numeric and \
             boolean columns",
            self.path.display()
        );
    }

    /// The dataframe `frame` (`obs` or `var`, holding `what`): its group, its attributes and its
    /// index as names.
    fn dataframe(&self, frame: &str, what: &str) -> Result<(Group, Vec<Attribute>, Vec<String>)> {
        let root = self.root_group()?;
        let g = self
            .child_group(&root, frame, frame)?
            .ok_or_else(|| self.err(format!("no '{frame}' group in file ({what})")))?;
        let attrs = self.attrs(&g, frame)?;
        match attr_string(&attrs, "encoding-type").as_deref() {
            Some("dataframe") => {}
            Some(other) => {
                return Err(self.err(format!(
                    "{frame} has encoding '{other}', expected 'dataframe'"
                )))
            }
            None => {
                return Err(self.err(format!(
                    "{frame} is a group with no 'encoding-type' attribute: not a dataframe as any \
                     anndata wrote it (0.8+ and 0.7 mark it 'dataframe'; before 0.7 it is a \
                     compound dataset)"
                )))
            }
        }
        let index = attr_string(&attrs, "_index").unwrap_or_else(|| "_index".to_string());
        let field = format!("{frame}/{index}");
        // An index is strings; numbers are turned into strings.
        let ds = self.dataset(&g, &index, &field)?;
        let names = match self.read_dataset_column(&ds, &field)? {
            Ok(ObsColumn::Bools(_) | ObsColumn::Categorical { .. }) => {
                return Err(self.err(format!("{field}: an index of this type is not supported")))
            }
            Ok(col) => as_names(col).unwrap_or_default(),
            Err(why) => return Err(self.err(format!("{field}: {why}"))),
        };
        Ok((g, attrs, names))
    }

    /// A column stored as a dataset.
    pub(super) fn read_dataset_column(&self, ds: &H5Dataset, field: &str) -> Result<Column> {
        let attrs = ds.attributes();
        let enc = attr_string(&attrs, "encoding-type");
        if ds.ndim() != 1 {
            return Ok(Err(format!("a {}-D array", ds.ndim())));
        }
        match enc.as_deref() {
            None | Some("array") | Some("string-array") => {}
            Some(other) => return Ok(Err(format!("encoding '{other}'"))),
        }
        if hdf5::is_string_type(ds.dtype()) {
            let v = hdf5::read_strings(&self.path, field, ds)?;
            return Ok(Ok(ObsColumn::Strings(v)));
        }
        if NumKind::of(ds.dtype()).is_some() {
            let num = self.num(field, ds)?;
            return Ok(Ok(if num.kind().is_float() {
                ObsColumn::Floats(num.all()?)
            } else {
                integers(num.all()?)
            }));
        }
        if hdf5::is_bool_type(ds.dtype()) {
            let raw = hdf5::read_bytes(&self.path, field, ds)?;
            return Ok(Ok(ObsColumn::Bools(raw.iter().map(|&b| b != 0).collect())));
        }
        Ok(Err(format!(
            "values of type {}",
            hdf5::dtype_name(ds.dtype())
        )))
    }

    /// Codes (any integers; -1 is missing) over categories as a column: a code out of range is an
    /// error naming `codes_field`; repeated categories (in `cats_field`) are merged with a warning.
    pub(super) fn categorical(
        &self,
        codes_field: &str,
        cats_field: &str,
        codes: &[i64],
        mut categories: Vec<String>,
    ) -> Result<ObsColumn> {
        let mut out = Vec::with_capacity(codes.len());
        for (i, &c) in codes.iter().enumerate() {
            if c < -1 || c >= categories.len() as i64 {
                return Err(self.err(format!(
                    "{codes_field}[{i}] = {c}, but there are {} categories in {cats_field}",
                    categories.len()
                )));
            }
            out.push(c as i32);
        }
        if let Some((remap, what)) = merge_repeats(&mut categories) {
            // pandas refuses such a column ("Categorical categories must be unique");
            // the repeats are one category by name, so they become one.
            eprintln!(
                "warning: {}: {cats_field} repeats {what}; scvi-rs merges the repeats into one \
                 category (pandas would refuse the column)",
                self.path.display()
            );
            for c in out.iter_mut().filter(|c| **c >= 0) {
                *c = remap[*c as usize];
            }
        }
        Ok(ObsColumn::Categorical {
            codes: out,
            categories,
        })
    }

    /// A column stored as a group: categorical, nullable integer / boolean / string.
    fn read_group_column(&self, g: &Group, field: &str) -> Result<Column> {
        let attrs = self.attrs(g, field)?;
        let enc = attr_string(&attrs, "encoding-type").unwrap_or_default();
        let sub = |name: &str| -> Result<ObsColumn> {
            let f = format!("{field}/{name}");
            let ds = self.dataset(g, name, &f)?;
            self.read_dataset_column(&ds, &f)?
                .map_err(|why| self.err(format!("{f}: {why}")))
        };
        match enc.as_str() {
            "categorical" => {
                let codes = match sub("codes")? {
                    ObsColumn::Integers(v) => v,
                    _ => return Err(self.err(format!("{field}/codes: expected integers"))),
                };
                let Some(categories) = as_names(sub("categories")?) else {
                    return Ok(Err("categories of an unexpected kind".into()));
                };
                let (codes_field, cats_field) =
                    (format!("{field}/codes"), format!("{field}/categories"));
                self.categorical(&codes_field, &cats_field, &codes, categories)
                    .map(Ok)
            }
            "nullable-integer" | "nullable-boolean" | "nullable-string-array" => {
                let values = sub("values")?;
                let mask = match sub("mask")? {
                    ObsColumn::Bools(m) => m,
                    _ => return Err(self.err(format!("{field}/mask: expected booleans"))),
                };
                if mask.len() != values.len() {
                    return Err(self.err(format!(
                        "{field}: mask has {} entries but values has {}",
                        mask.len(),
                        values.len()
                    )));
                }
                Ok(with_missing(values, &mask))
            }
            "" => Ok(Err("a group with no encoding-type".into())),
            other => Ok(Err(format!("encoding '{other}'"))),
        }
    }
}

/// A nullable column's values with its mask applied (`true`: missing). With nothing missing the
/// values stay as they are; numbers become floats with NaN for the missing ones; booleans and
/// strings become categoricals (False/True, or the sorted values) with code -1 for them.
fn with_missing(values: ObsColumn, mask: &[bool]) -> Column {
    if !mask.iter().any(|&m| m) {
        return Ok(values);
    }
    let masked = |x: Vec<f64>| {
        let v = x.into_iter().zip(mask);
        ObsColumn::Floats(v.map(|(x, &m)| if m { f64::NAN } else { x }).collect())
    };
    Ok(match values {
        ObsColumn::Integers(v) => masked(v.iter().map(|&x| x as f64).collect()),
        ObsColumn::Floats(v) => masked(v),
        ObsColumn::Bools(v) => ObsColumn::Categorical {
            codes: v
                .iter()
                .zip(mask)
                .map(|(&b, &m)| if m { -1 } else { b as i32 })
                .collect(),
            categories: vec!["False".into(), "True".into()],
        },
        ObsColumn::Strings(v) => {
            let mut cats: Vec<&String> = v
                .iter()
                .zip(mask)
                .filter(|(_, &m)| !m)
                .map(|(s, _)| s)
                .collect();
            cats.sort();
            cats.dedup();
            let codes = v
                .iter()
                .zip(mask)
                .map(|(s, &m)| {
                    if m {
                        -1
                    } else {
                        cats.binary_search(&s).map(|i| i as i32).unwrap_or(-1)
                    }
                })
                .collect();
            let categories = cats.into_iter().cloned().collect();
            ObsColumn::Categorical { codes, categories }
        }
        ObsColumn::Categorical { .. } => return Err("nullable values of an unexpected kind".into()),
    })
}

/// Merge repeated categories into their first occurrence: when there are repeats, the categories
/// are made unique in place and the old code -> new code map comes back with the repeats in words.
fn merge_repeats(categories: &mut Vec<String>) -> Option<(Vec<i32>, String)> {
    let mut first: std::collections::HashMap<&str, i32> = std::collections::HashMap::new();
    let mut remap = Vec::with_capacity(categories.len());
    let mut repeated = Vec::new();
    let mut n_unique = 0;
    for c in categories.iter() {
        match first.get(c.as_str()) {
            Some(&k) => {
                remap.push(k);
                repeated.push(c.clone());
            }
            None => {
                first.insert(c, n_unique);
                remap.push(n_unique);
                n_unique += 1;
            }
        }
    }
    if repeated.is_empty() {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    categories.retain(|c| seen.insert(c.clone()));
    let shown: Vec<String> = repeated.iter().take(5).map(|c| format!("'{c}'")).collect();
    Some((
        remap,
        format!("{} ({} in all)", shown.join(", "), repeated.len()),
    ))
}

/// Stored integers as a column: `Integers`, or `Floats` when one exceeds `i64` (a uint64 column).
pub(super) fn integers(v: Vec<i128>) -> ObsColumn {
    match v.iter().map(|&x| i64::try_from(x)).collect() {
        Ok(ints) => ObsColumn::Integers(ints),
        Err(_) => ObsColumn::Floats(v.iter().map(|&x| x as f64).collect()),
    }
}

/// A column's values as names, the way pandas prints them (None for a categorical).
pub(super) fn as_names(col: ObsColumn) -> Option<Vec<String>> {
    Some(match col {
        ObsColumn::Strings(v) => v,
        ObsColumn::Integers(v) => v.iter().map(|x| x.to_string()).collect(),
        ObsColumn::Floats(v) => v.iter().map(|&x| py_float(x)).collect(),
        ObsColumn::Bools(v) => v
            .iter()
            .map(|&b| if b { "True" } else { "False" }.to_string())
            .collect(),
        ObsColumn::Categorical { .. } => return None,
    })
}

/// Python's `str(float)` for the common cases (`1.0`, not `1`), so numeric categories read as
/// pandas prints them.
fn py_float(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x:.1}")
    } else if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{x}")
    }
}

/// A list-of-names attribute such as `column-order`; an empty numeric array (what h5py writes for
/// an empty list) is an empty list.
pub(super) fn column_order(attrs: &[Attribute]) -> Option<Vec<String>> {
    let a = attrs.iter().find(|a| a.name == "column-order")?;
    if hdf5::is_string_type(&a.datatype) {
        if a.shape.is_empty() {
            return a.read_string().ok().map(|s| vec![s]);
        }
        return a.read_strings().ok();
    }
    if a.num_elements().ok()? == 0 {
        return Some(Vec::new());
    }
    None
}
