//! `scvi-rs import` and `scvi-rs export` through the binary, against scvi-tools 1.4.2.
//!
//! The committed fixtures (tests/fixtures/scvi_tools, made by
//! scripts/fixtures/make_scvi_tools_fixtures.py) hold a model trained by scvi-tools with its
//! `get_latent_representation()`, and a scvi-rs model with the latent scvi-tools computed from
//! its export (`SCVI.load(dir, adata)`). The tests check that an imported model embeds as
//! scvi-tools did, that scvi-rs' latent of a model equals scvi-tools' of its export (1e-5), that
//! export then import gives the same weights bit for bit, and that import refuses what scvi-rs
//! does not implement, naming it. Where scvi-tools is installed (`SCVI_RS_REF_PYTHON`, else the
//! reference venv `.venv-ref` of this checkout or of `../main`) the script runs live into a
//! scratch folder, which is then checked the same way; otherwise that test says why it skips.

mod common;

use common::files::{fixture, skip, tmpdir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DATA: &str = "tests/fixtures/cli/small.h5ad";

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scvi-rs"))
        .args(args)
        .output()
        .expect("run scvi-rs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(args: &[&str]) {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?}:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs `args`, which must fail with exit 1, no panic, and every one of `needles` in the error.
fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{args:?}:\n{err}");
    assert!(!err.contains("panicked"), "{args:?}:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: no '{n}' in:\n{err}");
    }
    err
}

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(DATA)
}

/// A float32 .npy file (version 1 header) as its values.
fn npy_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{}", path.display());
    let header_len = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = String::from_utf8_lossy(&b[10..10 + header_len]);
    assert!(header.contains("'<f4'"), "{}: {header}", path.display());
    b[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// `scvi-rs embed MODEL small.h5ad` (extra flags: the layer) against scvi-tools' latent.
fn embed_equals(model: &Path, extra: &[&str], want: &Path, scratch: &Path) {
    let out = scratch.join(format!(
        "{}.npy",
        model.file_name().unwrap().to_string_lossy()
    ));
    let data = data();
    let mut args = vec!["embed", s(model), s(&data), "--out", s(&out)];
    args.extend_from_slice(&["--device", "cpu", "--threads", "1", "--force"]);
    args.extend_from_slice(extra);
    ok(&args);
    let (got, want_v) = (npy_f32(&out), npy_f32(want));
    assert_eq!(got.len(), want_v.len(), "{}", want.display());
    let worst = got
        .iter()
        .zip(&want_v)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("{}: max |scvi-rs - scvi-tools| = {worst:e}", want.display());
    assert!(worst <= 1e-5, "{}: differs by {worst}", want.display());
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every check on a fixture folder `fx` (the committed one, or one the script just made).
fn check_fixtures(fx: &Path, scratch: &Path) {
    // import: a model trained by scvi-tools embeds as scvi-tools does.
    let imported = scratch.join("imported");
    ok(&["import", s(&fx.join("trained")), s(&imported)]);
    embed_equals(
        &imported,
        &["--layer", "counts"],
        &fx.join("trained_latent.npy"),
        scratch,
    );
    let meta = String::from_utf8(bytes(&imported.join("model.json"))).unwrap();
    for want in [
        "\"dispersion\": \"gene-batch\"",
        "\"gene_likelihood\": \"nb\"",
        "\"n_layers\": 2",
        "\"batch_key\": \"stim\"",
        "\"labels_key\": \"cell_type\"",
    ] {
        assert!(meta.contains(want), "no {want} in {meta}");
    }

    // export: scvi-tools' latent of the export equals scvi-rs' latent of the model.
    let rs = fx.join("rs_model");
    embed_equals(&rs, &[], &fx.join("rs_export_latent.npy"), scratch);

    // Round trips: scvi-rs -> scvi-tools -> scvi-rs, and scvi-tools -> scvi-rs -> scvi-tools
    // -> scvi-rs, keep every weight and buffer bit for bit.
    round_trip(
        &rs,
        &[],
        &["model.safetensors", "split.json"],
        scratch,
        "rs",
    );
    round_trip(
        &imported,
        &["--layer", "counts"],
        &["model.safetensors", "split.json", "model.json"],
        scratch,
        "imported",
    );
}

/// `export MODEL` then `import` it back: the files `same` are the model's, byte for byte.
fn round_trip(model: &Path, flags: &[&str], same: &[&str], scratch: &Path, name: &str) {
    let (exported, back) = (
        scratch.join(format!("{name}.export")),
        scratch.join(format!("{name}.back")),
    );
    let mut export = vec!["export", s(model), s(&exported)];
    export.extend_from_slice(flags);
    ok(&export);
    ok(&["import", s(&exported), s(&back)]);
    for f in same {
        assert!(
            bytes(&back.join(f)) == bytes(&model.join(f)),
            "{}: export then import changed {f}",
            model.display()
        );
    }
}

#[test]
fn committed_fixtures_import_and_export_match_scvi_tools() {
    let scratch = tmpdir("scvi_tools", "committed");
    check_fixtures(&fixture("scvi_tools", ""), &scratch);
}

/// The reference venv's python, if there is one.
fn reference_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SCVI_RS_REF_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    [".venv-ref/bin/python", "../main/.venv-ref/bin/python"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.exists())
}

#[test]
fn live_scvi_tools_trains_loads_and_matches() {
    let Some(python) = reference_python() else {
        skip("no scvi-tools venv (set SCVI_RS_REF_PYTHON, or run scripts/parity/setup_venv.sh)");
        return;
    };
    let scratch = tmpdir("scvi_tools", "live");
    let fx = scratch.join("fixtures");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fixtures/make_scvi_tools_fixtures.py");
    let o = Command::new(&python)
        .arg(&script)
        .args(["--out", s(&fx), "--scvi-rs", env!("CARGO_BIN_EXE_scvi-rs")])
        .output()
        .expect("run python");
    assert!(
        o.status.success(),
        "{} {}:\n{}",
        python.display(),
        script.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    check_fixtures(&fx, &scratch);
}

#[test]
fn import_refuses_what_scvi_rs_does_not_implement() {
    let scratch = tmpdir("scvi_tools", "refuse");
    for (name, needles) in [
        ("refuse_scanvi", &["SCANVI model", "SCVI models only"][..]),
        ("refuse_covariates", &["categorical_covariate_keys"][..]),
        ("refuse_continuous", &["continuous_covariate_keys"][..]),
        ("refuse_size_factor", &["size_factor_key 'size'"][..]),
        ("refuse_normal", &["gene_likelihood 'normal'"][..]),
    ] {
        let out = scratch.join(name);
        let mut all = vec!["model.pt", "scvi-rs"];
        all.extend_from_slice(needles);
        let src = fixture("scvi_tools", name);
        fails_with(&["import", s(&src), s(&out)], &all);
        assert!(
            !out.exists(),
            "{name}: a refused import wrote {}",
            out.display()
        );
    }
    // A scvi-rs model directory is not a scvi-tools one.
    let rs = fixture("scvi_tools", "rs_model");
    fails_with(&["import", s(&rs), s(&scratch.join("x"))], &["model.pt"]);
}

#[test]
fn damaged_model_pt_is_an_error_naming_the_file() {
    let scratch = tmpdir("scvi_tools", "damaged");
    let good = bytes(&fixture("scvi_tools", "trained/model.pt"));
    let n = good.len();
    let mut cases: Vec<(String, Vec<u8>)> = [0, 10, 100, n / 3, n / 2, n - 30, n - 1]
        .iter()
        .map(|&k| (format!("truncated at {k}"), good[..k].to_vec()))
        .collect();
    let (seed, mut rng) = common::seeded("damaged model.pt");
    for i in 0..12 {
        let mut b = good.clone();
        let at = rng.below(n);
        b[at] ^= 1 << rng.below(8);
        cases.push((format!("bit flipped at {at} (seed {seed}, case {i})"), b));
    }
    for (what, b) in cases {
        let dir = scratch.join("in");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.pt"), &b).unwrap();
        let out = scratch.join("out");
        let o = run(&["import", s(&dir), s(&out)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{what}:\n{err}");
        if o.status.success() {
            // A flip inside a weight's bytes is still a readable model; it must be whole.
            assert!(out.join("model.json").exists(), "{what}");
        } else {
            assert_eq!(o.status.code(), Some(1), "{what}:\n{err}");
            assert!(
                err.contains("model.pt"),
                "{what}: the file is not named:\n{err}"
            );
            assert!(
                !out.exists(),
                "{what}: a failed import left {}",
                out.display()
            );
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}

#[test]
fn export_writes_only_where_it_may() {
    let scratch = tmpdir("scvi_tools", "outputs");
    let rs = fixture("scvi_tools", "rs_model");
    let out = scratch.join("export");
    ok(&["export", s(&rs), s(&out)]);
    // Again: refused without --force, replaced with it.
    fails_with(&["export", s(&rs), s(&out)], &["--force"]);
    ok(&["export", s(&rs), s(&out), "--force"]);
    // Not over a directory scvi-rs did not write, even with --force: a scvi-tools save.
    let theirs = scratch.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::copy(
        fixture("scvi_tools", "trained/model.pt"),
        theirs.join("model.pt"),
    )
    .unwrap();
    fails_with(
        &["export", s(&rs), s(&theirs), "--force"],
        &["not written by scvi-rs export"],
    );
    assert_eq!(
        bytes(&theirs.join("model.pt")),
        bytes(&fixture("scvi_tools", "trained/model.pt"))
    );
    // import's output is a scvi-rs model directory: not over an export.
    fails_with(
        &["import", s(&out), s(&out), "--force"],
        &["is not a scvi-rs model directory"],
    );
    // A run that has not finished has nothing to export.
    let unfinished = scratch.join("unfinished");
    std::fs::create_dir_all(&unfinished).unwrap();
    std::fs::write(unfinished.join("checkpoint.safetensors"), b"x").unwrap();
    fails_with(
        &["export", s(&unfinished), s(&scratch.join("e2"))],
        &["training did not finish", "--resume"],
    );
}
