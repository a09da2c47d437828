//! The after-training commands end to end through the binary, on the committed fixture
//! (tests/fixtures/infer: 300 Kang PBMCs x 100 genes and a small model trained on them by
//! scvi-rs): `evaluate`, `normalize`, `de`, `sample`, `embed --out X.h5ad`, what each writes (read
//! back with the project's own reader, and with anndata where its Python is present), and every
//! kind of bad input (a clear message, exit 1, no output left).

mod common;

use common::cli::{fails_with, ok, read_npy, run};
use common::files::{fixture, skip, tmpdir};
use scvi_rs::data::{CsrMatrix, Dataset, ObsColumn};
use scvi_rs::store::open_input;
use std::path::{Path, PathBuf};

fn model() -> String {
    fixture("infer", "model").to_str().unwrap().to_string()
}

fn data() -> String {
    fixture("infer", "data.h5ad").to_str().unwrap().to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn read(path: &Path, layer: Option<&str>) -> Dataset {
    open_input(path, layer).unwrap().into_dataset().unwrap()
}

fn dense(ds: &Dataset) -> Vec<f32> {
    CsrMatrix::from_rows(ds.counts.as_ref(), 0, ds.n_cells()).to_dense()
}

/// A CSV written by scvi-rs: header and rows of fields (no field holds a comma here).
fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect());
    let header: Vec<String> = lines.next().unwrap();
    (header, lines.collect())
}

fn number(row: &[String], header: &[String], col: &str) -> f64 {
    let k = header.iter().position(|h| h == col).unwrap();
    row[k].parse().unwrap()
}

#[test]
fn evaluate_reports_scvi_tools_signs_and_is_seeded() {
    let args = [
        "evaluate",
        &model(),
        &data(),
        "--n-mc-samples",
        "50",
        "--quiet",
    ];
    let out = ok(&args);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let f = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {out}"));
    assert_eq!(v["n_cells"], 300);
    assert_eq!(v["n_mc_samples"], 50);
    // elbo and marginal_ll are log-likelihood bounds / estimates (negative), the other two losses.
    assert!(f("elbo") < 0.0 && f("marginal_ll") < 0.0, "{out}");
    assert!(
        f("reconstruction_error") > 0.0 && f("kl_local") > 0.0,
        "{out}"
    );
    let sum = f("reconstruction_error") + f("kl_local");
    assert!(
        (f("elbo") + sum).abs() < 1e-9 * sum,
        "elbo = -(rec + kl): {out}"
    );
    assert_eq!(ok(&args), out, "same seed, same figures");
    let mut other = args.to_vec();
    other.extend(["--seed", "7"]);
    assert_ne!(ok(&other), out, "another seed, other draws");
}

#[test]
fn normalize_writes_rows_of_the_library_size_in_every_format() {
    let d = tmpdir("infer_cli", "normalize");
    let (m, x) = (model(), data());
    let npy = d.join("n.npy");
    let base = [
        "normalize",
        &m,
        &x,
        "--library-size",
        "10000",
        "--n-samples",
        "3",
        "--quiet",
    ];
    let with_out = |out: &Path, extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend(["--out", s(out)]);
        a.extend(extra);
        ok(&a);
    };
    with_out(&npy, &[]);
    let (shape, v) = read_npy(&npy);
    assert_eq!(shape, vec![300, 100]);
    for row in v.chunks(100) {
        let total: f64 = row.iter().map(|&a| a as f64).sum();
        assert!((total - 1e4).abs() < 1e-2, "row sums to {total}");
    }

    // .csv: cell names, gene names, the same numbers.
    let csv = d.join("n.csv");
    with_out(&csv, &[]);
    let (header, rows) = read_csv(&csv);
    assert_eq!(header.len(), 101);
    assert_eq!(header[1], "ISG15");
    assert_eq!(rows.len(), 300);
    for (r, row) in rows.iter().enumerate().step_by(37) {
        for j in 0..100 {
            let c: f64 = row[j + 1].parse().unwrap();
            let want = v[r * 100 + j] as f64;
            assert!(
                (c - want).abs() <= 1e-5 * want.abs() + 1e-6,
                "{c} vs {want}"
            );
        }
    }

    // .h5ad: the input's X, obs and var, the values as layers["scvi_normalized"].
    let h5 = d.join("n.h5ad");
    with_out(&h5, &[]);
    let input = read(Path::new(&x), None);
    let back = read(&h5, None);
    assert_eq!(dense(&back), dense(&input), "X is the input's");
    assert_eq!(back.gene_names, input.gene_names);
    assert_eq!(back.cell_names, input.cell_names);
    assert!(back.obs_column("cell_type").is_ok() && back.obs_column("stim").is_ok());
    let layer = read(&h5, Some("scvi_normalized"));
    assert_eq!(dense(&layer), v, "the layer holds what the .npy holds");

    // A gene subset: the same draws, so the same columns as the full matrix.
    let genes = d.join("genes.txt");
    std::fs::write(&genes, "RSAD2\nISG15\nCD74\n").unwrap();
    let sub = d.join("sub.npy");
    with_out(&sub, &["--genes", s(&genes)]);
    let (shape, sv) = read_npy(&sub);
    assert_eq!(shape, vec![300, 3]);
    let cols = [0usize, 12, 24]; // ISG15, RSAD2, CD74 in the model's order
    for i in 0..300 {
        for (k, &j) in cols.iter().enumerate() {
            assert_eq!(sv[i * 3 + k], v[i * 100 + j], "cell {i}, gene {j}");
        }
    }

    // library_size "latent": rows sum to each cell's own library (the observed one here).
    let lat = d.join("latent.npy");
    ok(&[
        "normalize",
        &m,
        &x,
        "--library-size",
        "latent",
        "--transform-batch",
        "CTRL",
        "--transform-batch",
        "STIM",
        "--out",
        s(&lat),
        "--quiet",
    ]);
    let (_, lv) = read_npy(&lat);
    let counts = dense(&input);
    for (row, c) in lv.chunks(100).zip(counts.chunks(100)) {
        let (a, b): (f64, f64) = (
            row.iter().map(|&v| v as f64).sum(),
            c.iter().map(|&v| v as f64).sum(),
        );
        assert!((a - b).abs() < 1e-4 * b, "{a} vs library {b}");
    }
    std::fs::remove_dir_all(&d).ok();
}

const VANILLA: [&str; 14] = [
    "proba_m1",
    "proba_m2",
    "bayes_factor",
    "scale1",
    "scale2",
    "raw_mean1",
    "raw_mean2",
    "non_zeros_proportion1",
    "non_zeros_proportion2",
    "raw_normalized_mean1",
    "raw_normalized_mean2",
    "comparison",
    "group1",
    "group2",
];

const CHANGE: [&str; 22] = [
    "proba_de",
    "proba_not_de",
    "bayes_factor",
    "scale1",
    "scale2",
    "pseudocounts",
    "delta",
    "lfc_mean",
    "lfc_median",
    "lfc_std",
    "lfc_min",
    "lfc_max",
    "raw_mean1",
    "raw_mean2",
    "non_zeros_proportion1",
    "non_zeros_proportion2",
    "raw_normalized_mean1",
    "raw_normalized_mean2",
    "is_de_fdr_0.05",
    "comparison",
    "group1",
    "group2",
];

fn descending(rows: &[Vec<String>], header: &[String], col: &str) {
    let v: Vec<f64> = rows.iter().map(|r| number(r, header, col)).collect();
    assert!(v.windows(2).all(|w| w[0] >= w[1]), "{col} not descending");
}

#[test]
fn de_writes_scvi_tools_tables_sorted_and_seeded() {
    let d = tmpdir("infer_cli", "de");
    let (m, x) = (model(), data());
    let de = |out: &Path, extra: &[&str]| {
        let mut a = vec!["de", &m, &x, "--groupby", "stim", "--quiet"];
        a.extend(["--out", s(out)]);
        a.extend(extra);
        ok(&a);
        read_csv(out)
    };
    let v1 = d.join("vanilla.csv");
    let (header, rows) = de(&v1, &["--group1", "STIM", "--group2", "CTRL"]);
    assert_eq!(header[0], "");
    assert_eq!(&header[1..], &VANILLA);
    assert_eq!(rows.len(), 100);
    descending(&rows, &header, "bayes_factor");
    for r in &rows {
        let p = number(r, &header, "proba_m1") + number(r, &header, "proba_m2");
        assert!((p - 1.0).abs() < 1e-12);
        assert_eq!(&r[12..], ["STIM vs CTRL", "STIM", "CTRL"]);
    }
    let again = d.join("again.csv");
    de(&again, &["--group1", "STIM", "--group2", "CTRL"]);
    assert_eq!(
        std::fs::read(&v1).unwrap(),
        std::fs::read(&again).unwrap(),
        "same seed, same table"
    );

    let (header, rows) = de(
        &d.join("change.csv"),
        &["--group1", "STIM", "--mode", "change"],
    );
    assert_eq!(&header[1..], &CHANGE);
    assert_eq!(rows.len(), 100);
    descending(&rows, &header, "proba_de");
    let k = header.iter().position(|h| h == "is_de_fdr_0.05").unwrap();
    // Flagged genes come first (sorted by proba_de), and the flags are scvi-tools' booleans.
    let flags: Vec<&str> = rows.iter().map(|r| r[k].as_str()).collect();
    assert!(flags.iter().all(|f| *f == "True" || *f == "False"));
    assert!(flags
        .windows(2)
        .all(|w| !(w[0] == "False" && w[1] == "True")));
    assert_eq!(rows[0][header.len() - 3], "STIM vs Rest");

    // Without --group1: every group of the column against the rest, one long table.
    let (header, rows) = de(&d.join("all.csv"), &["--n-samples", "500"]);
    let k = header.iter().position(|h| h == "comparison").unwrap();
    assert_eq!(rows.len(), 200);
    assert_eq!(rows[0][k], "CTRL vs Rest");
    assert_eq!(rows[100][k], "STIM vs Rest");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn sample_writes_counts_whose_mean_is_the_models() {
    let d = tmpdir("infer_cli", "sample");
    let (m, x) = (model(), data());
    let h5 = d.join("s.h5ad");
    ok(&[
        "sample",
        &m,
        &x,
        "--n-samples",
        "3",
        "--out",
        s(&h5),
        "--quiet",
    ]);
    let input = read(Path::new(&x), None);
    let x0 = read(&h5, None);
    assert_eq!(x0.cell_names, input.cell_names);
    assert_eq!(x0.gene_names, input.gene_names);
    let draws: Vec<Vec<f32>> = [None, Some("sample_1"), Some("sample_2")]
        .iter()
        .map(|l| dense(&read(&h5, *l)))
        .collect();
    for v in &draws {
        assert!(v.iter().all(|&c| c >= 0.0 && c.fract() == 0.0), "counts");
        assert_ne!(v, &dense(&input), "a draw, not the input");
    }
    assert_ne!(draws[0], draws[1], "independent draws");

    // The mean of many draws approaches the model's mean: normalize with the latent library gives
    // px_rate, the expected count of a negative binomial (under ZINB the mean is (1 - pi) px_rate),
    // so this part uses an NB model. Tolerance: 5 standard errors of the draws' mean (their spread
    // over cells and draws, an upper bound on the error of a mean over the same cells) plus 2% for
    // the Monte Carlo error of normalize's own mean over its posterior draws.
    let nb = d.join("nb");
    ok(&[
        "train",
        &x,
        "--batch-key",
        "stim",
        "--gene-likelihood",
        "nb",
        "--n-hidden",
        "32",
        "--n-latent",
        "5",
        "--max-epochs",
        "30",
        "--out",
        s(&nb),
        "--quiet",
    ]);
    let m = s(&nb).to_string();
    let n = 200;
    let npy = d.join("many.npy");
    let ns = n.to_string();
    ok(&[
        "sample",
        &m,
        &x,
        "--n-samples",
        &ns,
        "--out",
        s(&npy),
        "--quiet",
    ]);
    let (shape, c) = read_npy(&npy);
    assert_eq!(shape, vec![300, 100, n]);
    let mean = d.join("mean.npy");
    ok(&[
        "normalize",
        &m,
        &x,
        "--library-size",
        "latent",
        "--n-samples",
        "50",
        "--out",
        s(&mean),
        "--quiet",
    ]);
    let (_, mu) = read_npy(&mean);
    let total = (300 * n) as f64;
    let mut checked = 0;
    for j in 0..100 {
        let vals = (0..300).flat_map(|i| (0..n).map(move |k| (i * 100 + j) * n + k));
        let (mut s1, mut s2) = (0f64, 0f64);
        for at in vals {
            let v = c[at] as f64;
            s1 += v;
            s2 += v * v;
        }
        let m_draw = s1 / total;
        let sd = (s2 / total - m_draw * m_draw).max(0.0).sqrt();
        let m_model = (0..300).map(|i| mu[i * 100 + j] as f64).sum::<f64>() / 300.0;
        if m_model < 0.05 {
            continue;
        }
        checked += 1;
        let tol = 5.0 * sd / total.sqrt() + 0.02 * m_model;
        assert!(
            (m_draw - m_model).abs() < tol,
            "gene {j}: draws' mean {m_draw} vs the model's {m_model} (tolerance {tol})"
        );
    }
    assert!(checked > 50, "only {checked} genes checked");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn embed_h5ad_is_the_input_plus_the_latent() {
    let d = tmpdir("infer_cli", "embed");
    let (m, x) = (model(), data());
    let (h5, npy) = (d.join("e.h5ad"), d.join("z.npy"));
    for out in [&h5, &npy] {
        ok(&["embed", &m, &x, "--out", s(out)]);
    }
    let input = read(Path::new(&x), None);
    let back = read(&h5, None);
    assert_eq!(dense(&back), dense(&input));
    assert_eq!(back.cell_names, input.cell_names);
    assert_eq!(back.gene_names, input.gene_names);
    for key in ["stim", "cell_type"] {
        let (a, b) = (
            back.obs_column(key).unwrap(),
            input.obs_column(key).unwrap(),
        );
        match (a, b) {
            (
                ObsColumn::Categorical {
                    codes: ca,
                    categories: ka,
                },
                ObsColumn::Categorical {
                    codes: cb,
                    categories: kb,
                },
            ) => assert!(ca == cb && ka == kb, "obs {key}"),
            _ => panic!("obs {key} is not categorical"),
        }
    }
    let f = hdf5_reader::Hdf5File::open(&h5).unwrap();
    let ds = f
        .root_group()
        .unwrap()
        .group("obsm")
        .unwrap()
        .dataset("X_scVI")
        .unwrap();
    assert_eq!(ds.shape(), &[300, 5]);
    let z: Vec<f32> = scvi_rs::data::hdf5::NumField::new(&h5, "obsm/X_scVI", &ds)
        .unwrap()
        .all()
        .unwrap();
    assert_eq!(z, read_npy(&npy).1, "obsm[\"X_scVI\"] is the embedding");
    std::fs::remove_dir_all(&d).ok();
}

/// The reference Python with anndata, or None after saying why the check is skipped.
fn anndata_python() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../main/.venv-ref/bin/python");
    let p = std::env::var_os("SCVI_RS_REF_PYTHON").map_or(p, PathBuf::from);
    if p.exists() {
        return Some(p);
    }
    skip(&format!(
        "{} is absent (set SCVI_RS_REF_PYTHON to a Python with anndata)",
        p.display()
    ));
    None
}

#[test]
fn anndata_reads_every_h5ad_written() {
    let Some(py) = anndata_python() else { return };
    let d = tmpdir("infer_cli", "anndata");
    let (m, x) = (model(), data());
    let (e, n, smp) = (d.join("e.h5ad"), d.join("n.h5ad"), d.join("s.h5ad"));
    ok(&["embed", &m, &x, "--out", s(&e)]);
    ok(&["normalize", &m, &x, "--out", s(&n), "--quiet"]);
    ok(&[
        "sample",
        &m,
        &x,
        "--n-samples",
        "2",
        "--out",
        s(&smp),
        "--quiet",
    ]);
    let script = r#"
import sys, anndata as ad, numpy as np
src = ad.read_h5ad(sys.argv[1])
e, n, s = (ad.read_h5ad(p) for p in sys.argv[2:5])
for a in (e, n, s):
    assert a.shape == src.shape, a.shape
    assert list(a.obs_names) == list(src.obs_names) and list(a.var_names) == list(src.var_names)
    assert list(a.obs["cell_type"].cat.categories) == list(src.obs["cell_type"].cat.categories)
    assert (a.obs["stim"] == src.obs["stim"]).all()
assert (e.X != src.X).nnz == 0 and (n.X != src.X).nnz == 0
assert e.obsm["X_scVI"].shape == (src.n_obs, 5)
assert np.allclose(np.asarray(n.layers["scvi_normalized"]).sum(1), 1.0, atol=1e-4)
assert s.layers["sample_1"].shape == src.shape and (s.X != s.layers["sample_1"]).nnz > 0
print("anndata ok")
"#;
    let o = std::process::Command::new(&py)
        .args(["-c", script, &x, s(&e), s(&n), s(&smp)])
        .output()
        .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("anndata ok"),
        "anndata:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bad_input_fails_clearly_and_leaves_no_output() {
    let d = tmpdir("infer_cli", "bad");
    let (m, x) = (model(), data());
    let genes = d.join("genes.txt");
    std::fs::write(&genes, "ISG15\nNOTAGENE\n").unwrap();
    let (npy, csv, h5) = (d.join("o.npy"), d.join("o.csv"), d.join("o.h5ad"));
    let (npy, csv, h5) = (s(&npy), s(&csv), s(&h5));
    let empty = fixture("infer", "empty_group.h5ad");
    let other = fixture("cli", "other_genes.h5ad");
    let de = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["de", &m, &x, "--out", csv, "--quiet"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        a.extend(extra.iter().map(|e| e.to_string()));
        a
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            de(&["--groupby", "stim", "--group1", "NOPE"]),
            vec!["--group1 'NOPE'", "stim", "groups: CTRL, STIM"],
        ),
        (
            de(&["--groupby", "stim", "--group1", "STIM", "--group2", "NOPE"]),
            vec!["--group2 'NOPE'", "CTRL, STIM"],
        ),
        (de(&["--groupby", "nope"]), vec!["nope", "stim, cell_type"]),
        (
            de(&["--groupby", "stim", "--mode", "fancy"]),
            vec!["--mode", "fancy"],
        ),
        (
            de(&["--groupby", "stim", "--n-samples", "0"]),
            vec!["--n-samples"],
        ),
        (
            de(&["--groupby", "stim", "--fdr-target", "2"]),
            vec!["--fdr-target"],
        ),
    ];
    for (args, needles) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&a, needles);
    }
    let e = s(&empty);
    fails_with(
        &[
            "de",
            &m,
            e,
            "--groupby",
            "cond",
            "--group1",
            "none",
            "--out",
            csv,
        ],
        &["group 'none'", "cond", "no cells", "empty_group.h5ad"],
    );
    fails_with(
        &[
            "normalize",
            &m,
            &x,
            "--transform-batch",
            "NEW",
            "--out",
            npy,
        ],
        &["--transform-batch 'NEW'", "CTRL, STIM"],
    );
    fails_with(
        &["normalize", &m, &x, "--genes", s(&genes), "--out", npy],
        &["--genes", "genes.txt", "NOTAGENE"],
    );
    fails_with(
        &["normalize", &m, &x, "--n-samples", "0", "--out", h5],
        &["--n-samples"],
    );
    fails_with(
        &["normalize", &m, &x, "--library-size", "abc", "--out", npy],
        &["--library-size", "abc"],
    );
    fails_with(
        &["normalize", &m, &x, "--out", s(&d.join("o.txt"))],
        &["--out", ".npy, .csv, .h5ad"],
    );
    fails_with(
        &["sample", &m, &x, "--n-samples", "0", "--out", h5],
        &["--n-samples"],
    );
    fails_with(
        &["evaluate", &m, &x, "--n-mc-samples", "0"],
        &["--n-mc-samples"],
    );
    let o = s(&other);
    for cmd in [
        vec!["evaluate", &m, o],
        vec!["normalize", &m, o, "--out", npy],
        vec!["de", &m, o, "--groupby", "stim", "--out", csv],
        vec!["sample", &m, o, "--out", h5],
        vec!["embed", &m, o, "--out", h5],
    ] {
        fails_with(&cmd, &["other_genes.h5ad", "genes differ", "ISG15"]);
    }
    let left: Vec<String> = common::files::listing(&d);
    assert_eq!(
        left,
        vec!["genes.txt".to_string()],
        "a failed run left files"
    );

    // An existing output is kept without --force, replaced with it.
    ok(&["normalize", &m, &x, "--out", npy, "--quiet"]);
    let before = std::fs::read(npy).unwrap();
    fails_with(
        &["normalize", &m, &x, "--out", npy, "--seed", "3"],
        &["already exists", "--force"],
    );
    assert_eq!(std::fs::read(npy).unwrap(), before);
    let o = run(&[
        "normalize",
        &m,
        &x,
        "--out",
        npy,
        "--seed",
        "3",
        "--force",
        "--quiet",
    ]);
    assert!(o.status.success());
    assert_ne!(std::fs::read(npy).unwrap(), before);
    std::fs::remove_dir_all(&d).ok();
}
