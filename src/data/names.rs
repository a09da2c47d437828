//! Unique gene names, as anndata's `var_names_make_unique` makes them.
//!
//! 10x feature files often repeat a gene symbol (several Ensembl IDs share one name). scvi-rs, like
//! anndata, needs unique names, so repeats get a suffix: anndata's `make_index_unique(index,
//! join="-")` keeps the first occurrence and renames the k-th repeat of `v` to `v-k`, counting per
//! name and skipping any candidate that is already a name (original or newly made). The original
//! names and the gene IDs are kept beside the unique ones by the readers.

use std::collections::{HashMap, HashSet};

/// The names made unique as anndata does, and how many were renamed.
pub fn make_unique(names: &[String]) -> (Vec<String>, usize) {
    let mut seen: HashSet<&str> = HashSet::with_capacity(names.len());
    let mut dup = vec![false; names.len()];
    for (i, n) in names.iter().enumerate() {
        if !seen.insert(n.as_str()) {
            dup[i] = true;
        }
    }
    let n_dup = dup.iter().filter(|&&d| d).count();
    if n_dup == 0 {
        return (names.to_vec(), 0);
    }
    let mut taken: HashSet<String> = names.iter().cloned().collect();
    let mut counter: HashMap<&str, usize> = HashMap::new();
    let mut out = names.to_vec();
    for (i, v) in names.iter().enumerate() {
        if !dup[i] {
            continue;
        }
        let c = counter.entry(v.as_str()).or_insert(0);
        loop {
            *c += 1;
            let candidate = format!("{v}-{c}");
            if !taken.contains(&candidate) {
                taken.insert(candidate.clone());
                out[i] = candidate;
                break;
            }
        }
    }
    (out, n_dup)
}

/// [`make_unique`] with anndata's warning on stderr when something was renamed; `source` names the
/// file for the message.
pub fn make_unique_warn(names: &[String], source: &str) -> (Vec<String>, usize) {
    let (out, n) = make_unique(names);
    if n > 0 {
        let examples: Vec<&str> = names
            .iter()
            .zip(&out)
            .filter(|(a, b)| a != b)
            .take(3)
            .map(|(a, _)| a.as_str())
            .collect();
        eprintln!(
            "warning: {source}: {n} gene names are not unique (e.g. {}); made unique as anndata's \
             var_names_make_unique does (NAME-1, NAME-2, ...); the original names are kept in the \
             var column 'gene_names_original'",
            examples.join(", ")
        );
    }
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn like_anndata() {
        assert_eq!(make_unique(&s(&["a", "b"])), (s(&["a", "b"]), 0));
        assert_eq!(
            make_unique(&s(&["a", "a", "b", "a"])),
            (s(&["a", "a-1", "b", "a-2"]), 2)
        );
        // "a-1" already exists, so the repeat of "a" becomes "a-2"; the repeat of "a-1" becomes
        // "a-1-1".
        assert_eq!(
            make_unique(&s(&["a", "a-1", "a", "a-1"])),
            (s(&["a", "a-1", "a-2", "a-1-1"]), 2)
        );
    }
}
