//! A fuzzing campaign: real inputs (fixtures, and a store and a model made from them), each case
//! one mutated input in a folder of its own and one command run on it in a child process. Cases
//! that end badly (a panic, an abort, a hang, a strange exit status, a partial output) are kept
//! in `target/fuzz-findings/`, in the form of the regression corpus (`tests/fixtures/fuzz/`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::child::{self, Outcome, Ran};
use crate::common::files::fixture;
use crate::mutate::{self, Elem, Rng};

/// How long one command may run before it counts as a hang (the inputs are tiny: a clean run
/// takes well under a second).
pub const CASE_TIMEOUT: Duration = Duration::from_secs(20);

/// A model small and quick to train (two steps), on one thread so that workers do not contend.
pub const SMALL_MODEL: [&str; 10] = [
    "--max-steps",
    "2",
    "--n-hidden",
    "8",
    "--n-latent",
    "2",
    "--device",
    "cpu",
    "--threads",
    "1",
];

/// The real inputs that mutations start from.
pub struct Seeds {
    pub h5ad: Vec<PathBuf>,
    pub tenx_h5: Vec<PathBuf>,
    pub mtx: Vec<PathBuf>,
    pub store: PathBuf,
    pub model: PathBuf,
    /// The cells the model was trained on, unmutated (to embed with a mutated model).
    pub data: PathBuf,
}

impl Seeds {
    /// The fixtures, and a store and a small model made from `cli/small.h5ad` in `scratch`.
    pub fn make(scratch: &Path) -> Seeds {
        let data = fixture("cli", "small.h5ad");
        let store = scratch.join("seed.store");
        let model = scratch.join("seed-model");
        for args in [
            vec!["convert", p(&data), p(&store)],
            [
                vec!["train", p(&data), "--out", p(&model), "--quiet"],
                SMALL_MODEL.to_vec(),
            ]
            .concat(),
        ] {
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let r = child::run(&args, scratch, &scratch.join("none"), CASE_TIMEOUT);
            assert_eq!(r.outcome, Outcome::Ok, "{args:?}: {}", r.stderr);
        }
        let h5ad = [
            ("cli", "small.h5ad"),
            ("cli", "dense_int.h5ad"),
            ("h5ad", "csc.h5ad"),
            ("h5ad", "dense.h5ad"),
            ("h5ad", "variants.h5ad"),
            ("h5ad", "layer_counts.h5ad"),
            ("fuzz_seeds", "chunked_gzip.h5ad"),
            ("hostile", "duplicates.h5ad"),
        ];
        Seeds {
            h5ad: h5ad
                .iter()
                .map(|(d, n)| fixture(d, n))
                .filter(|p| p.exists())
                .collect(),
            tenx_h5: ["v2.h5", "v3.h5", "multiple_genomes.h5", "v3_two_genomes.h5"]
                .iter()
                .map(|n| fixture("tenx", n))
                .collect(),
            mtx: vec![fixture("tenx", "mtx_v2"), fixture("tenx", "mtx_v3")],
            store,
            model,
            data,
        }
    }
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Copy a file or a folder (recursively).
pub fn copy(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            copy(&e.path(), &to.join(e.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

/// Mutate the file `path` in place, by its kind; what was done, in words.
fn mutate_file(rng: &mut Rng, path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let mut b = std::fs::read(path).unwrap();
    let aware = rng.below(10) < 7;
    let what = if !aware {
        mutate::bytes(rng, &mut b)
    } else if name.ends_with(".json") {
        mutate::json(rng, &mut b)
    } else if let Some(e) = Elem::of(&name) {
        mutate::array(rng, &mut b, e)
    } else if name.ends_with(".safetensors") {
        mutate::safetensors(rng, &mut b)
    } else if [".mtx", ".tsv", ".csv"].iter().any(|x| name.ends_with(x)) {
        mutate::text(rng, &mut b)
    } else if name.ends_with(".h5") || name.ends_with(".h5ad") {
        mutate::lying_number(rng, &mut b)
    } else {
        mutate::bytes(rng, &mut b)
    };
    std::fs::write(path, b).unwrap();
    format!("{name}: {what}")
}

/// A file of a folder input to mutate.
fn file_in(rng: &mut Rng, dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    rng.pick(&files).clone()
}

/// The commands that read a data input `x` (relative to the case folder; the model is `model`).
fn data_commands(x: &str, store: bool) -> Vec<Vec<String>> {
    let mut c: Vec<Vec<&str>> = vec![
        vec!["info", x],
        vec!["info", x, "--genes"],
        vec!["convert", x, "out/o.store"],
        vec!["convert", x, "out/o.h5ad"],
        vec!["convert", x, "out/o.store", "--n-top-genes", "5"],
        [
            vec!["train", x, "--out", "out/m", "--quiet"],
            SMALL_MODEL.to_vec(),
        ]
        .concat(),
        vec![
            "embed",
            "model",
            x,
            "--out",
            "out/z.npy",
            "--mc-samples",
            "3",
            "--device",
            "cpu",
            "--threads",
            "1",
        ],
        vec!["elbo", "model", x, "--device", "cpu", "--threads", "1"],
    ];
    if store {
        c.push(vec!["info", x, "--verify"]);
    }
    c.into_iter()
        .map(|v| v.into_iter().map(str::to_string).collect())
        .collect()
}

/// One case prepared in `dir`: the command, and what was mutated.
fn prepare(rng: &mut Rng, seeds: &Seeds, dir: &Path) -> (Vec<String>, String) {
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let kind = rng.below(100);
    let (x, store, what) = if kind < 35 {
        let src = rng.pick(&seeds.h5ad).clone();
        copy(&src, &dir.join("in.h5ad"));
        let w = mutate_file(rng, &dir.join("in.h5ad"));
        ("in.h5ad", false, format!("{}: {w}", src.display()))
    } else if kind < 55 {
        let src = rng.pick(&seeds.tenx_h5).clone();
        copy(&src, &dir.join("in.h5"));
        let w = mutate_file(rng, &dir.join("in.h5"));
        ("in.h5", false, format!("{}: {w}", src.display()))
    } else if kind < 65 {
        let src = rng.pick(&seeds.mtx).clone();
        copy(&src, &dir.join("in_mtx"));
        let f = file_in(rng, &dir.join("in_mtx"));
        let w = mutate_file(rng, &f);
        ("in_mtx", false, format!("{}: {w}", src.display()))
    } else if kind < 85 {
        copy(&seeds.store, &dir.join("in.store"));
        let f = file_in(rng, &dir.join("in.store"));
        let w = mutate_file(rng, &f);
        ("in.store", true, format!("store: {w}"))
    } else {
        // A mutated model, used on the cells it was trained on.
        copy(&seeds.model, &dir.join("model"));
        copy(&seeds.data, &dir.join("data.h5ad"));
        let f = file_in(rng, &dir.join("model"));
        let w = mutate_file(rng, &f);
        let cmds = data_commands("data.h5ad", false);
        let args = rng.pick(&cmds[6..]).clone();
        return (args, format!("model: {w}"));
    };
    let cmds = data_commands(x, store);
    let args = rng.pick(&cmds).clone();
    if args[0] == "embed" || args[0] == "elbo" {
        copy(&seeds.model, &dir.join("model"));
    }
    (args, what)
}

/// What a campaign saw.
#[derive(Default, Debug)]
pub struct Tally {
    pub cases: usize,
    pub ok: usize,
    pub clean_errors: usize,
    pub unclear_errors: usize,
    pub panics: usize,
    pub aborts: usize,
    pub hangs: usize,
    pub other_exits: usize,
    pub partial_outputs: usize,
    /// Folders (under the findings folder) of the cases that ended badly.
    pub findings: Vec<PathBuf>,
    /// Error messages that say `error:` other than once, one example each.
    pub unclear: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, r: &Ran) {
        self.cases += 1;
        match r.outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::CleanError => self.clean_errors += 1,
            Outcome::UnclearError => {
                self.unclear_errors += 1;
                if self.unclear.len() < 20 {
                    self.unclear.push(r.stderr.trim().to_string());
                }
            }
            Outcome::Panic => self.panics += 1,
            Outcome::Abort(_) => self.aborts += 1,
            Outcome::Hang => self.hangs += 1,
            Outcome::OtherExit(_) => self.other_exits += 1,
        }
        if r.partial.is_some() {
            self.partial_outputs += 1;
        }
    }

    /// Cases that ended badly (what must be zero).
    pub fn bad(&self) -> usize {
        self.panics + self.aborts + self.hangs + self.other_exits + self.partial_outputs
    }
}

/// Keep a case that ended badly as `findings/<name>/` in the corpus's form: the case's files,
/// `args.txt` (one argument a line), `why.txt`.
pub fn keep_finding(
    case: &Path,
    findings: &Path,
    name: &str,
    args: &[String],
    why: &str,
) -> PathBuf {
    let to = findings.join(name);
    let _ = std::fs::remove_dir_all(&to);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(case).unwrap().flatten() {
        if e.file_name() != "out" {
            copy(&e.path(), &to.join(e.file_name()));
        }
    }
    std::fs::write(to.join("args.txt"), args.join("\n") + "\n").unwrap();
    std::fs::write(to.join("why.txt"), why).unwrap();
    to
}

/// Run up to `max_cases` cases (or until `budget` has passed) from `seed` on `workers` threads,
/// in `scratch`; findings go to `findings`.
pub fn run(
    seeds: &Seeds,
    seed: u64,
    max_cases: usize,
    budget: Duration,
    workers: usize,
    scratch: &Path,
    findings: &Path,
) -> Tally {
    let start = Instant::now();
    let next = AtomicUsize::new(0);
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for w in 0..workers {
            let (next, tally) = (&next, &tally);
            s.spawn(move || loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= max_cases || start.elapsed() > budget {
                    break;
                }
                // One generator per case: a case is replayed from (seed, n) alone.
                let mut rng = Rng::new(seed ^ (n as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
                let dir = scratch.join(format!("w{w}"));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                let (args, what) = prepare(&mut rng, seeds, &dir);
                let r = child::run(&args, &dir, &dir.join("out"), CASE_TIMEOUT);
                let mut t = tally.lock().unwrap();
                t.add(&r);
                if !r.is_clean() || r.outcome == Outcome::UnclearError {
                    let why = format!(
                        "seed {seed} case {n}\nmutation: {what}\noutcome: {:?}\npartial: {:?}\nstderr:\n{}",
                        r.outcome, r.partial, r.stderr
                    );
                    let f = keep_finding(&dir, findings, &format!("s{seed}-c{n}"), &args, &why);
                    t.findings.push(f);
                }
            });
        }
    });
    tally.into_inner().unwrap()
}
