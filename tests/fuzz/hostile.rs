//! The hostile inputs and flags a careful user could throw at scvi-rs on purpose: every fixture
//! through every command, absurd values of every numeric flag, special files, corrupted stores,
//! model files that lie, and outputs that must not be touched. Each one runs like a fuzz case
//! (child process, classified outcome, output folder checked) and lands in the same tally.

use std::path::{Path, PathBuf};

use crate::campaign::{copy, Seeds, Tally, CASE_TIMEOUT, SMALL_MODEL};
use crate::child::{self, Outcome};
use crate::common::files::fixture;

/// Lays out a case's folder (its inputs, the model) from the seeds.
type Prepare = Box<dyn Fn(&Path, &Seeds)>;

/// One hostile case: how to lay out its folder, and the command run in it.
pub struct Case {
    pub label: String,
    pub prepare: Prepare,
    pub args: Vec<String>,
}

fn case(label: String, args: &[&str], prepare: impl Fn(&Path, &Seeds) + 'static) -> Case {
    Case {
        label,
        prepare: Box::new(prepare),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

/// Every command that reads a data input `x` (the model is `model`, outputs go under `out/`).
fn commands(x: &str) -> Vec<Vec<String>> {
    let mut train = vec!["train", x, "--quiet", "--out", "out/m"];
    train.extend(SMALL_MODEL);
    [
        vec!["info", x],
        vec!["convert", x, "out/o.store"],
        vec!["convert", x, "out/o.h5ad"],
        vec!["convert", x, "out/o.store", "--n-top-genes", "5"],
        train,
        vec![
            "embed",
            "model",
            x,
            "--out",
            "out/z.csv",
            "--mc-samples",
            "3",
            "--device",
            "cpu",
        ],
        vec!["elbo", "model", x, "--device", "cpu"],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(str::to_string).collect())
    .collect()
}

fn with_model(dir: &Path, seeds: &Seeds) {
    copy(&seeds.model, &dir.join("model"));
}

fn data(dir: &Path, seeds: &Seeds) {
    copy(&seeds.data, &dir.join("data.h5ad"));
}

/// Overwrite element `k` of the store array `file` (in `dir/in.store`) with `bytes`.
fn poke(dir: &Path, file: &str, k: usize, bytes: &[u8]) {
    let p = dir.join("in.store").join(file);
    let mut b = std::fs::read(&p).unwrap();
    let at = k * bytes.len();
    b[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(p, b).unwrap();
}

/// Edit a JSON file in place.
fn edit_json(p: &Path, f: impl Fn(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// Every hostile case.
pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();

    // Every fixture (good, odd and hostile) through every command.
    let mut inputs: Vec<PathBuf> = Vec::new();
    for d in ["h5ad", "hostile", "tenx", "cli", "fuzz_seeds"] {
        if let Ok(rd) = std::fs::read_dir(fixture(d, "")) {
            let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            v.sort();
            inputs.extend(v);
        }
    }
    for input in inputs {
        let name = input.file_name().unwrap().to_string_lossy().to_string();
        for args in commands(&name) {
            let (i, n) = (input.clone(), name.clone());
            let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            out.push(case(
                format!("fixture {name}: {}", args[0]),
                &a,
                move |d, s| {
                    copy(&i, &d.join(&n));
                    with_model(d, s);
                },
            ));
        }
    }

    // Every numeric flag with values that make no sense.
    let values = [
        "-1",
        "0",
        "1e12",
        "nan",
        "inf",
        "abc",
        "",
        "99999999999999999999",
    ];
    let train_flags = [
        "--lr",
        "--weight-decay",
        "--train-size",
        "--batch-size",
        "--n-latent",
        "--n-hidden",
        "--n-layers",
        "--dropout-rate",
        "--max-epochs",
        "--max-steps",
        "--threads",
        "--seed",
        "--n-epochs-kl-warmup",
        "--early-stopping-patience",
        "--early-stopping-min-delta",
    ];
    for flag in train_flags {
        for v in values {
            let mut a = vec!["train", "data.h5ad", flag, v, "--device", "cpu", "--quiet"];
            if flag != "--max-steps" && flag != "--max-epochs" {
                a.extend(["--max-steps", "2"]);
            }
            if flag != "--n-hidden" {
                a.extend(["--n-hidden", "8"]);
            }
            a.extend(["--out", "out/m"]);
            out.push(case(format!("train {flag} {v:?}"), &a, data));
        }
    }
    for (cmd, flag) in [
        ("embed", "--mc-samples"),
        ("embed", "--threads"),
        ("elbo", "--seed"),
        ("elbo", "--subset"),
        ("embed", "--device"),
    ] {
        for v in values.iter().chain(&["cuda:99", "gpu", "train"]) {
            let mut a = vec![cmd, "model", "data.h5ad", flag, v];
            if cmd == "embed" {
                a.extend(["--out", "out/z.npy"]);
            }
            out.push(case(format!("{cmd} {flag} {v:?}"), &a, |d, s| {
                with_model(d, s);
                data(d, s);
            }));
        }
    }
    type Prep = fn(&Path, &Seeds);
    let by_flag: [(&[&str], &[&str], Prep); 2] = [
        (
            &["convert", "data.h5ad", "out/o.store"],
            &[
                "--n-top-genes",
                "--chunk-rows",
                "--genes",
                "--layer",
                "--genome",
                "--hvg-batch-key",
            ],
            data,
        ),
        (
            &["simulate", "--out", "out/s.store"],
            &[
                "--cells",
                "--genes",
                "--batches",
                "--cell-types",
                "--library-median",
                "--seed",
            ],
            |_, _| {},
        ),
    ];
    for (cmd, flags, prep) in by_flag {
        for flag in flags {
            for v in values {
                let a = [cmd, &[*flag, v][..]].concat();
                out.push(case(format!("{} {flag} {v:?}", cmd[0]), &a, prep));
            }
        }
    }

    // Special files and missing ones, as inputs.
    let specials: [(&str, &str); 8] = [
        ("/dev/null", "device"),
        ("/dev/zero", "device"),
        ("fifo", "named pipe"),
        ("emptydir", "empty folder"),
        ("missing.h5ad", "missing file"),
        ("empty.h5ad", "empty file"),
        ("dangling", "dangling link"),
        ("loop", "link loop"),
    ];
    for (x, what) in specials {
        for args in commands(x) {
            let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            out.push(case(format!("{what}: {}", args[0]), &a, |d, s| {
                with_model(d, s);
                let c = std::ffi::CString::new(d.join("fifo").to_str().unwrap()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
                std::fs::create_dir_all(d.join("emptydir")).unwrap();
                std::fs::write(d.join("empty.h5ad"), b"").unwrap();
                let _ = std::os::unix::fs::symlink(d.join("nowhere"), d.join("dangling"));
                let _ = std::os::unix::fs::symlink(d.join("loop"), d.join("loop"));
            }));
        }
    }

    // Stores damaged after they were written.
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 12] = [
        ("index past the genes", |d| {
            poke(d, "indices.u32", 3, &40u32.to_le_bytes())
        }),
        ("index u32::MAX", |d| {
            poke(d, "indices.u32", 0, &u32::MAX.to_le_bytes())
        }),
        ("repeated index", |d| {
            let b = std::fs::read(d.join("in.store/indices.u32")).unwrap();
            poke(d, "indices.u32", 1, &b[0..4])
        }),
        ("NaN count", |d| {
            poke(d, "data.f32", 5, &f32::NAN.to_le_bytes())
        }),
        ("negative count", |d| {
            poke(d, "data.f32", 5, &(-3f32).to_le_bytes())
        }),
        ("infinite count", |d| {
            poke(d, "data.f32", 5, &f32::INFINITY.to_le_bytes())
        }),
        ("count 1e30", |d| {
            poke(d, "data.f32", 5, &1e30f32.to_le_bytes())
        }),
        ("row pointer past nnz", |d| {
            poke(d, "indptr.u64", 7, &(1u64 << 40).to_le_bytes())
        }),
        ("row pointer going back", |d| {
            poke(d, "indptr.u64", 7, &1u64.to_le_bytes())
        }),
        ("data.f32 cut short", |d| {
            let p = d.join("in.store/data.f32");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() - 4]).unwrap();
        }),
        ("meta.bin missing", |d| {
            std::fs::remove_file(d.join("in.store/meta.bin")).unwrap()
        }),
        ("header n_genes 1e12", |d| {
            edit_json(&d.join("in.store/header.json"), |v| {
                v["n_genes"] = serde_json::json!(1_000_000_000_000u64)
            })
        }),
    ];
    let store_cmds: Vec<Vec<String>> = {
        let mut v = commands("in.store");
        v.push(vec!["info".into(), "in.store".into(), "--verify".into()]);
        v
    };
    for (what, damage) in damages {
        for args in &store_cmds {
            let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            out.push(case(
                format!("store {what}: {}", args[0]),
                &a,
                move |d, s| {
                    copy(&s.store, &d.join("in.store"));
                    with_model(d, s);
                    damage(d);
                },
            ));
        }
    }

    // Model files that lie.
    let lies: [(&str, Damage); 10] = [
        ("n_latent 1e12", |d| {
            edit_json(&d.join("model/model.json"), |v| {
                v["model"]["n_latent"] = serde_json::json!(1_000_000_000_000u64)
            })
        }),
        ("n_input 0", |d| {
            edit_json(&d.join("model/model.json"), |v| {
                v["model"]["n_input"] = serde_json::json!(0)
            })
        }),
        ("dropout_rate 2", |d| {
            edit_json(&d.join("model/model.json"), |v| {
                v["model"]["dropout_rate"] = serde_json::json!(2.0)
            })
        }),
        ("dispersion unknown", |d| {
            edit_json(&d.join("model/model.json"), |v| {
                v["model"]["dispersion"] = serde_json::json!("per-planet")
            })
        }),
        ("genes missing", |d| {
            edit_json(&d.join("model/model.json"), |v| {
                v.as_object_mut().unwrap().remove("genes");
            })
        }),
        ("model.json not JSON", |d| {
            std::fs::write(d.join("model/model.json"), b"{").unwrap()
        }),
        ("weights missing", |d| {
            std::fs::remove_file(d.join("model/model.safetensors")).unwrap()
        }),
        ("weights cut short", |d| {
            let p = d.join("model/model.safetensors");
            let b = std::fs::read(&p).unwrap();
            std::fs::write(&p, &b[..b.len() / 2]).unwrap();
        }),
        ("NaN weight", |d| {
            let p = d.join("model/model.safetensors");
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len();
            b[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
            std::fs::write(&p, b).unwrap();
        }),
        ("split.json not JSON", |d| {
            std::fs::write(d.join("model/split.json"), b"[").unwrap()
        }),
    ];
    for (what, lie) in lies {
        for cmd in [
            vec![
                "embed",
                "model",
                "data.h5ad",
                "--out",
                "out/z.npy",
                "--mc-samples",
                "3",
            ],
            vec!["elbo", "model", "data.h5ad", "--subset", "validation"],
        ] {
            out.push(case(
                format!("model {what}: {}", cmd[0]),
                &cmd,
                move |d, s| {
                    with_model(d, s);
                    data(d, s);
                    lie(d);
                },
            ));
        }
    }

    // Outputs that are not scvi-rs' to replace, or cannot be written.
    let long = format!("out/{}.store", "n".repeat(300));
    let long: &'static str = Box::leak(long.into_boxed_str());
    let targets: [(&str, &str); 6] = [
        ("out/user.txt", "a user's file"),
        ("out/userdir", "a user's folder"),
        ("out/no/such/dir/x", "a missing folder"),
        (long, "a 300-byte name"),
        ("/proc/scvi-rs-out", "an unwritable place"),
        ("data.h5ad", "the input itself"),
    ];
    for (target, what) in targets {
        let mut train = vec!["train", "data.h5ad", "--quiet", "--out", target];
        train.extend(SMALL_MODEL);
        for (args, force) in [
            (train, false),
            (vec!["convert", "data.h5ad", target], false),
            (vec!["convert", "data.h5ad", target, "--force"], true),
            (
                vec![
                    "embed",
                    "model",
                    "data.h5ad",
                    "--out",
                    target,
                    "--mc-samples",
                    "3",
                ],
                false,
            ),
            (
                vec![
                    "simulate", "--cells", "50", "--genes", "20", "--out", target,
                ],
                false,
            ),
            (
                vec![
                    "simulate", "--cells", "50", "--genes", "20", "--out", target, "--force",
                ],
                true,
            ),
        ] {
            let label = format!(
                "output {what}: {}{}",
                args[0],
                if force { " --force" } else { "" }
            );
            out.push(case(label, &args, |d, s| {
                with_model(d, s);
                data(d, s);
                std::fs::write(d.join("out/user.txt"), b"my notes").unwrap();
                std::fs::create_dir_all(d.join("out/userdir")).unwrap();
                std::fs::write(d.join("out/userdir/header.json"), b"{}").unwrap();
                std::fs::write(d.join("out/userdir/notes.txt"), b"mine").unwrap();
            }));
        }
    }
    out
}

/// Run every hostile case in `scratch`; each outcome is added to `tally`, and the cases that
/// ended badly are kept under `findings`. Returns the clean errors whose message names neither a
/// file nor a flag the command was given (with its label), for reading.
pub fn run(seeds: &Seeds, scratch: &Path, findings: &Path, tally: &mut Tally) -> Vec<String> {
    let mut unnamed = Vec::new();
    for (i, c) in cases().into_iter().enumerate() {
        let dir = scratch.join(format!("h{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("out")).unwrap();
        (c.prepare)(&dir, seeds);
        let r = child::run(&c.args, &dir, &dir.join("out"), CASE_TIMEOUT);
        tally.add(&r);
        if std::env::var_os("SCVI_RS_FUZZ_VERBOSE").is_some() {
            let said = r
                .stderr
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect::<Vec<_>>();
            eprintln!("[{i}] {} -> {:?}: {}", c.label, r.outcome, said.join(" | "));
        }
        if !r.is_clean() || r.outcome == Outcome::UnclearError {
            let why = format!(
                "hostile: {}\noutcome: {:?}\npartial: {:?}\nstderr:\n{}",
                c.label, r.outcome, r.partial, r.stderr
            );
            let f = crate::campaign::keep_finding(
                &dir,
                findings,
                &format!("hostile-{i}"),
                &c.args,
                &why,
            );
            tally.findings.push(f);
        } else if r.outcome == Outcome::CleanError {
            let line = r.error_line();
            // A flag is named as such; a path by its last component; plain values do not count.
            let names_something = c.args.iter().skip(1).any(|a| {
                if a.starts_with("--") {
                    return line.contains(a.as_str());
                }
                let is_path = a.contains('/')
                    || a.contains('.')
                    || std::fs::symlink_metadata(dir.join(a)).is_ok();
                let base = Path::new(a)
                    .file_name()
                    .map(|b| b.to_string_lossy().to_string())
                    .unwrap_or_default();
                is_path && !base.is_empty() && line.contains(&base)
            });
            if !names_something {
                unnamed.push(format!("{}: {line}", c.label));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    unnamed
}
