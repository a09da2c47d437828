//! `.h5ad` files in the layout of anndata before 0.7 (`obs` / `var` as compound datasets,
//! categories in `uns/<column>_categories`, `h5sparse` matrices, `raw.X` / `raw.var`) read as the
//! modern anndata reads them. Fixtures: `scripts/fixtures/make_legacy_h5ad_fixtures.py`, which
//! checks that anndata reads them to the values below; plus scanpy's bundled
//! `pbmc68k_reduced.h5ad` (written by anndata 0.6) when a scanpy install is at hand.

mod common;

use std::path::PathBuf;

use common::cli;
use common::files::{fixture, skip, tmpdir};
use scvi_rs::data::h5ad::{
    for_each_row_chunk, h5ad_summary, read_h5ad, read_h5ad_with_summary, read_obs, read_var_names,
    H5adOptions,
};
use scvi_rs::data::{ObsColumn, SparseRows};

/// The counts both fixtures hold, as in the fixture script.
const COUNTS: [[f32; 5]; 7] = [
    [1., 0., 3., 0., 0.],
    [0., 0., 2., 0., 0.],
    [2., 5., 0., 0., 1.],
    [0., 0., 0., 7., 0.],
    [10., 0., 1., 0., 2.],
    [0., 4., 0., 0., 0.],
    [1., 1., 1., 1., 1.],
];
const GENES: [&str; 5] = ["CD3E", "MS4A1", "LYZ", "NKG7", "GNLY"];
const FIXTURES: [(&str, &str); 2] = [
    ("legacy_dense.h5ad", "array"),
    ("legacy_sparse.h5ad", "csr_matrix"),
];

fn legacy(name: &str) -> PathBuf {
    fixture("h5ad", name)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn legacy_fixtures_read_as_anndata_reads_them() {
    let cells: Vec<String> = (0..7).map(|i| format!("cell{i}")).collect();
    for (name, encoding) in FIXTURES {
        let path = legacy(name);
        let s = h5ad_summary(&path).unwrap();
        assert_eq!((s.n_obs, s.n_vars), (7, 5), "{name}");
        assert_eq!(s.x_encoding, encoding, "{name}");
        assert_eq!(
            s.obs_columns,
            strings(&[
                "batch",
                "louvain",
                "n_genes",
                "n_counts",
                "is_doublet",
                "sample"
            ]),
            "{name}"
        );
        let (ds, summary) = read_h5ad_with_summary(&path, &H5adOptions::default()).unwrap();
        assert!(
            summary.warnings(&ds.source, "X").is_empty(),
            "{name}: counts"
        );
        assert_eq!(ds.gene_names, strings(&GENES), "{name}");
        assert_eq!(ds.cell_names, cells, "{name}");
        for (i, row) in COUNTS.iter().enumerate() {
            let (idx, val) = ds.counts.row(i);
            let mut dense = [0f32; 5];
            for (&j, &v) in idx.iter().zip(val) {
                dense[j as usize] = v;
            }
            assert_eq!(&dense, row, "{name}: row {i}");
        }
        let col = |k: &str| ds.obs.iter().find(|(n, _)| n == k).unwrap().1.clone();
        assert_eq!(
            col("batch"),
            ObsColumn::Categorical {
                codes: vec![0, 1, 0, 1, 1, 0, 1],
                categories: strings(&["ctrl", "stim"]),
            },
            "{name}"
        );
        // A code of -1 is a missing value, as pandas' `from_codes` reads it.
        assert_eq!(
            col("louvain"),
            ObsColumn::Categorical {
                codes: vec![2, 0, 1, -1, 2, 0, 1],
                categories: strings(&["0", "1", "2"]),
            },
            "{name}"
        );
        assert_eq!(
            col("n_genes"),
            ObsColumn::Integers(vec![2, 1, 3, 1, 3, 1, 5])
        );
        assert_eq!(
            col("n_counts"),
            ObsColumn::Floats(vec![4., 2., 8., 7., 13., 4., 5.])
        );
        assert_eq!(
            col("is_doublet"),
            ObsColumn::Bools(vec![false, false, true, false, false, true, false])
        );
        assert_eq!(
            col("sample"),
            ObsColumn::Strings(strings(&["s1", "s1", "s2", "s2", "s3", "s3", "s3"]))
        );
        // The standalone readers agree with the whole read.
        assert_eq!(read_var_names(&path).unwrap(), ds.gene_names);
        assert_eq!(
            read_obs(&path).unwrap(),
            (ds.cell_names.clone(), ds.obs.clone())
        );
        // Streamed in chunks of 3 rows: the same rows.
        let mut rows = 0;
        for_each_row_chunk(&path, &H5adOptions::default(), 3, |first, chunk| {
            assert_eq!(first, rows);
            rows += chunk.n_rows;
            Ok(())
        })
        .unwrap();
        assert_eq!(rows, 7);
    }
}

#[test]
fn legacy_fixtures_run_through_info_and_train() {
    for (name, _) in FIXTURES {
        let path = legacy(name);
        let p = path.to_str().unwrap();
        let info = cli::ok(&["info", p]);
        assert!(info.contains("\"n_cells\": 7"), "{name}: {info}");
        assert!(info.contains("\"stim\""), "{name}: {info}");
        let out = tmpdir("h5ad_legacy", name).join("model");
        let o = out.to_str().unwrap();
        cli::ok(&[
            "train",
            p,
            "--out",
            o,
            "--max-epochs",
            "1",
            "--batch-key",
            "batch",
        ]);
        assert!(out.join("model.json").is_file(), "{name}: no model written");
    }
}

/// scanpy's `pbmc68k_reduced.h5ad`, written by anndata 0.6: where a scanpy install is at hand
/// (`SCVI_RS_PBMC68K` names the file, or the reference venv beside the checkout).
fn pbmc68k() -> Option<PathBuf> {
    const IN_VENV: &str =
        ".venv-ref/lib/python3.11/site-packages/scanpy/datasets/10x_pbmc68k_reduced.h5ad";
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        std::env::var_os("SCVI_RS_PBMC68K").map(PathBuf::from),
        Some(here.join(IN_VENV)),
        Some(here.join("../main").join(IN_VENV)),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.is_file());
    if found.is_none() {
        skip("scanpy's 10x_pbmc68k_reduced.h5ad not found (set SCVI_RS_PBMC68K to its path)");
    }
    found
}

#[test]
fn scanpy_pbmc68k_reduced_reads_as_anndata_reads_it() {
    let Some(path) = pbmc68k() else { return };
    // What anndata 0.12 reads from it.
    let s = h5ad_summary(&path).unwrap();
    assert_eq!(
        (s.n_obs, s.n_vars, s.x_encoding.as_str()),
        (700, 765, "array")
    );
    let obs_cols = [
        "bulk_labels",
        "n_genes",
        "percent_mito",
        "n_counts",
        "S_score",
        "G2M_score",
        "phase",
        "louvain",
    ];
    assert_eq!(s.obs_columns, strings(&obs_cols));
    let genes = read_var_names(&path).unwrap();
    assert_eq!((genes.len(), genes[0].as_str()), (765, "HES4"));
    assert_eq!(genes[764], "MT-ND3");
    let (cells, obs) = read_obs(&path).unwrap();
    assert_eq!(cells.len(), 700);
    assert_eq!(
        (cells[0].as_str(), cells[699].as_str()),
        ("AAAGCCTGGCTAAC-1", "TTGAGGTGGAGAGC-8")
    );
    let names: Vec<&str> = obs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, obs_cols);
    let cat = |k: &str| match &obs.iter().find(|(n, _)| n == k).unwrap().1 {
        ObsColumn::Categorical { codes, categories } => (codes.clone(), categories.clone()),
        other => panic!("{k}: {other:?}"),
    };
    let (codes, cats) = cat("bulk_labels");
    assert_eq!(&codes[..5], &[5, 9, 8, 0, 9]);
    assert_eq!(cats.len(), 10);
    assert_eq!(
        (cats[0].as_str(), cats[9].as_str()),
        ("CD4+/CD25 T Reg", "Dendritic")
    );
    assert_eq!(cat("phase"), (cat("phase").0, strings(&["G1", "G2M", "S"])));
    assert_eq!(&cat("phase").0[..5], &[0, 2, 0, 1, 0]);
    let (codes, cats) = cat("louvain");
    assert_eq!((&codes[..5], cats.len()), (&[1, 1, 3, 9, 2][..], 11));
    match &obs[1].1 {
        ObsColumn::Integers(v) => assert_eq!(&v[..3], &[1003, 1080, 1228]),
        other => panic!("n_genes: {other:?}"),
    }
    // X is scaled (not counts): it streams as stored, and reading it as counts is a clean error.
    let mut first = Vec::new();
    for_each_row_chunk(&path, &H5adOptions::default(), 256, |r0, chunk| {
        if r0 == 0 {
            let (idx, val) = chunk.row(0);
            first = idx.iter().zip(val).take(3).map(|(&j, &v)| (j, v)).collect();
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(first, vec![(0, -0.326), (1, -0.191), (2, -0.728)]);
    let Err(err) = read_h5ad(&path, &H5adOptions::default()) else {
        panic!("pbmc68k_reduced's scaled X read as counts");
    };
    let err = err.to_string();
    assert!(err.contains("X holds a negative value"), "{err}");
}
