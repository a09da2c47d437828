//! scvi-rs against scvi-tools 1.4.2 on the same model: the fixture (tests/fixtures/infer, made by
//! scripts/fixtures/make_infer_fixture.py) holds a small scvi-rs model, loaded into scvi-tools, and
//! what scvi-tools' own methods computed on it, with the Monte Carlo spread of each estimate. The
//! two sides draw from different generators, so they agree in distribution: each comparison allows
//! `Z` standard errors of the difference of two independent estimates, derived from the spread the
//! fixture recorded (and, where noted, from ours).

mod common;

use common::cli::{ok, read_npy, STIM_VS_CTRL};
use common::files::{fixture, tmpdir};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// Standard errors allowed. Each test compares up to a few thousand numbers; at 5 standard errors
/// a correct implementation fails one with probability ~6e-7 (two-sided), so a whole run with
/// probability below 1e-2 even for the 30,000 entries of a normalized matrix.
const Z: f64 = 5.0;

fn reference() -> Value {
    let p = fixture("infer", "scvi_tools.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn args<'a>(cmd: &'a str, extra: &[&'a str]) -> Vec<String> {
    let m = fixture("infer", "model");
    let x = fixture("infer", "data.h5ad");
    let mut a = vec![
        cmd.to_string(),
        m.to_str().unwrap().to_string(),
        x.to_str().unwrap().to_string(),
        "--quiet".to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(cmd: &str, extra: &[&str]) -> String {
    let a = args(cmd, extra);
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A figure of scvi-tools' (mean and standard deviation of its `calls` repeated calls) against
/// ours: one of our estimates has the spread of one call, so the difference has standard deviation
/// `sd sqrt(1 + 1 / calls)`.
fn check_figure(name: &str, ours: f64, r: &Value) {
    let (mean, sd, calls) = (
        r["mean"].as_f64().unwrap(),
        r["sd"].as_f64().unwrap(),
        r["calls"].as_f64().unwrap(),
    );
    let tol = Z * sd * (1.0 + 1.0 / calls).sqrt();
    println!("{name}: scvi-rs {ours:.4}, scvi-tools {mean:.4} (sd {sd:.4}), tolerance {tol:.4}");
    assert!(
        (ours - mean).abs() <= tol,
        "{name}: scvi-rs {ours} vs scvi-tools {mean} +- {tol}"
    );
}

#[test]
fn evaluate_matches_get_elbo_reconstruction_error_and_marginal_ll() {
    let r = reference();
    let n = r["marginal_ll"]["n_mc_samples"]
        .as_u64()
        .unwrap()
        .to_string();
    let out: Value = serde_json::from_str(&run("evaluate", &["--n-mc-samples", &n])).unwrap();
    check_figure("elbo", out["elbo"].as_f64().unwrap(), &r["elbo"]);
    check_figure(
        "reconstruction_error",
        out["reconstruction_error"].as_f64().unwrap(),
        &r["reconstruction_error"],
    );
    check_figure(
        "marginal_ll",
        out["marginal_ll"].as_f64().unwrap(),
        &r["marginal_ll"],
    );
}

/// Entry by entry, ours (the mean of the same number of draws) against scvi-tools' mean with its
/// standard error `se`: the difference has standard deviation `se sqrt 2`.
fn check_matrix(name: &str, ours: &[f32], theirs: &[f32], se: &[f32]) {
    assert_eq!(ours.len(), theirs.len());
    let mut worst = (0.0f64, 0usize);
    for (k, ((&a, &b), &s)) in ours.iter().zip(theirs).zip(se).enumerate() {
        // 1e-6 relative: f32 rounding of the means themselves.
        let tol = Z * (s as f64) * 2f64.sqrt() + 1e-6 * (b as f64).abs();
        let z = (a as f64 - b as f64).abs() / tol;
        if z > worst.0 {
            worst = (z, k);
        }
    }
    let k = worst.1;
    println!(
        "{name}: worst entry {k} at {:.2} of its tolerance ({} vs {}, se {})",
        worst.0, ours[k], theirs[k], se[k]
    );
    assert!(worst.0 <= 1.0, "{name}: entry {k} out of tolerance");
}

#[test]
fn normalize_matches_get_normalized_expression() {
    let r = reference();
    let d = tmpdir("infer_parity", "normalize");
    let cases = [
        ("normalized", "normalized_mean.npy", "normalized_se.npy"),
        (
            "normalized_latent",
            "normalized_latent_mean.npy",
            "normalized_latent_se.npy",
        ),
    ];
    for (key, mean, se) in cases {
        let spec = &r[key];
        let n = spec["n_samples"].as_u64().unwrap().to_string();
        let lib = match &spec["library_size"] {
            Value::String(s) => s.clone(),
            v => v.as_f64().unwrap().to_string(),
        };
        let out = d.join(format!("{key}.npy"));
        let mut extra = vec!["--n-samples", &n, "--library-size", &lib];
        extra.extend(["--out", out.to_str().unwrap()]);
        let batches: Vec<String> = spec["transform_batch"]
            .as_array()
            .map(|a| a.iter().map(|b| b.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        for b in &batches {
            extra.extend(["--transform-batch", b]);
        }
        run("normalize", &extra);
        let (_, ours) = read_npy(&out);
        let (_, theirs) = read_npy(&fixture("infer", mean));
        let (_, se) = read_npy(&fixture("infer", se));
        check_matrix(key, &ours, &theirs, &se);
    }
    std::fs::remove_dir_all(&d).ok();
}

/// A DE table: gene -> column -> value.
fn table(t: &Value) -> HashMap<String, HashMap<String, Value>> {
    let index = t["index"].as_array().unwrap();
    let mut out: HashMap<String, HashMap<String, Value>> = HashMap::new();
    for (c, vals) in t["values"].as_object().unwrap() {
        for (g, v) in index.iter().zip(vals.as_array().unwrap()) {
            out.entry(g.as_str().unwrap().to_string())
                .or_default()
                .insert(c.clone(), v.clone());
        }
    }
    out
}

fn read_de(path: &Path) -> (Vec<String>, HashMap<String, HashMap<String, String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let mut out = HashMap::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let row = header[1..]
            .iter()
            .zip(&f[1..])
            .map(|(h, v)| (h.clone(), v.to_string()))
            .collect();
        out.insert(f[0].to_string(), row);
    }
    (header, out)
}

#[test]
fn de_matches_differential_expression_in_both_modes() {
    let r = reference();
    let de = &r["de"];
    let sd = |k: &str| -> Vec<f64> {
        de[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (sd1, sd2) = (sd("scale_sd1"), sd("scale_sd2"));
    let genes: Vec<String> = r["genes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().to_string())
        .collect();
    let d = tmpdir("infer_parity", "de");
    for mode in ["vanilla", "change"] {
        let out = d.join(format!("{mode}.csv"));
        let o = out.to_str().unwrap();
        let extra = [&STIM_VS_CTRL[..], &["--mode", mode, "--out", o]].concat();
        run("de", &extra);
        let (header, ours) = read_de(&out);
        let theirs = table(&de[mode]);
        let cols: Vec<String> = de[mode]["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            header[1..],
            cols[..],
            "{mode}: scvi-tools' columns in its order"
        );
        let n = 5000.0f64; // n_samples_overall, both sides
        let mut worst: (f64, String) = (0.0, String::new());
        for (j, g) in genes.iter().enumerate() {
            let (a, b) = (&ours[g], &theirs[g]);
            let num = |c: &str| -> (f64, f64) {
                (a[c].parse().unwrap(), b[c].as_f64().unwrap_or(f64::NAN))
            };
            let mut check = |c: &str, tol: f64| {
                let (x, y) = num(c);
                let z = (x - y).abs() / tol;
                assert!(
                    z <= 1.0,
                    "{mode} {g} {c}: scvi-rs {x} vs scvi-tools {y} (tolerance {tol})"
                );
                if z > worst.0 {
                    worst = (z, format!("{g} {c}"));
                }
            };
            // The counts' statistics: no randomness, float rounding only.
            let exact = cols
                .iter()
                .filter(|c| c.starts_with("raw_") || c.starts_with("non_zeros_"));
            for c in exact {
                let y = num(c).1;
                check(c, 1e-5 * y.abs() + 1e-9);
            }
            // Mean scales: each side's mean of n draws, sd recorded per gene and group.
            check("scale1", Z * sd1[j] * (2.0 / n).sqrt() + 1e-12);
            check("scale2", Z * sd2[j] * (2.0 / n).sqrt() + 1e-12);
            // Probabilities: proportions of n paired draws; the binomial standard error at the
            // mean of the two, floored at one draw's worth (p near 0 or 1).
            let p_col = if mode == "vanilla" {
                "proba_m1"
            } else {
                "proba_de"
            };
            let (x, y) = num(p_col);
            let p = 0.5 * (x + y);
            let se = (p * (1.0 - p)).max(1.0 / n).sqrt() / n.sqrt();
            check(p_col, Z * se * 2f64.sqrt());
            if mode == "change" {
                // lfc_mean: each side a mean of n draws with spread lfc_std; the median's standard
                // error is about 1.25 times the mean's for a near-normal spread.
                let s = num("lfc_std").1;
                check("lfc_mean", Z * s * (2.0 / n).sqrt() + 1e-9);
                check("lfc_median", 1.25 * Z * s * (2.0 / n).sqrt() + 1e-9);
                check("lfc_std", Z * s * (1.0 / n).sqrt() + 1e-9);
                check("delta", 1e-12);
            }
        }
        println!(
            "{mode}: worst {} at {:.2} of its tolerance",
            worst.1, worst.0
        );
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn posterior_predictive_means_match() {
    let r = reference();
    let pp = &r["predictive"];
    let draws = pp["n_samples"].as_u64().unwrap() as usize;
    let d = tmpdir("infer_parity", "sample");
    let out = d.join("pp.npy");
    let n = draws.to_string();
    run(
        "sample",
        &["--n-samples", &n, "--out", out.to_str().unwrap()],
    );
    let (shape, c) = read_npy(&out);
    let (cells, genes) = (shape[0], shape[1]);
    let total = (cells * draws) as f64;
    let (mean, se) = (pp["mean"].as_array().unwrap(), pp["se"].as_array().unwrap());
    let mut worst = (0.0f64, 0usize);
    for j in 0..genes {
        let ours: f64 = (0..cells)
            .flat_map(|i| (0..draws).map(move |k| (i * genes + j) * draws + k))
            .map(|at| c[at] as f64)
            .sum::<f64>()
            / total;
        let (m, s) = (mean[j].as_f64().unwrap(), se[j].as_f64().unwrap());
        // Both sides: the mean of cells x draws counts with standard error s.
        let tol = Z * s * 2f64.sqrt() + 1e-9;
        let z = (ours - m).abs() / tol;
        assert!(
            z <= 1.0,
            "gene {j}: scvi-rs {ours} vs scvi-tools {m} (tolerance {tol})"
        );
        if z > worst.0 {
            worst = (z, j);
        }
    }
    println!(
        "predictive: worst gene {} at {:.2} of its tolerance",
        worst.1, worst.0
    );
    std::fs::remove_dir_all(&d).ok();
}
