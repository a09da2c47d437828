//! The `.h5ad` reader against small fixtures written by anndata
//! (`scripts/fixtures/make_h5ad_fixtures.py`): every encoding of the same 7 x 5 count matrix reads
//! to the same values, whole and in chunks; obs columns decode; bad files give errors that name the
//! file and the field. Plus the real Kang data set when it is present, and files in the layout of
//! anndata before 0.7 (`scripts/fixtures/make_legacy_h5ad_fixtures.py`, scanpy's pbmc68k_reduced).

mod common;

use std::path::PathBuf;

use common::cli;
use common::data::categorical;
use common::files::{shared_data, skip, tmpdir};
use scvi_rs::data::h5ad::{
    for_each_row_chunk, h5ad_summary, read_h5ad, read_h5ad_with_summary, read_obs, read_var_names,
    H5adOptions,
};
use scvi_rs::data::{CsrMatrix, ObsColumn, SparseRows};
use scvi_rs::Error;

/// The matrix every fixture holds (cells x genes), as in the fixture script.
const COUNTS: [[f32; 5]; 7] = [
    [1., 0., 3., 0., 0.],
    [0., 0., 0., 0., 0.],
    [2., 5., 0., 0., 1.],
    [0., 0., 0., 7., 0.],
    [10., 0., 1., 0., 2.],
    [0., 4., 0., 0., 0.],
    [1., 1., 1., 1., 1.],
];

fn fixture(name: &str) -> PathBuf {
    common::files::fixture("h5ad", name)
}

fn expected() -> Vec<f32> {
    COUNTS.iter().flatten().copied().collect()
}

fn dense(m: &dyn SparseRows) -> Vec<f32> {
    let mut out = vec![0.0; m.n_rows() * m.n_cols()];
    for i in 0..m.n_rows() {
        let (idx, val) = m.row(i);
        for (&j, &v) in idx.iter().zip(val) {
            out[i * m.n_cols() + j as usize] = v;
        }
    }
    out
}

fn opts(layer: Option<&str>) -> H5adOptions {
    H5adOptions {
        layer: layer.map(String::from),
    }
}

/// (file, layer) for every encoding of COUNTS among the fixtures.
const VARIANTS: &[(&str, Option<&str>)] = &[
    ("variants.h5ad", None),                 // CSR, int32 indices, float32 data
    ("variants.h5ad", Some("csr_i64_gzip")), // CSR, int64 everything, gzip in chunks of 3
    ("variants.h5ad", Some("csr_u16")),
    ("variants.h5ad", Some("csr_unsorted")), // CSR, rows unsorted, a duplicate entry to sum       // CSR, uint16 data, uint32 indices
    ("variants.h5ad", Some("csc_f64")),      // CSC, float64 data
    ("variants.h5ad", Some("dense_i32")),    // dense int32, contiguous
    ("variants.h5ad", Some("dense_i8_gzip")), // dense int8, gzip, chunks (3, 2)
    ("csc.h5ad", None),                      // X as CSC
    ("dense.h5ad", None),                    // X dense int16, gzip, chunks (3, 2)
    ("layer_counts.h5ad", Some("counts")),   // X normalised, counts in a layer
];

#[test]
fn every_encoding_reads_to_the_same_matrix() {
    for &(file, layer) in VARIANTS {
        let what = format!("{file} layer {layer:?}");
        let (ds, summary) = read_h5ad_with_summary(&fixture(file), &opts(layer))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!((ds.n_cells(), ds.n_genes()), (7, 5), "{what}");
        assert_eq!(dense(ds.counts.as_ref()), expected(), "{what}");
        assert_eq!(ds.counts.nnz(), 15, "{what}");
        let genes: Vec<String> = (0..5).map(|j| format!("gene{j}")).collect();
        let cells: Vec<String> = (0..7).map(|i| format!("cell{i}")).collect();
        assert_eq!(ds.gene_names, genes, "{what}");
        assert_eq!(ds.cell_names, cells, "{what}");
        assert_eq!(summary.n_non_integer, 0, "{what}");
        assert!(ds.source.ends_with(file), "{what}: source {}", ds.source);
        // `read_h5ad` is the same read (it only prints the non-integer warning).
        let again = read_h5ad(&fixture(file), &opts(layer)).unwrap();
        assert_eq!(dense(again.counts.as_ref()), expected(), "{what}");
    }
}

#[test]
fn chunked_reading_equals_the_whole() {
    for &(file, layer) in VARIANTS {
        for chunk_rows in [1, 2, 3, 7, 100] {
            let what = format!("{file} layer {layer:?} chunk_rows {chunk_rows}");
            let mut next_row = 0;
            let mut all = CsrMatrix::with_cols(5);
            for_each_row_chunk(&fixture(file), &opts(layer), chunk_rows, |first, chunk| {
                assert_eq!(first, next_row, "{what}");
                assert!(chunk.n_rows >= 1 && chunk.n_rows <= chunk_rows, "{what}");
                assert_eq!(chunk.n_cols, 5, "{what}");
                chunk.validate_structure().unwrap();
                next_row += chunk.n_rows;
                for i in 0..chunk.n_rows {
                    let (idx, val) = chunk.row(i);
                    all.push_row(idx.iter().copied().zip(val.iter().copied()));
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(next_row, 7, "{what}");
            assert_eq!(all.to_dense(), expected(), "{what}");
        }
    }
}

#[test]
fn chunked_reader_passes_errors_through_and_refuses_zero_rows() {
    let path = fixture("variants.h5ad");
    let e = for_each_row_chunk(&path, &opts(None), 0, |_, _| Ok(())).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    let mut calls = 0;
    let e = for_each_row_chunk(&path, &opts(Some("csc_f64")), 2, |_, _| {
        calls += 1;
        Err(Error::Data("stop".into()))
    })
    .unwrap_err();
    assert_eq!(calls, 1);
    assert_eq!(e.to_string(), "stop");
}

#[test]
fn obs_columns_decode() {
    let (cells, obs) = read_obs(&fixture("variants.h5ad")).unwrap();
    assert_eq!(
        cells,
        (0..7).map(|i| format!("cell{i}")).collect::<Vec<_>>()
    );
    let names: Vec<&str> = obs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "cell_type",
            "barcode",
            "n_genes",
            "small_int",
            "is_stim",
            "score",
            "nint",
            "nint_missing",
            "nbool",
            "cat_missing",
            "cat_int"
        ]
    );
    let col = |name: &str| &obs.iter().find(|(n, _)| n == name).unwrap().1;
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // A categorical keeps its own category order, unused categories included.
    assert_eq!(
        col("cell_type"),
        &ObsColumn::Categorical {
            codes: vec![0, 1, 0, 1, 0, 0, 1],
            categories: strs(&["T", "B", "NK"])
        }
    );
    let (codes, cats) = col("cell_type").to_categorical("cell_type").unwrap();
    assert_eq!(codes, [0, 1, 0, 1, 0, 0, 1]);
    assert_eq!(cats, strs(&["T", "B", "NK"]));

    assert_eq!(
        col("barcode"),
        &ObsColumn::Strings((0..7).map(|i| format!("AC{i}G")).collect())
    );
    assert_eq!(
        col("n_genes"),
        &ObsColumn::Integers(vec![2, 0, 3, 1, 3, 1, 5])
    );
    assert_eq!(
        col("small_int"),
        &ObsColumn::Integers(vec![1, 2, 3, 1, 2, 3, 1])
    );
    let (codes, cats) = col("small_int").to_categorical("small_int").unwrap();
    assert_eq!(
        (codes, cats),
        (vec![0, 1, 2, 0, 1, 2, 0], strs(&["1", "2", "3"]))
    );
    assert_eq!(
        col("is_stim"),
        &ObsColumn::Bools(vec![true, false, true, false, false, true, true])
    );
    let (codes, cats) = col("is_stim").to_categorical("is_stim").unwrap();
    assert_eq!(
        (codes, cats),
        (vec![1, 0, 1, 0, 0, 1, 1], strs(&["False", "True"]))
    );
    assert_eq!(
        col("score"),
        &ObsColumn::Floats(vec![0.5, 1.5, -2.0, 3.25, 0.0, 1e-3, 7.0])
    );
    assert_eq!(col("nint"), &ObsColumn::Integers(vec![1, 2, 3, 4, 5, 6, 7]));
    match col("nint_missing") {
        ObsColumn::Floats(v) => {
            assert!(v[1].is_nan());
            assert_eq!([v[0], v[2], v[6]], [1.0, 3.0, 7.0]);
        }
        other => panic!("nint_missing: {other:?}"),
    }
    assert_eq!(
        col("nbool"),
        &ObsColumn::Bools(vec![true, false, true, true, false, false, true])
    );
    assert_eq!(
        col("cat_missing"),
        &ObsColumn::Categorical {
            codes: vec![0, -1, 1, 0, 1, 0, 0],
            categories: strs(&["x", "y"])
        }
    );
    let e = col("cat_missing")
        .to_categorical("cat_missing")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cat_missing") && e.contains("cell 1"), "{e}");
    assert_eq!(
        col("cat_int"),
        &ObsColumn::Categorical {
            codes: vec![0, 1, 0, 1, 0, 0, 1],
            categories: strs(&["10", "20"])
        }
    );

    // The same columns come with the data set.
    let ds = read_h5ad(&fixture("variants.h5ad"), &opts(None)).unwrap();
    assert_eq!(ds.obs.len(), obs.len());
    for ((n1, c1), (n2, c2)) in ds.obs.iter().zip(&obs) {
        assert_eq!(n1, n2);
        if n1 != "nint_missing" {
            assert_eq!(c1, c2, "{n1}"); // (NaN != NaN there)
        }
    }
    assert!(ds.obs_column("cell_type").is_ok());
}

#[test]
fn var_names_and_summary() {
    let genes = read_var_names(&fixture("variants.h5ad")).unwrap();
    assert_eq!(genes, ["gene0", "gene1", "gene2", "gene3", "gene4"]);

    let s = h5ad_summary(&fixture("variants.h5ad")).unwrap();
    assert_eq!((s.n_obs, s.n_vars), (7, 5));
    assert_eq!(s.x_encoding, "csr_matrix");
    assert_eq!(s.x_dtype, "float32");
    assert_eq!(s.x_nnz, Some(15));
    assert_eq!(s.obs_columns.len(), 11);
    assert_eq!(s.obs_columns[0], "cell_type");
    assert_eq!(
        s.layers,
        [
            "csc_f64",
            "csr_i64_gzip",
            "csr_u16",
            "csr_unsorted",
            "dense_i32",
            "dense_i8_gzip"
        ]
    );

    let s = h5ad_summary(&fixture("csc.h5ad")).unwrap();
    assert_eq!(
        (s.n_obs, s.n_vars, s.x_encoding.as_str()),
        (7, 5, "csc_matrix")
    );
    assert!(s.obs_columns.is_empty() && s.layers.is_empty());
    let s = h5ad_summary(&fixture("dense.h5ad")).unwrap();
    assert_eq!(
        (s.x_encoding.as_str(), s.x_dtype.as_str(), s.x_nnz),
        ("array", "int16", None)
    );
}

/// The error of a call that must fail (`Dataset` has no `Debug`, so no `unwrap_err`).
fn err<T>(r: scvi_rs::Result<T>) -> Error {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

/// The error's message, checked to name the fixture file.
fn message(file: &str, e: Error) -> String {
    let msg = e.to_string();
    assert!(msg.contains(file), "the error does not name {file}: {msg}");
    msg
}

#[test]
fn errors_name_the_file_and_the_field() {
    // A missing file is the OS error.
    let e = err(read_h5ad(&fixture("does_not_exist.h5ad"), &opts(None)));
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    message("does_not_exist.h5ad", e);
    assert!(matches!(
        read_obs(&fixture("does_not_exist.h5ad")),
        Err(Error::Io { .. })
    ));

    let e = err(read_h5ad(&fixture("not_hdf5.h5ad"), &opts(None)));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert!(message("not_hdf5.h5ad", e).contains("is not an HDF5 file"));
    assert!(h5ad_summary(&fixture("not_hdf5.h5ad")).is_err());

    let e = err(read_h5ad(&fixture("no_x.h5ad"), &opts(None)));
    assert!(message("no_x.h5ad", e).contains("no 'X' in file"));
    assert!(h5ad_summary(&fixture("no_x.h5ad")).is_err());
    // ... but its names and obs still read.
    assert_eq!(read_var_names(&fixture("no_x.h5ad")).unwrap().len(), 5);
    assert_eq!(read_obs(&fixture("no_x.h5ad")).unwrap().0.len(), 7);

    let e = err(read_h5ad(
        &fixture("variants.h5ad"),
        &opts(Some("raw_counts")),
    ));
    let msg = message("variants.h5ad", e);
    assert!(
        msg.contains("no layer 'raw_counts'") && msg.contains("csc_f64, csr_i64_gzip"),
        "{msg}"
    );
    let e = err(read_h5ad(&fixture("csc.h5ad"), &opts(Some("counts"))));
    assert!(message("csc.h5ad", e).contains("has no layers"));

    let bad = fixture("bad_values.h5ad");
    let e = err(read_h5ad(&bad, &opts(Some("negative"))));
    assert!(matches!(e, Error::Data(_)), "{e:?}");
    let msg = message("bad_values.h5ad", e);
    for part in ["layers/negative", "negative value", "-3", "cell 4, gene 2"] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
    let msg = message("bad_values.h5ad", err(read_h5ad(&bad, &opts(Some("nan")))));
    for part in ["layers/nan", "NaN", "cell 2, gene 4"] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
    let msg = message("bad_values.h5ad", err(read_h5ad(&bad, &opts(Some("inf")))));
    for part in ["layers/inf", "infinite", "cell 5, gene 1"] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
    let e = err(read_h5ad(&bad, &opts(Some("bad_indptr"))));
    assert!(matches!(e, Error::Format { .. }), "{e:?}");
    assert!(message("bad_values.h5ad", e).contains("layers/bad_indptr/indptr"));
    let msg = message(
        "bad_values.h5ad",
        err(read_h5ad(&bad, &opts(Some("bad_shape")))),
    );
    for part in ["layers/bad_shape has 6 columns", "var/_index has 5 names"] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
    let msg = message(
        "bad_values.h5ad",
        err(read_h5ad(&bad, &opts(Some("bad_index")))),
    );
    for part in ["layers/bad_index/indices[5] = 9", "column index (0..5)"] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
    let msg = message("bad_values.h5ad", err(read_h5ad(&bad, &opts(Some("coo")))));
    for part in ["layers/coo", "encoding 'coo_matrix'", "cannot read"] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
    // The chunked reader checks the structure too.
    let e = for_each_row_chunk(&bad, &opts(Some("bad_indptr")), 2, |_, _| Ok(())).unwrap_err();
    assert!(message("bad_values.h5ad", e).contains("layers/bad_indptr/indptr"));
}

#[test]
fn an_unsupported_value_type_is_named() {
    // X/data stored as float16: the one number decoder names the file, the field and the type.
    let msg = message(
        "float16.h5ad",
        err(read_h5ad(&fixture("float16.h5ad"), &opts(None))),
    );
    assert!(
        msg.contains("X/data") && msg.contains("float16 is not supported"),
        "{msg}"
    );
}

#[test]
fn non_integer_values_are_counted_not_refused() {
    let bad = fixture("bad_values.h5ad");
    let (ds, summary) = read_h5ad_with_summary(&bad, &opts(Some("nonint"))).unwrap();
    assert_eq!(ds.n_cells(), 7);
    assert_eq!(summary.n_non_integer, 2);
    assert_eq!(summary.non_integer, Some((3, 3, 6.5)));
    let w = summary.warning(&ds.source, "layers/nonint").unwrap();
    assert!(
        w.contains("bad_values.h5ad") && w.contains("non-integer"),
        "{w}"
    );

    // The normalised X of layer_counts.h5ad: every stored value is fractional.
    let (_, summary) = read_h5ad_with_summary(&fixture("layer_counts.h5ad"), &opts(None)).unwrap();
    assert_eq!(summary.n_non_integer, 15);
}

#[test]
fn kang_hvg2k_reads() {
    let Some(path) = shared_data("kang_ifnb_hvg2k.h5ad") else {
        return;
    };
    let s = h5ad_summary(&path).unwrap();
    assert_eq!((s.n_obs, s.n_vars, s.x_nnz), (13576, 2000, Some(1487248)));
    let (ds, summary) = read_h5ad_with_summary(&path, &opts(None)).unwrap();
    assert_eq!(
        (ds.n_cells(), ds.n_genes(), ds.counts.nnz()),
        (13576, 2000, 1487248)
    );
    assert_eq!(summary.n_non_integer, 0);
    assert_eq!(ds.gene_names.len(), 2000);
    assert_eq!(ds.cell_names.len(), 13576);
    let (codes, cats) = categorical(&ds, "stim");
    assert_eq!(cats, ["CTRL", "STIM"]);
    assert!(codes.contains(&0) && codes.contains(&1));
    let (bcodes, _) = categorical(&ds, "batch");
    assert_eq!(bcodes.len(), 13576);
    let (_, cell_types) = categorical(&ds, "cell_type");
    assert_eq!(cell_types.len(), 8);
    for i in [0, 1, 6788, 13575] {
        let (idx, val) = ds.counts.row(i);
        assert!(idx.windows(2).all(|w| w[0] < w[1]) && idx.iter().all(|&j| j < 2000));
        assert!(val.iter().all(|&v| v > 0.0 && v.fract() == 0.0));
    }
}

/// Timing of a whole read of the 9.4M-value Kang matrix:
/// `cargo test --release --test h5ad_read -- --ignored --nocapture kang_13k`.
#[test]
#[ignore]
fn kang_13k_read_time() {
    let Some(path) = shared_data("kang_ifnb_13k.h5ad") else {
        return;
    };
    let t = std::time::Instant::now();
    let ds = read_h5ad(&path, &opts(None)).unwrap();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "read {} x {} ({} values) in {secs:.2} s",
        ds.n_cells(),
        ds.n_genes(),
        ds.counts.nnz()
    );
    assert_eq!(
        (ds.n_cells(), ds.n_genes(), ds.counts.nnz()),
        (13576, 14053, 9456694)
    );
    // Kang's row sums equal its own nCount_RNA.
    let n_count = match ds.obs_column("nCount_RNA").unwrap() {
        ObsColumn::Integers(v) => v.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        ObsColumn::Floats(v) => v.clone(),
        other => panic!("nCount_RNA: {other:?}"),
    };
    for (i, &n) in n_count.iter().enumerate() {
        assert_eq!(ds.counts.row_sum(i), n, "cell {i}");
    }
}

// ------------------------------------------------------------------------------------------------
// Files in the layout of anndata before 0.7 (`obs` / `var` as compound datasets, categories in
// `uns/<column>_categories`, `h5sparse` matrices, `raw.X` / `raw.var`) and of anndata 0.7
// (categorical codes referencing `obs/__categories/<column>`), read as the modern anndata reads
// them. Fixtures: `scripts/fixtures/make_legacy_h5ad_fixtures.py`, which checks that anndata
// reads them to the values below; plus scanpy's bundled `pbmc68k_reduced.h5ad` (written by anndata
// 0.6) when a scanpy install is at hand.

/// COUNTS with cell 1 given 2 counts of gene 2 (so that every cell can be trained on), as in the
/// legacy fixture script.
fn legacy_counts() -> Vec<f32> {
    let mut m = expected();
    m[5 + 2] = 2.0;
    m
}

/// (file, X's encoding): anndata 0.6's layout twice, anndata 0.7's once.
const LEGACY: [(&str, &str); 3] = [
    ("legacy_dense.h5ad", "array"),
    ("legacy_sparse.h5ad", "csr_matrix"),
    ("legacy_0_7.h5ad", "csr_matrix"),
];

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn legacy_fixtures_read_as_anndata_reads_them() {
    let cells: Vec<String> = (0..7).map(|i| format!("cell{i}")).collect();
    for (name, encoding) in LEGACY {
        let path = fixture(name);
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
        assert_eq!(
            ds.gene_names,
            strings(&["CD3E", "MS4A1", "LYZ", "NKG7", "GNLY"]),
            "{name}"
        );
        assert_eq!(ds.cell_names, cells, "{name}");
        assert_eq!(dense(ds.counts.as_ref()), legacy_counts(), "{name}");
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
fn legacy_errors_name_the_file_and_the_field() {
    for (name, needles) in [
        (
            "legacy_bad_code.h5ad",
            &["obs['batch'][0] = -2", "uns/batch_categories"][..],
        ),
        (
            "legacy_vlen_index.h5ad",
            &["obs['index']", "variable-length strings"][..],
        ),
    ] {
        let e = read_obs(&fixture(name)).unwrap_err().to_string();
        assert!(e.contains(name), "{e}");
        for n in needles {
            assert!(e.contains(n), "{name}: '{n}' not in: {e}");
        }
    }
}

#[test]
fn legacy_fixtures_run_through_info_and_train() {
    for (name, _) in LEGACY {
        let path = fixture(name);
        let p = path.to_str().unwrap();
        let info = cli::ok(&["info", p]);
        assert!(info.contains("\"n_cells\": 7"), "{name}: {info}");
        assert!(info.contains("\"stim\""), "{name}: {info}");
        let out = tmpdir("h5ad_read", name).join("model");
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
