//! Hostile input through the command line: corrupt stores, lying sizes, absurd flags, special
//! files, nonsense values. Every case must end with exit status 1, one clear message naming the
//! file (or the flag) and the field, no panic, and no output left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::files::fixture;

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

/// Overwrite the `k`-th 4-byte entry of a store's matrix file `file` with `bytes`.
fn poke(store: &Path, file: &str, k: usize, bytes: [u8; 4]) {
    let p = store.join(file);
    let mut b = std::fs::read(&p).unwrap();
    b[k * 4..k * 4 + 4].copy_from_slice(&bytes);
    std::fs::write(p, b).unwrap();
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
