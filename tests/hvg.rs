//! Highly variable genes (seurat_v3) against scanpy's own choice on real data, and the streaming
//! `convert --n-top-genes` path against the in-memory one.

mod common;

use std::path::{Path, PathBuf};

use common::data::{categorical, chosen_names};
use common::files::shared_data;
use hdf5_reader::Hdf5File;
use scvi_rs::data::h5ad::{read_h5ad, H5adOptions};
use scvi_rs::data::hvg::{
    argsort_numpy_avx512, highly_variable_genes_seurat_v3, loess_fit, HvgResult,
};
use scvi_rs::data::Dataset;
use scvi_rs::store::wfnv64;

/// A `var` column of floats from an .h5ad (scanpy's results stored next to the genes).
fn var_f64(path: &Path, col: &str) -> Vec<f64> {
    let f = Hdf5File::open(path).unwrap();
    let ds = f
        .root_group()
        .unwrap()
        .group("var")
        .unwrap()
        .dataset(col)
        .unwrap();
    match ds.read_array::<f64>() {
        Ok(a) => a.iter().copied().collect(),
        Err(_) => ds
            .read_array::<f32>()
            .unwrap()
            .iter()
            .map(|&x| x as f64)
            .collect(),
    }
}

fn kang() -> Option<(Dataset, PathBuf)> {
    let full = shared_data("kang_ifnb_13k.h5ad")?;
    let hvg = shared_data("kang_ifnb_hvg2k.h5ad")?;
    Some((read_h5ad(&full, &H5adOptions::default()).unwrap(), hvg))
}

fn report(ds: &Dataset, res: &HvgResult, chosen_ref: &[String]) -> usize {
    let ours: std::collections::HashSet<&str> = chosen_names(&ds.gene_names, &res.highly_variable)
        .into_iter()
        .collect();
    let theirs: std::collections::HashSet<&str> = chosen_ref.iter().map(|s| s.as_str()).collect();
    let only_ours: Vec<_> = ours.difference(&theirs).collect();
    let only_theirs: Vec<_> = theirs.difference(&ours).collect();
    if !only_ours.is_empty() || !only_theirs.is_empty() {
        eprintln!("only ours: {only_ours:?}\nonly scanpy: {only_theirs:?}");
    }
    only_ours.len() + only_theirs.len()
}

#[test]
fn kang_with_batch_key_matches_scanpy() {
    let Some((ds, hvg_path)) = kang() else { return };
    let batch = categorical(&ds, "stim");
    let res =
        highly_variable_genes_seurat_v3(ds.counts.as_ref(), Some((batch.0, batch.1.len())), 2000)
            .unwrap();
    let reference = read_h5ad(&hvg_path, &H5adOptions::default()).unwrap();
    let n_diff = report(&ds, &res, &reference.gene_names);

    // The normalised variances and ranks of the chosen genes, against scanpy's var columns.
    let pos: std::collections::HashMap<&str, usize> = ds
        .gene_names
        .iter()
        .enumerate()
        .map(|(i, g)| (g.as_str(), i))
        .collect();
    let vn = var_f64(&hvg_path, "variances_norm");
    let rank = var_f64(&hvg_path, "highly_variable_rank");
    let mut worst = 0f64;
    for (k, g) in reference.gene_names.iter().enumerate() {
        let i = pos[g.as_str()];
        worst = worst.max((res.variances_norm[i] - vn[k]).abs() / vn[k].abs());
        assert_eq!(res.highly_variable_rank[i], rank[k], "rank of {g}");
    }
    eprintln!("max relative difference of variances_norm: {worst:.3e}");
    assert!(
        worst < 1e-9,
        "variances_norm differs from scanpy by {worst:.3e}"
    );
    assert_eq!(n_diff, 0, "{n_diff} genes differ from scanpy's choice");
}

#[test]
fn loess_is_exact_on_a_line_and_smooth() {
    let x: Vec<f64> = (0..1000).map(|i| i as f64 / 100.0).collect();
    let y: Vec<f64> = x.iter().map(|&t| 2.0 * t - 1.0).collect();
    let f = loess_fit(&x, &y, 0.3).unwrap();
    for (a, b) in f.iter().zip(&y) {
        assert!((a - b).abs() < 1e-9);
    }
    assert!(loess_fit(&x[..5], &y[..5], 0.3).is_err());
}

#[test]
fn kang_without_batch_key_matches_scanpy() {
    let Some((ds, _)) = kang() else { return };
    let res = highly_variable_genes_seurat_v3(ds.counts.as_ref(), None, 2000).unwrap();
    let chosen = chosen_names(&ds.gene_names, &res.highly_variable);
    assert_eq!(chosen.len(), 2000);
    assert_eq!(&chosen[..3], ["HES4", "ISG15", "TNFRSF18"]);
    assert_eq!(&chosen[1997..], ["CTD-2521M24.5", "ZNF285", "AF131217.1"]);
    // scanpy 1.11.5 (numpy 2.4, AVX-512), highly_variable_genes(kang_ifnb_13k, flavor="seurat_v3",
    // n_top_genes=2000): the chosen names in gene order, joined by newlines, hashed with wfnv64.
    let h = format!("{:016x}", wfnv64(chosen.join("\n").as_bytes()));
    assert_eq!(
        h, "7bcb6d51d4930203",
        "the chosen genes differ from scanpy's"
    );
}

#[test]
fn argsort_orders_ties_like_numpy_avx512() {
    // Reference: np.argsort on an AVX-512 machine (numpy 2.4.6) for these inputs.
    let x: Vec<f64> = (0..20).map(|i| ((i * 7) % 3) as f64).collect();
    let o = argsort_numpy_avx512(&x);
    let mut sorted = o.clone();
    sorted.sort();
    assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    assert!(o.windows(2).all(|w| x[w[0]] <= x[w[1]]));
    assert_eq!(o, NUMPY_20);
    // A large input with many ties goes through the partitions and stays a sorted permutation.
    let y: Vec<f64> = (0..5000).map(|i| ((i * 7919) % 13) as f64 * -0.5).collect();
    let o = argsort_numpy_avx512(&y);
    assert!(o.windows(2).all(|w| y[w[0]] <= y[w[1]]));
    assert_eq!(o[..8], NUMPY_5000_HEAD);
}

const NUMPY_20: [usize; 20] = [
    0, 3, 6, 9, 12, 15, 18, 7, 13, 10, 4, 1, 16, 19, 5, 2, 14, 11, 8, 17,
];
const NUMPY_5000_HEAD: [usize; 8] = [4946, 4959, 71, 4582, 19, 6, 45, 58];

#[test]
fn argsort_with_large_tie_groups_like_numpy() {
    // Large groups of equal keys drive x86-simd-sort into its std::sort fallback; numpy 2.4.6 on
    // AVX-512 gives these permutations (hashed: wfnv64 of the u64 little-endian indices).
    for (n, k, want) in [
        (20000usize, 3usize, "a037010eee5ae93a"),
        (30000, 40, "9acc4f49e9c168ff"),
    ] {
        let y: Vec<f64> = (0..n)
            .map(|i| {
                if i % 5 == 0 {
                    0.0
                } else {
                    ((i * 7919) % k) as f64
                }
            })
            .collect();
        let o = argsort_numpy_avx512(&y);
        let bytes: Vec<u8> = o.iter().flat_map(|&i| (i as u64).to_le_bytes()).collect();
        assert_eq!(format!("{:016x}", wfnv64(&bytes)), want, "n {n}, k {k}");
    }
}
