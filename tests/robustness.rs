//! Hostile input through the command line: corrupt stores, lying sizes, absurd flags, special
//! files, nonsense values. Every case must end with exit status 1, one clear message naming the
//! file (or the flag) and the field, no panic, and no output left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::files::{fixture, poke};

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scvi-rs"))
}

fn tmpdir(name: &str) -> PathBuf {
    common::files::tmpdir("robust", name)
}

fn run(args: &[&str]) -> Output {
    exe().args(args).output().expect("run scvi-rs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Run and expect a clean failure (exit 1, no panic) whose message contains every `needle` and
/// says `error:` once.
fn fails_with(args: &[&str], needles: &[&str]) -> String {
    let o = run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "exit status for {args:?}:\n{err}");
    assert!(!err.contains("panicked"), "panic for {args:?}:\n{err}");
    assert_eq!(err.matches("error:").count(), 1, "{args:?}:\n{err}");
    for n in needles {
        assert!(err.contains(n), "message for {args:?} lacks '{n}':\n{err}");
    }
    err
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(o.status.success(), "{args:?} failed:\n{}", stderr(&o));
    stderr(&o)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A store whose `indices.u32` or `data.f32` was damaged after it was written (its checksums no
/// longer match, but only `info --verify` recomputes them): every command that reads its rows
/// stops with the file and the row named, and writes nothing.
#[test]
fn corrupt_store_rows_fail_every_command_cleanly() {
    let d = tmpdir("corrupt_store");
    let good = d.join("good.store");
    ok(&["convert", s(&fixture("cli", "small.h5ad")), s(&good)]);
    ok(&[
        "train",
        s(&good),
        "--out",
        s(&d.join("model")),
        "--max-epochs",
        "1",
        "--quiet",
    ]);
    let cases: [(&str, [u8; 4], &str); 4] = [
        (
            "indices.u32",
            u32::MAX.to_le_bytes(),
            "gene index 4294967295",
        ),
        ("data.f32", f32::NAN.to_le_bytes(), "NaN"),
        ("data.f32", (-1f32).to_le_bytes(), "negative"),
        ("data.f32", 1e30f32.to_le_bytes(), "10^9"),
    ];
    for (file, bytes, word) in cases {
        let bad = d.join("bad.store");
        let _ = std::fs::remove_dir_all(&bad);
        ok(&["convert", s(&fixture("cli", "small.h5ad")), s(&bad)]);
        // Entry 1000 lies in row 33 of small.h5ad's store.
        poke(&bad, file, 1000, bytes);
        let needles = [file, "row 33", word];
        let out = d.join("out");
        let o = s(&out);
        fails_with(&["train", s(&bad), "--out", o, "--quiet"], &needles);
        fails_with(
            &["train", s(&bad), "--out", o, "--quiet", "--latent-library"],
            &needles,
        );
        let m = d.join("model");
        let z = d.join("z.npy");
        fails_with(&["embed", s(&m), s(&bad), "--out", s(&z)], &needles);
        fails_with(&["elbo", s(&m), s(&bad), "--subset", "all"], &needles);
        fails_with(&["convert", s(&bad), o, "--n-top-genes", "5"], &needles);
        fails_with(&["convert", s(&bad), &format!("{o}.h5ad")], &needles);
        fails_with(&["info", s(&bad), "--verify"], &needles);
        assert!(!out.exists() && !d.join("out.h5ad").exists() && !z.exists());
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// Run and expect a flag refused before any work (exit status 1) with its name and the allowed
/// range.
fn refused(args: &[&str], needles: &[&str]) {
    let o = run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "exit status for {args:?}:\n{err}");
    for n in needles {
        assert!(err.contains(n), "message for {args:?} lacks '{n}':\n{err}");
    }
}

/// Files of a few kilobytes whose chunked datasets claim hundreds of millions of entries (made by
/// scripts/fixtures/make_hostile_fixtures.py) are refused before anything is allocated, in
/// milliseconds, naming the field; flags with absurd values are refused before any work with the
/// allowed range; thread counts far beyond the CPUs are capped with a warning.
#[test]
fn lying_sizes_and_absurd_flags_are_refused_up_front() {
    let d = tmpdir("sizes");
    let out = d.join("out");
    let o = s(&out);
    let hostile = |name: &str| fixture("hostile", name);
    for (file, field) in [
        ("lying_names.h5ad", "obs/_index"),
        ("many_categories.h5ad", "obs/cell_type/categories"),
        ("lying_10x.h5", "matrix/barcodes"),
    ] {
        let f = hostile(file);
        let needles = [file, field, "can hold"];
        fails_with(&["info", s(&f)], &needles);
        fails_with(&["train", s(&f), "--out", o, "--quiet"], &needles);
        fails_with(&["convert", s(&f), o], &needles);
    }
    let f = hostile("huge_row.h5ad");
    let needles = ["huge_row.h5ad", "X/indices", "1000000000 entries"];
    fails_with(&["train", s(&f), "--out", o, "--quiet"], &needles);
    fails_with(&["convert", s(&f), o], &needles);
    assert!(!out.exists());

    let small = fixture("cli", "small.h5ad");
    let sm = s(&small);
    for (flag, value, range) in [
        ("--n-latent", "1000000000000", "1 to 16384"),
        ("--n-hidden", "0", "1 to 16384"),
        ("--n-layers", "100", "1 to 64"),
        ("--batch-size", "1000000000", "2 to 65536"),
        ("--lr", "-1", "positive"),
        ("--lr", "nan", "positive"),
        ("--lr", "inf", "positive"),
        ("--weight-decay", "-1e-3", "0 or more"),
        ("--train-size", "0", "(0, 1]"),
        ("--dropout-rate", "1", "[0, 1)"),
        ("--max-steps", "0", "1 or more"),
        ("--max-epochs", "-3", "1 or more"),
    ] {
        refused(&["train", sm, "--out", o, flag, value], &[flag, range]);
    }
    refused(
        &["embed", o, sm, "--out", "z.npy", "--mc-samples", "0"],
        &["--mc-samples", "1 to 1000000"],
    );
    refused(
        &[
            "embed",
            o,
            sm,
            "--out",
            "z.npy",
            "--mc-samples",
            "1000000000000",
        ],
        &["--mc-samples", "1 to 1000000"],
    );
    refused(&["simulate", "--genes", "0", "--out", o], &["--genes"]);
    refused(
        &["convert", sm, o, "--n-top-genes", "0"],
        &["--n-top-genes"],
    );
    fails_with(
        &["simulate", "--cells", "1000000000000", "--out", o],
        &["1000000000000 cells", "memory", "available"],
    );
    fails_with(
        &[
            "simulate", "--cells", "10000000", "--genes", "200000", "--out", o,
        ],
        &["disk space", "free"],
    );
    fails_with(
        &["demo", "--cells", "100000000", "--genes", "100000"],
        &["memory"],
    );
    assert!(!out.exists());

    let warned = ok(&[
        "train",
        sm,
        "--out",
        o,
        "--quiet",
        "--max-epochs",
        "1",
        "--threads",
        "100000",
    ]);
    assert!(
        warned.contains("--threads 100000") && warned.contains("using"),
        "{warned}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// A named pipe, a socket or a device given as an input (or as a file inside a store, an MTX
/// folder, a model directory, or as --genes) is refused at once: reading it would block forever.
#[test]
fn special_files_are_refused_without_blocking() {
    let d = tmpdir("special");
    let fifo = d.join("pipe.h5ad");
    let mk = |p: &Path| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    };
    mk(&fifo);
    let out = d.join("out");
    let o = s(&out);
    let small = fixture("cli", "small.h5ad");
    let sm = s(&small);
    let t0 = std::time::Instant::now();
    fails_with(&["info", s(&fifo)], &["pipe.h5ad", "named pipe"]);
    fails_with(&["train", s(&fifo), "--out", o], &["named pipe"]);
    fails_with(&["info", "/dev/zero"], &["/dev/zero", "character device"]);
    fails_with(&["train", "/dev/stdin", "--out", o], &["/dev/stdin"]);
    let genes = d.join("genes.txt");
    mk(&genes);
    fails_with(
        &["convert", sm, o, "--genes", s(&genes)],
        &["genes.txt", "named pipe"],
    );
    // Inside a store and a model directory.
    let store = d.join("s.store");
    ok(&["convert", sm, s(&store)]);
    std::fs::remove_file(store.join("data.f32")).unwrap();
    mk(&store.join("data.f32"));
    fails_with(&["info", s(&store)], &["data.f32", "named pipe"]);
    let model = d.join("model");
    ok(&[
        "train",
        sm,
        "--out",
        s(&model),
        "--quiet",
        "--max-epochs",
        "1",
    ]);
    std::fs::remove_file(model.join("model.json")).unwrap();
    mk(&model.join("model.json"));
    fails_with(
        &["embed", s(&model), sm, "--out", s(&d.join("z.npy"))],
        &["model.json", "named pipe"],
    );
    assert!(t0.elapsed().as_secs() < 60, "a special file blocked");
    assert!(!out.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

/// An edit of a model.json.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

/// `model.json` edited to lie (sizes far beyond the weights, ranges broken, lists of the wrong
/// length), weights holding NaN, a damaged `split.json`: each is an error naming the file and the
/// field, before anything is allocated for the lie.
#[test]
fn model_files_that_lie_are_refused_naming_the_file() {
    let d = tmpdir("model");
    let small = fixture("cli", "small.h5ad");
    let sm = s(&small);
    let good = d.join("good");
    ok(&[
        "train",
        sm,
        "--out",
        s(&good),
        "--quiet",
        "--max-epochs",
        "1",
    ]);
    let z = d.join("z.npy");
    let copy = |name: &str| {
        let m = d.join(name);
        std::fs::create_dir_all(&m).unwrap();
        for f in [
            "model.json",
            "model.safetensors",
            "split.json",
            "history.csv",
        ] {
            std::fs::copy(good.join(f), m.join(f)).unwrap();
        }
        m
    };
    let edit_json = |m: &Path, f: &dyn Fn(&mut serde_json::Value)| {
        let p = m.join("model.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    let cases: Vec<(&str, Edit, &[&str])> = vec![
        (
            "n_latent",
            Box::new(|v| v["model"]["n_latent"] = 1_000_000_000_000u64.into()),
            &["model.json", "n_latent", "at most"],
        ),
        (
            "n_hidden",
            Box::new(|v| v["model"]["n_hidden"] = 0.into()),
            &["model.json", "n_hidden"],
        ),
        (
            "dropout",
            Box::new(|v| v["model"]["dropout_rate"] = 2.0.into()),
            &["model.json", "dropout_rate"],
        ),
        (
            "genes",
            Box::new(|v| v["model"]["n_input"] = 7.into()),
            &["model.json", "genes", "says 7"],
        ),
        (
            "consistent lie",
            Box::new(|v| {
                v["model"]["n_hidden"] = 16384.into();
                v["model"]["n_latent"] = 16384.into();
            }),
            &["model.safetensors", "do not belong together"],
        ),
        (
            "not json",
            Box::new(|v| *v = serde_json::Value::String("x".into())),
            &["model.json", "not a valid"],
        ),
    ];
    for (name, edit, needles) in cases {
        let m = copy(name);
        edit_json(&m, &*edit);
        fails_with(&["embed", s(&m), sm, "--out", s(&z)], needles);
    }
    // A NaN in the weights: the first value of the first tensor in the file's data section.
    let m = copy("nan");
    let p = m.join("model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    let header = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + header]).unwrap();
    let (name, start) = h
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, t)| t["dtype"] == "F32")
        .map(|(k, t)| (k.clone(), t["data_offsets"][0].as_u64().unwrap() as usize))
        .min_by_key(|(_, o)| *o)
        .unwrap();
    b[8 + header + start..8 + header + start + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&p, b).unwrap();
    fails_with(
        &["embed", s(&m), sm, "--out", s(&z)],
        &["model.safetensors", &name, "NaN"],
    );
    // A damaged split.json is named as such, not taken for a missing one.
    let m = copy("split");
    std::fs::write(m.join("split.json"), "{\"train_indices\": [1, 2").unwrap();
    fails_with(&["elbo", s(&m), sm], &["split.json", "not a valid"]);
    assert!(!z.exists());
    std::fs::remove_dir_all(&d).unwrap();
}

/// A Cell Ranger 2 file holding two genomes is refused without `--genome`, the error listing
/// them, as scanpy's read_10x_h5 refuses it; with `--genome` its genes are that genome's. A Cell
/// Ranger 3 file keeps every genome unless `--genome` picks one (fixtures and scanpy's reading of
/// them: scripts/fixtures/make_genome_fixtures.py).
#[test]
fn several_genomes_need_genome() {
    let d = tmpdir("genome");
    let legacy = fixture("tenx", "multiple_genomes.h5");
    let v3 = fixture("tenx", "v3_two_genomes.h5");
    let genes = |args: &[&str]| -> Vec<String> {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    fails_with(
        &["info", s(&legacy)],
        &[
            "multiple_genomes.h5",
            "2 genomes",
            "hg19_chr21",
            "another_genome",
            "--genome",
        ],
    );
    fails_with(
        &["train", s(&legacy), "--out", s(&d.join("m")), "--quiet"],
        &["--genome"],
    );
    fails_with(
        &["info", s(&legacy), "--genome", "mm9"],
        &["mm9", "hg19_chr21", "another_genome"],
    );
    let l = s(&legacy);
    assert_eq!(
        genes(&["info", l, "--genome", "another_genome", "--genes"]),
        ["M1", "M2"]
    );
    assert_eq!(
        genes(&["info", l, "--genome", "hg19_chr21", "--genes"]),
        ["H1", "H2", "H3"]
    );
    assert_eq!(genes(&["info", s(&v3), "--genes"]).len(), 5);
    assert_eq!(
        genes(&["info", s(&v3), "--genome", "mm10", "--genes"]),
        ["M1", "M2"]
    );
    fails_with(
        &["info", s(&v3), "--genome", "hg19"],
        &["hg19", "GRCh38", "mm10"],
    );
    let out = d.join("mm.store");
    ok(&["convert", l, s(&out), "--genome", "another_genome"]);
    assert_eq!(genes(&["info", s(&out), "--genes"]), ["M1", "M2"]);
    fails_with(
        &["info", s(&out), "--genome", "x"],
        &["--genome applies to 10x .h5"],
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// Repeated cell names and repeated categories are read with a warning (anndata warns about the
/// first; pandas cannot hold the second, so its repeats become one category).
#[test]
fn repeated_names_and_categories_warn() {
    let f = fixture("hostile", "duplicates.h5ad");
    let err = ok(&["info", s(&f)]);
    assert!(
        err.contains("cell names are not unique") && err.contains("'c0' at 0 and 2"),
        "{err}"
    );
    assert!(err.contains("obs/batch/categories repeats 'x'"), "{err}");
    let o = run(&["info", s(&f)]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["obs"][0]["categories"], serde_json::json!(["x", "y"]));
    assert_eq!(v["obs"][0]["counts"], serde_json::json!([3, 1]));
}

/// Under `--max-steps`, `cells_per_second` counts the cells trained, not the whole epoch's: one
/// step of 16 cells in an epoch of 216 training cells.
#[test]
fn cells_per_second_counts_only_cells_trained() {
    let d = tmpdir("cps");
    let m = d.join("m");
    let data = fixture("cli", "small.h5ad");
    ok(&[
        "train",
        s(&data),
        "--out",
        s(&m),
        "--max-steps",
        "1",
        "--batch-size",
        "16",
        "--quiet",
        "--device",
        "cpu",
    ]);
    let csv = std::fs::read_to_string(m.join("history.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let col = |name: &str| -> f64 {
        let i = header.iter().position(|h| *h == name).unwrap();
        row[i].parse().unwrap()
    };
    let cells = col("cells_per_second") * col("seconds");
    // `seconds` is written to 0.1 ms: the product is 16 give or take that rounding.
    assert!((10.0..24.0).contains(&cells), "{cells} cells in {csv}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Messages found unclear by scripts/fuzz/hostile.sh: each names the flag or the file and the
/// field, says what was expected, and says `error:` once.
#[test]
fn hostile_flags_name_themselves() {
    let d = tmpdir("flags");
    let data = fixture("cli", "small.h5ad");
    let out = d.join("o.store");
    let m = d.join("m");
    for (args, needles) in [
        (
            vec!["train", s(&data), "--out", s(&m), "--threads", "-1"],
            vec!["--threads", "whole number, 0 or more"],
        ),
        (
            vec!["train", s(&data), "--out", s(&m), "--seed", "1e12"],
            vec!["--seed", "whole number from 0 to"],
        ),
        (
            vec!["train", s(&data), "--out", s(&m), "--device", "gpu"],
            vec!["--device \"gpu\"", "expected auto, cpu, cuda or cuda:N"],
        ),
        (
            vec!["convert", s(&data), s(&out), "--genes", "nolist"],
            vec!["--genes nolist", "no such file or directory"],
        ),
        (
            vec!["simulate", "--out", s(&out), "--library-median", "1e12"],
            vec!["--library-median", "at most 10^7"],
        ),
    ] {
        fails_with(&args, &needles);
        assert!(!out.exists() && !m.exists());
    }
    std::fs::remove_dir_all(&d).unwrap();
}
