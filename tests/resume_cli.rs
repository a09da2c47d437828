//! Checkpoints and `train --resume` through the binary: Ctrl-C (SIGINT) mid-run exits 130 with a
//! checkpoint and the resume command, and the resumed run ends with the model of a run that never
//! stopped, bit for bit, from an `.h5ad` and from a store (resumed from the `.h5ad` it was
//! converted from); a process killed (SIGKILL) while writing a checkpoint, at a chosen write or at
//! random moments, resumes from what it left; `--resume` refuses a directory without a
//! checkpoint, a checkpoint of another format version, and data whose genes, batches or counts
//! differ; a directory holding only a checkpoint is not taken for a trained model.

mod common;

use common::files::{fixture, listing, tmpdir};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KILL_HOOK: &str = "SCVI_RS_TEST_KILL_IN_CHECKPOINT";

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scvi-rs"))
}

fn run(args: &[&str]) -> Output {
    exe().args(args).output().expect("run scvi-rs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "failed:\n{}", stderr(o));
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let o = run(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}:\n{err}");
    assert!(!err.contains("panicked"), "{args:?}:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: no '{n}' in:\n{err}");
    }
}

/// `train DATA --out OUT` with the test's flags (threads and seed fixed) plus `extra`; the batch
/// key is the simulated data's `batch`, or `stim` for the committed small.h5ad.
fn train_args<'a>(
    data: &'a Path,
    out: &'a Path,
    epochs: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let key = if data.ends_with("small.h5ad") {
        "stim"
    } else {
        "batch"
    };
    let mut a = vec![
        "train",
        s(data),
        "--out",
        s(out),
        "--batch-key",
        key,
        "--max-epochs",
        epochs,
        "--threads",
        "2",
        "--seed",
        "5",
        "--quiet",
    ];
    a.extend_from_slice(extra);
    a
}

/// The files that must be equal between a resumed and an uninterrupted run: the weights, the
/// split, the model's description, and the history less its timings.
fn outcome(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for f in ["model.safetensors", "split.json", "model.json"] {
        out.push((f.to_string(), std::fs::read(dir.join(f)).unwrap()));
    }
    let hist = std::fs::read_to_string(dir.join("history.csv")).unwrap();
    let losses: String = hist
        .lines()
        .map(|l| l.split(',').take(12).collect::<Vec<_>>().join(",") + "\n")
        .collect();
    out.push(("history.csv (losses)".into(), losses.into_bytes()));
    out
}

fn assert_same_run(got: &Path, want: &Path) {
    for ((name, a), (_, b)) in outcome(got).iter().zip(outcome(want).iter()) {
        assert!(
            a == b,
            "{name} of the resumed run differs from the uninterrupted run's"
        );
    }
    assert_eq!(
        listing(got).len(),
        4,
        "a finished run leaves the model's four files: {:?}",
        listing(got)
    );
}

/// Simulated data big enough that a run lasts a few seconds.
fn simulated(d: &Path) -> PathBuf {
    let p = d.join("sim.h5ad");
    ok(&run(&[
        "simulate",
        "--cells",
        "3000",
        "--genes",
        "300",
        "--seed",
        "2",
        "--out",
        s(&p),
    ]));
    p
}

/// Start `args`, wait until training has begun (the header line), let it run `after`, then send
/// SIGINT; return its output.
fn interrupt_after(args: &[&str], after: Duration) -> Output {
    let mut child: Child = exe()
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert!(first.contains("epochs on"), "unexpected start: {first}");
    std::thread::sleep(after);
    // SAFETY: kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let mut o = child.wait_with_output().unwrap();
    o.stderr = (first + &rest).into_bytes();
    o
}

/// Ctrl-C mid-run, then `--resume` (with `resume_data` as the data when given).
fn sigint_then_resume(data: &Path, want: &Path, got: &Path, resume_data: Option<&Path>) {
    let o = interrupt_after(
        &train_args(data, got, "40", &[]),
        Duration::from_millis(1200),
    );
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(130),
        "exit status after SIGINT:\n{err}"
    );
    assert!(
        err.contains("checkpoint written to")
            && err.contains(&format!("resume with: scvi-rs train --resume {}", s(got))),
        "the message must say how to resume:\n{err}"
    );
    assert_eq!(listing(got), ["checkpoint.safetensors"]);
    // Not a trained model yet.
    let z = got.with_extension("npy");
    fails_with(
        &["embed", s(got), s(data), "--out", s(&z)],
        &["training did not finish", "train --resume"],
    );
    let mut args = vec!["train", "--resume", s(got), "--threads", "2", "--quiet"];
    if let Some(p) = resume_data {
        args.insert(3, s(p));
    }
    let o = run(&args);
    ok(&o);
    assert!(stderr(&o).contains("resuming"), "{}", stderr(&o));
    assert_same_run(got, want);
}

#[test]
fn sigint_then_resume_equals_an_uninterrupted_run_from_h5ad_and_store() {
    let d = tmpdir("resume_cli", "sigint");
    let h5ad = simulated(&d);
    let want = d.join("want");
    ok(&run(&train_args(&h5ad, &want, "40", &[])));
    sigint_then_resume(&h5ad, &want, &d.join("got"), None);

    // From a store; resumed from the .h5ad it came from (the same counts, found by content).
    let store = d.join("sim.store");
    ok(&run(&["convert", s(&h5ad), s(&store)]));
    let want_store = d.join("want_store");
    ok(&run(&train_args(&store, &want_store, "40", &[])));
    assert_same_run(&want_store, &want);
    sigint_then_resume(&store, &want_store, &d.join("got_store"), Some(&h5ad));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn killed_while_writing_a_checkpoint_resumes_from_the_one_before() {
    let d = tmpdir("resume_cli", "killed");
    let small = fixture("cli", "small.h5ad");
    let args = |out: &Path| {
        let a = train_args(&small, out, "6", &["--checkpoint-every", "1"]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let want = d.join("want");
    ok(&exe().args(args(&want)).output().unwrap());

    // Killed in the middle of the third checkpoint: the second (after epoch 2) stands.
    let got = d.join("got");
    let o = exe().args(args(&got)).env(KILL_HOOK, "3").output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(libc::SIGKILL), "{}", stderr(&o));
    let left = listing(&got);
    assert!(
        left.contains(&"checkpoint.safetensors".to_string()),
        "{left:?}"
    );
    assert!(
        left.iter().any(|n| n.starts_with(".scvi-rs-tmp.")),
        "the half-written temporary: {left:?}"
    );
    let o = run(&["train", "--resume", s(&got), "--threads", "2", "--quiet"]);
    ok(&o);
    assert!(stderr(&o).contains("epoch 3 of 6"), "{}", stderr(&o));
    assert_same_run(&got, &want);

    // Killed while writing the first: no directory yet, nothing to resume; a new run starts
    // over (the dead run's temporary is cleaned up).
    let first = d.join("first");
    let o = exe()
        .args(args(&first))
        .env(KILL_HOOK, "1")
        .output()
        .unwrap();
    assert_eq!(o.status.signal(), Some(libc::SIGKILL));
    assert!(!first.exists());
    fails_with(&["train", "--resume", s(&first)], &["not a directory"]);
    ok(&exe().args(args(&first)).output().unwrap());
    assert_same_run(&first, &want);
    assert_eq!(
        listing(&d)
            .iter()
            .filter(|n| n.starts_with(".scvi-rs"))
            .count(),
        0
    );
    std::fs::remove_dir_all(&d).ok();
}

/// SIGKILL at random moments of a run that checkpoints every epoch, resuming each time from what
/// is left (or starting over when nothing is), until it finishes: the same model.
#[test]
fn killed_at_random_moments_ends_with_the_same_model() {
    let (_, mut rng) = common::seeded("killed_at_random_moments_ends_with_the_same_model");
    let d = tmpdir("resume_cli", "random-kills");
    let data = simulated(&d);
    let want = d.join("want");
    let epochs = "16";
    ok(&run(&train_args(&data, &want, epochs, &[])));
    let got = d.join("got");
    let (mut kills, mut from_checkpoint) = (0, 0);
    // Resume from the checkpoint when there is one, else start over.
    let (g, dt) = (&got, &data);
    let next = move || -> (bool, Vec<&str>) {
        match g.join("checkpoint.safetensors").exists() {
            true => (
                true,
                vec!["train", "--resume", s(g), "--threads", "2", "--quiet"],
            ),
            false => (
                false,
                train_args(dt, g, epochs, &["--checkpoint-every", "1"]),
            ),
        }
    };
    for _ in 0..40 {
        let (resume, args) = next();
        if got.join("model.json").exists() {
            break;
        }
        let mut child = exe().args(&args).stderr(Stdio::null()).spawn().unwrap();
        let t0 = Instant::now();
        let wait = Duration::from_millis(150 + (rng.uniform() * 550.0) as u64);
        while t0.elapsed() < wait && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
            from_checkpoint += resume as usize;
        }
        child.wait().unwrap();
    }
    println!("{kills} kills, {from_checkpoint} of them of resumed runs");
    // On a loaded machine a run may not get past its start-up within the kill windows: the
    // last run goes on to the end, from whatever the kills left.
    if !got.join("model.json").exists() {
        ok(&run(&next().1));
    }
    assert!(got.join("model.json").exists(), "the run never finished");
    assert!(kills > 0, "no run was killed: make the runs longer");
    assert_same_run(&got, &want);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn resume_refuses_what_it_cannot_continue() {
    let d = tmpdir("resume_cli", "refusals");
    let small = fixture("cli", "small.h5ad");
    // A checkpoint after epoch 1: the process is killed writing the second.
    let ck = d.join("ck");
    let a = train_args(&small, &ck, "6", &["--checkpoint-every", "1"]);
    let o = exe().args(&a).env(KILL_HOOK, "2").output().unwrap();
    assert!(!o.status.success());
    // Data that is not the run's.
    let resume_on = |data: &str, needles: &[&str]| {
        fails_with(
            &["train", "--resume", s(&ck), s(&fixture("cli", data))],
            needles,
        )
    };
    resume_on("other_genes.h5ad", &["genes differ", "other_5"]);
    resume_on("new_batch.h5ad", &["batch 'NEW'"]);
    resume_on(
        "zero_cell.h5ad",
        &["counts differ", "resume with the run's data"],
    );
    // Run flags come from the checkpoint; --out is the directory itself.
    let o = run(&["train", "--resume", s(&ck), "--max-epochs", "9"]);
    // A flag the parser refuses exits 1, like every other error (src/main.rs).
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot be used with"));
    fails_with(
        &["train", "--resume", s(&ck), "--checkpoint-every", "0"],
        &["--checkpoint-every must be at least 1"],
    );
    // No checkpoint: a finished model, a foreign folder.
    let done = d.join("done");
    ok(&run(&train_args(&small, &done, "2", &[])));
    fails_with(
        &["train", "--resume", s(&done)],
        &["training finished", "nothing to resume"],
    );
    fails_with(
        &["train", "--resume", s(&d)],
        &["no checkpoint.safetensors"],
    );
    // Another format version.
    let path = ck.join("checkpoint.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = br#"\"format_version\":1"#;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at + needle.len() - 1] = b'2';
    std::fs::write(&path, &bytes).unwrap();
    fails_with(
        &["train", "--resume", s(&ck)],
        &["checkpoint format version 2", "checkpoint.safetensors"],
    );
    // A directory holding a checkpoint may be replaced by a new run only with --force.
    let mut a = train_args(&small, &ck, "2", &[]);
    fails_with(&a, &["already exists", "--force"]);
    a.push("--force");
    ok(&run(&a));
    std::fs::remove_dir_all(&d).ok();
}
