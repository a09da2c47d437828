//! Fuzzing scvi-rs through its command line, on stable Rust: real inputs mutated byte by byte and
//! by their structure (numbers that lie in HDF5 files and MTX headers, absurd JSON fields in store
//! headers and model files, store arrays with out-of-range indices and non-finite counts,
//! safetensors that lie), each run through a command in a child process so that panics, aborts,
//! hangs and partial outputs are all seen. The regression corpus `tests/fixtures/fuzz/` holds every
//! input that ever ended badly; `scripts/fuzz/long.sh` runs for hours, `scripts/fuzz/hostile.sh`
//! prints the closing table (hostile inputs and a fuzz run).
//!
//! Environment: `SCVI_RS_FUZZ_SEED` (default fixed, as every test's), `SCVI_RS_FUZZ_CASES`,
//! `SCVI_RS_FUZZ_SECONDS`.

#[path = "../common/mod.rs"]
mod common;

mod campaign;
mod child;
mod hostile;
mod mutate;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use campaign::{Seeds, Tally};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where kept cases go: `target/fuzz-findings/` (outside the source tree; promote a case to the
/// corpus by copying its folder into `tests/fixtures/fuzz/`).
fn findings_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-findings")
}

fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

fn print_tally(what: &str, t: &Tally, secs: f64) {
    eprintln!(
        "{what}: {} cases in {secs:.0} s: {} ran, {} clean errors, {} errors said other than once, \
         {} panics, {} aborts, {} hangs, {} other exits, {} partial outputs",
        t.cases,
        t.ok,
        t.clean_errors,
        t.unclear_errors,
        t.panics,
        t.aborts,
        t.hangs,
        t.other_exits,
        t.partial_outputs
    );
    for f in &t.findings {
        eprintln!("  finding: {}", f.display());
    }
    for u in &t.unclear {
        eprintln!("  error said other than once:\n{u}");
    }
}

/// A fuzz campaign of `cases` cases or `secs` seconds, whichever ends first.
fn campaign(name: &str, seed: u64, cases: usize, secs: u64) -> (Tally, f64) {
    let scratch = common::files::tmpdir("fuzz", name);
    let seeds = Seeds::make(&scratch);
    let start = Instant::now();
    let t = campaign::run(
        &seeds,
        seed,
        cases,
        Duration::from_secs(secs),
        workers(),
        &scratch,
        &findings_dir(),
    );
    let secs = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&scratch);
    (t, secs)
}

/// A campaign whose seed, case count and seconds come from the environment (else the defaults),
/// its tally printed.
fn seeded_campaign(name: &str, seed: u64, cases: usize, secs: u64) -> (Tally, f64) {
    let seed = env_or("SCVI_RS_FUZZ_SEED", seed);
    let (t, secs) = campaign(
        name,
        seed,
        env_or("SCVI_RS_FUZZ_CASES", cases),
        env_or("SCVI_RS_FUZZ_SECONDS", secs),
    );
    print_tally(&format!("fuzz {name} (seed {seed})"), &t, secs);
    (t, secs)
}

/// The short run of the test suite: a few thousand cases in under two minutes. Every case must
/// end in a result or one clean error, with nothing left behind.
#[test]
fn fuzz_short() {
    let (t, secs) = seeded_campaign("short", 15, 2000, 90);
    assert!(t.cases >= 200, "only {} cases ran in {secs:.0} s", t.cases);
    assert_eq!(t.bad(), 0, "cases ended badly: see the findings above");
    assert_eq!(
        t.unclear_errors, 0,
        "errors said other than once: see above"
    );
}

/// The long run (`scripts/fuzz/long.sh`): hours, a fresh seed unless one is given.
#[test]
#[ignore = "hours long: scripts/fuzz/long.sh"]
fn fuzz_long() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let (t, _) = seeded_campaign("long", now, usize::MAX, 3600);
    assert_eq!(t.bad() + t.unclear_errors, 0, "see the findings above");
}

/// Every input that ever ended badly (`tests/fixtures/fuzz/<case>/`: the input files and
/// `args.txt`, one argument a line, run in a copy of the folder with an empty `out/`) now ends in
/// a result or one clean error, with nothing left behind.
#[test]
fn fuzz_corpus_regressions() {
    let corpus = common::files::fixture("fuzz", "");
    let scratch = common::files::tmpdir("fuzz", "corpus");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("args.txt").exists())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no corpus in {}", corpus.display());
    for c in &cases {
        let dir = scratch.join(c.file_name().unwrap());
        campaign::copy(c, &dir);
        std::fs::create_dir_all(dir.join("out")).unwrap();
        let args: Vec<String> = std::fs::read_to_string(c.join("args.txt"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        let r = child::run(&args, &dir, &dir.join("out"), campaign::CASE_TIMEOUT);
        assert!(
            r.is_clean() && r.outcome != child::Outcome::UnclearError,
            "{}: {:?}, partial {:?}:\n{}",
            c.display(),
            r.outcome,
            r.partial,
            r.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The closing table (`scripts/fuzz/hostile.sh`): every hostile input and flag, then a fuzz run,
/// with the clean errors whose message names neither a file nor a flag listed for reading.
#[test]
#[ignore = "minutes long: scripts/fuzz/hostile.sh"]
fn hostile_table() {
    let scratch = common::files::tmpdir("fuzz", "hostile");
    let seeds = Seeds::make(&scratch);
    let start = Instant::now();
    let mut h = Tally::default();
    let unnamed = hostile::run(&seeds, &scratch, &findings_dir(), &mut h);
    let hsecs = start.elapsed().as_secs_f64();
    print_tally("hostile inputs and flags", &h, hsecs);
    for u in &unnamed {
        eprintln!("  names neither file nor flag: {u}");
    }
    let seed = env_or("SCVI_RS_FUZZ_SEED", 15u64);
    let (f, fsecs) = seeded_campaign("table", 15, 3000, 600);
    let row = |name: &str, t: &Tally| {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            t.cases,
            t.clean_errors + t.unclear_errors,
            t.ok,
            t.panics,
            t.aborts + t.other_exits,
            t.hangs,
            t.partial_outputs
        )
    };
    println!(
        "\n| inputs | tried | clean errors | ran | panics | aborts | hangs | partial outputs |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    row("hostile inputs and flags", &h);
    row(&format!("fuzz cases (seed {seed}, {fsecs:.0} s)"), &f);
    println!(
        "\nfuzz findings: {} (kept in {}); clean errors naming neither file nor flag: {}; errors \
         said other than once: {}",
        f.findings.len() + h.findings.len(),
        findings_dir().display(),
        unnamed.len(),
        h.unclear_errors + f.unclear_errors
    );
    let _ = std::fs::remove_dir_all(&scratch);
    assert_eq!(
        h.bad() + f.bad(),
        0,
        "cases ended badly: see the findings above"
    );
}
