//! Gene lists: reading one from a file, and finding its genes among a data set's, by name or by
//! gene ID.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::error::{Error, Result};

/// Largest gene list read: a name a line, 1 GiB is millions of times the genes of any genome.
const MAX_LIST_BYTES: u64 = 1 << 30;

/// Read a gene list: one name (or gene ID) a line, blank lines and `#` comments skipped, no
/// repeats, not empty.
pub fn read_gene_list(path: &Path) -> Result<Vec<String>> {
    let bytes = crate::limits::read_regular(path, MAX_LIST_BYTES, "a gene list")?;
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::format(path, "the gene list is not UTF-8 text"))?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for line in text.lines() {
        let g = line.trim();
        if g.is_empty() || g.starts_with('#') {
            continue;
        }
        if !seen.insert(g) {
            return Err(Error::format(path, format!("gene '{g}' is listed twice")));
        }
        out.push(g.to_string());
    }
    if out.is_empty() {
        return Err(Error::format(path, "the gene list is empty"));
    }
    Ok(out)
}

/// Positions of `wanted` among `gene_names`: by name, else by gene ID (the `gene_ids` column of
/// `var`). Missing genes are an error that names them (the first 20), as is a gene named twice (by
/// name and by ID). `list_name` and `source` name the list and the data set in messages.
pub fn resolve_genes(
    wanted: &[String],
    gene_names: &[String],
    var: &[(String, Vec<String>)],
    list_name: &str,
    source: &str,
) -> Result<Vec<usize>> {
    fn index(names: &[String]) -> HashMap<&str, usize> {
        names
            .iter()
            .enumerate()
            .map(|(i, g)| (g.as_str(), i))
            .collect()
    }
    let by_name = index(gene_names);
    let by_id = var
        .iter()
        .find(|(k, _)| k == "gene_ids")
        .map(|(_, ids)| index(ids))
        .unwrap_or_default();
    let mut out = Vec::with_capacity(wanted.len());
    let mut missing = Vec::new();
    for w in wanted {
        match by_name.get(w.as_str()).or_else(|| by_id.get(w.as_str())) {
            Some(&i) => out.push(i),
            None => missing.push(w.as_str()),
        }
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(20).copied().collect();
        return Err(Error::Config(format!(
            "{} of the {} genes in {list_name} are not in {source}: {}{}",
            missing.len(),
            wanted.len(),
            shown.join(", "),
            if missing.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        )));
    }
    let mut seen = vec![false; gene_names.len()];
    for &i in &out {
        if std::mem::replace(&mut seen[i], true) {
            return Err(Error::Config(format!(
                "{list_name} names gene '{}' twice (by name and by ID)",
                gene_names[i]
            )));
        }
    }
    Ok(out)
}
