//! The command line end to end on small committed .h5ad files: train, embed, elbo, the model
//! directory's contents, determinism, and every kind of bad input (clear message, non-zero exit, no
//! partial output).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_scvi-rs"))
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scvi-rs-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> Output {
    exe().args(args).output().expect("run scvi-rs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Run and expect failure whose message contains every `needle`.
fn fails_with(args: &[&str], needles: &[&str]) {
    let o = run(args);
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "expected failure for {args:?}, got success; stderr:\n{err}"
    );
    assert_eq!(o.status.code(), Some(1), "exit code for {args:?}");
    assert!(!err.contains("panicked"), "panic for {args:?}:\n{err}");
    for n in needles {
        assert!(err.contains(n), "message for {args:?} lacks '{n}':\n{err}");
    }
}

fn train(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    if !extra.contains(&"--max-epochs") {
        args.extend_from_slice(&["--max-epochs", "4"]);
    }
    args.extend_from_slice(extra);
    run(&args)
}

fn ok(o: &Output) {
    assert!(o.status.success(), "failed:\n{}", stderr(o));
}

#[test]
fn train_embed_elbo_round_trip() {
    let d = tmpdir("roundtrip");
    let small = fixture("cli/small.h5ad");
    let model = d.join("model");
    ok(&train(
        &small,
        &model,
        &["--batch-key", "stim", "--threads", "2"],
    ));
    for f in [
        "model.safetensors",
        "model.json",
        "history.csv",
        "split.json",
    ] {
        assert!(model.join(f).exists(), "{f} missing");
    }
    // Weights under scvi-tools' state_dict names, BatchNorm statistics included.
    let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for name in [
        "z_encoder.encoder.fc_layers.Layer 0.0.weight",
        "z_encoder.encoder.fc_layers.Layer 0.1.running_mean",
        "z_encoder.mean_encoder.weight",
        "l_encoder.var_encoder.bias",
        "decoder.px_decoder.fc_layers.Layer 0.0.weight",
        "decoder.px_scale_decoder.0.weight",
        "decoder.px_dropout_decoder.bias",
        "px_r",
    ] {
        assert!(st.tensor(name).is_ok(), "no tensor {name}");
    }
    // 40 genes + nothing: the encoder takes genes only; the decoder's first layer takes z + 2 batches.
    assert_eq!(
        st.tensor("z_encoder.encoder.fc_layers.Layer 0.0.weight")
            .unwrap()
            .shape(),
        &[128, 40]
    );
    assert_eq!(
        st.tensor("decoder.px_decoder.fc_layers.Layer 0.0.weight")
            .unwrap()
            .shape(),
        &[128, 12]
    );
    let nbt = st
        .tensor("decoder.px_decoder.fc_layers.Layer 0.1.num_batches_tracked")
        .unwrap();
    assert_eq!(nbt.dtype(), safetensors::Dtype::I64);
    // ceil(0.9 * 240) = 216 train cells = 2 minibatches per epoch, 4 epochs.
    assert_eq!(i64::from_le_bytes(nbt.data().try_into().unwrap()), 8);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("model.json")).unwrap()).unwrap();
    assert_eq!(
        meta["batch_categories"],
        serde_json::json!(["CTRL", "STIM"])
    );
    assert_eq!(meta["genes"].as_array().unwrap().len(), 40);
    assert_eq!(meta["model"]["n_hidden"], 128);
    let hist = std::fs::read_to_string(model.join("history.csv")).unwrap();
    let header = hist.lines().next().unwrap();
    for col in [
        "epoch",
        "train_loss",
        "elbo_train",
        "reconstruction_loss_train",
        "kl_local_train",
        "kl_global_train",
        "validation_loss",
        "elbo_validation",
    ] {
        assert!(
            header.split(',').any(|c| c == col),
            "history lacks {col}: {header}"
        );
    }
    assert_eq!(hist.lines().count(), 5);

    let npy = d.join("z.npy");
    ok(&run(&[
        "embed",
        model.to_str().unwrap(),
        small.to_str().unwrap(),
        "--out",
        npy.to_str().unwrap(),
    ]));
    let b = std::fs::read(&npy).unwrap();
    assert!(b.starts_with(b"\x93NUMPY"));
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = String::from_utf8_lossy(&b[10..10 + hl]);
    assert!(header.contains("'shape': (240, 10)"), "{header}");
    assert_eq!(b.len(), 10 + hl + 240 * 10 * 4);
    let vals: Vec<f32> = b[10 + hl..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(vals.iter().all(|v| v.is_finite()) && vals.iter().any(|&v| v != 0.0));
    let csv = d.join("z.csv");
    ok(&run(&[
        "embed",
        model.to_str().unwrap(),
        small.to_str().unwrap(),
        "--out",
        csv.to_str().unwrap(),
    ]));
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 241);
    assert!(text.lines().nth(1).unwrap().starts_with("cell_000,"));
    // The embedding is written once: the same again needs --force.
    fails_with(
        &[
            "embed",
            model.to_str().unwrap(),
            small.to_str().unwrap(),
            "--out",
            csv.to_str().unwrap(),
        ],
        &["already exists", "--force"],
    );

    let o = run(&["elbo", model.to_str().unwrap(), small.to_str().unwrap()]);
    ok(&o);
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["n_cells"], 24);
    let elbo = rep["elbo"].as_f64().unwrap();
    let parts = rep["reconstruction_loss"].as_f64().unwrap() + rep["kl_local"].as_f64().unwrap();
    assert!(
        elbo < 0.0 && (elbo + parts).abs() < 1e-6 * parts,
        "get_elbo sign: {rep}"
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn same_seed_and_threads_give_identical_models() {
    let d = tmpdir("determinism");
    let small = fixture("cli/small.h5ad");
    let (a, b, c) = (d.join("a"), d.join("b"), d.join("c"));
    ok(&train(
        &small,
        &a,
        &["--batch-key", "stim", "--threads", "2", "--seed", "3"],
    ));
    ok(&train(
        &small,
        &b,
        &["--batch-key", "stim", "--threads", "2", "--seed", "3"],
    ));
    ok(&train(
        &small,
        &c,
        &["--batch-key", "stim", "--threads", "2", "--seed", "4"],
    ));
    let w = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
    assert!(
        w(&a) == w(&b),
        "same seed and threads must give the same weights bit for bit"
    );
    assert!(w(&a) != w(&c), "another seed must give other weights");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn inputs_of_every_kind_train() {
    let d = tmpdir("kinds");
    let small = fixture("cli/small.h5ad");
    // A layer of int64 counts, a dense int32 X, string / boolean batch keys, labels for gene-label.
    ok(&train(
        &small,
        &d.join("layer"),
        &["--layer", "counts", "--batch-key", "stim"],
    ));
    ok(&train(
        &fixture("cli/dense_int.h5ad"),
        &d.join("dense"),
        &["--batch-key", "stim"],
    ));
    ok(&train(
        &small,
        &d.join("strings"),
        &["--batch-key", "donor"],
    ));
    ok(&train(
        &small,
        &d.join("bools"),
        &["--batch-key", "is_ctrl"],
    ));
    ok(&train(
        &small,
        &d.join("labels"),
        &[
            "--batch-key",
            "stim",
            "--labels-key",
            "cell_type",
            "--dispersion",
            "gene-label",
        ],
    ));
    ok(&train(
        &small,
        &d.join("options"),
        &[
            "--gene-likelihood",
            "nb",
            "--dispersion",
            "gene-batch",
            "--batch-key",
            "stim",
            "--n-layers",
            "2",
            "--latent-distribution",
            "ln",
            "--latent-library",
            "--use-layer-norm",
            "both",
            "--use-batch-norm",
            "none",
            "--encode-covariates",
            "--n-hidden",
            "16",
            "--n-latent",
            "5",
        ],
    ));
    ok(&train(
        &small,
        &d.join("early"),
        &[
            "--batch-key",
            "stim",
            "--early-stopping",
            "--early-stopping-patience",
            "1",
            "--max-epochs",
            "50",
        ],
    ));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("bools/model.json")).unwrap()).unwrap();
    assert_eq!(
        meta["batch_categories"],
        serde_json::json!(["False", "True"])
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn bad_inputs_fail_clearly_without_partial_output() {
    let d = tmpdir("bad");
    let out = d.join("model");
    let o = out.to_str().unwrap();
    let small = fixture("cli/small.h5ad");
    let s = small.to_str().unwrap();
    let bad = fixture("h5ad/bad_values.h5ad");
    let b = bad.to_str().unwrap();
    fails_with(
        &["train", "/nonexistent/x.h5ad", "--out", o],
        &["/nonexistent/x.h5ad"],
    );
    fails_with(
        &[
            "train",
            fixture("h5ad/not_hdf5.h5ad").to_str().unwrap(),
            "--out",
            o,
        ],
        &["not_hdf5.h5ad", "HDF5"],
    );
    fails_with(
        &[
            "train",
            fixture("h5ad/no_x.h5ad").to_str().unwrap(),
            "--out",
            o,
        ],
        &["no_x.h5ad", "X"],
    );
    fails_with(
        &["train", s, "--out", o, "--batch-key", "nope"],
        &["small.h5ad", "nope", "stim"],
    );
    fails_with(
        &["train", s, "--out", o, "--layer", "nope"],
        &["small.h5ad", "nope", "counts"],
    );
    fails_with(
        &["train", b, "--out", o, "--layer", "negative"],
        &["bad_values.h5ad", "layers/negative", "negative"],
    );
    fails_with(
        &["train", b, "--out", o, "--layer", "nan"],
        &["bad_values.h5ad", "layers/nan", "NaN"],
    );
    fails_with(
        &["train", b, "--out", o, "--layer", "inf"],
        &["bad_values.h5ad", "layers/inf"],
    );
    fails_with(
        &[
            "train",
            fixture("cli/zero_cell.h5ad").to_str().unwrap(),
            "--out",
            o,
        ],
        &["zero_cell.h5ad", "cell_007", "zero total counts"],
    );
    fails_with(&["train", s, "--out", o, "--device", "cuda"], &["cuda"]);
    fails_with(&["train", s, "--out", o, "--device", "tpu"], &["tpu"]);
    fails_with(
        &["train", s, "--out", o, "--batch-size", "1"],
        &["--batch-size"],
    );
    assert!(!out.exists(), "a failed run left {o}");
    assert_eq!(
        std::fs::read_dir(&d).unwrap().count(),
        0,
        "a failed run left files behind"
    );

    // Non-integer counts: a warning, as scvi-tools gives, and training goes on (this layer also has
    // an empty cell, which the latent library size accepts).
    let o2 = train(
        &bad,
        &d.join("nonint"),
        &["--layer", "nonint", "--batch-size", "4", "--latent-library"],
    );
    ok(&o2);
    assert!(stderr(&o2).contains("non-integer"), "{}", stderr(&o2));

    // An existing output is never overwritten without --force, and stays intact.
    ok(&train(&small, &out, &["--batch-key", "stim"]));
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    fails_with(
        &[
            "train",
            s,
            "--out",
            o,
            "--batch-key",
            "stim",
            "--max-epochs",
            "1",
        ],
        &["already exists", "--force"],
    );
    assert_eq!(
        before,
        std::fs::read(out.join("model.safetensors")).unwrap()
    );
    ok(&train(
        &small,
        &out,
        &["--batch-key", "stim", "--force", "--max-epochs", "1"],
    ));

    // Embedding data the model does not fit.
    let z = d.join("z.npy");
    let zs = z.to_str().unwrap();
    fails_with(
        &[
            "embed",
            o,
            fixture("cli/other_genes.h5ad").to_str().unwrap(),
            "--out",
            zs,
        ],
        &["other_genes.h5ad", "genes", "gene_05"],
    );
    fails_with(
        &[
            "embed",
            o,
            fixture("cli/new_batch.h5ad").to_str().unwrap(),
            "--out",
            zs,
        ],
        &["new_batch.h5ad", "NEW", "stim"],
    );
    fails_with(
        &["embed", o, s, "--out", d.join("z.txt").to_str().unwrap()],
        &[".npy, .csv or .h5ad"],
    );
    fails_with(
        &["embed", d.join("nomodel").to_str().unwrap(), s, "--out", zs],
        &["nomodel"],
    );
    assert!(!z.exists());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn stores_and_10x_inputs_train_and_embed() {
    let d = tmpdir("stores");
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    // simulate -> store -> info -> train -> embed, and the same through .h5ad.
    ok(&run(&[
        "simulate",
        "--cells",
        "300",
        "--genes",
        "60",
        "--batches",
        "2",
        "--seed",
        "1",
        "--out",
        &p("sim.store"),
    ]));
    let o = run(&["info", &p("sim.store")]);
    ok(&o);
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (info["n_cells"].as_u64(), info["n_genes"].as_u64()),
        (Some(300), Some(60)),
        "{info}"
    );
    ok(&train(
        Path::new(&p("sim.store")),
        &d.join("m_store"),
        &["--batch-key", "batch"],
    ));
    ok(&run(&[
        "embed",
        &p("m_store"),
        &p("sim.store"),
        "--out",
        &p("z_store.npy"),
    ]));
    ok(&run(&[
        "simulate",
        "--cells",
        "300",
        "--genes",
        "60",
        "--batches",
        "2",
        "--seed",
        "1",
        "--out",
        &p("sim.h5ad"),
    ]));
    ok(&run(&[
        "embed",
        &p("m_store"),
        &p("sim.h5ad"),
        "--out",
        &p("z_h5ad.npy"),
    ]));
    assert_eq!(
        std::fs::read(p("z_store.npy")).unwrap(),
        std::fs::read(p("z_h5ad.npy")).unwrap(),
        "store and h5ad give the same cells"
    );
    // The same seed and thread count train the same model from a store as from the .h5ad.
    ok(&train(
        Path::new(&p("sim.h5ad")),
        &d.join("m_h5ad"),
        &["--batch-key", "batch"],
    ));
    assert_eq!(
        std::fs::read(d.join("m_store/model.safetensors")).unwrap(),
        std::fs::read(d.join("m_h5ad/model.safetensors")).unwrap()
    );
    // convert from .h5ad (with a layer), and 10x inputs straight into training.
    ok(&run(&[
        "convert",
        fixture("cli/small.h5ad").to_str().unwrap(),
        &p("small.store"),
        "--layer",
        "counts",
    ]));
    ok(&train(
        Path::new(&p("small.store")),
        &d.join("m_small"),
        &["--batch-key", "stim"],
    ));
    for tenx in ["tenx/v3.h5", "tenx/mtx_v3", "tenx/v2.h5", "tenx/mtx_v2"] {
        let o = train(
            &fixture(tenx),
            &d.join(tenx.replace('/', "_")),
            &["--batch-size", "4"],
        );
        // Tiny 10x fixtures may hold cells without counts; then the refusal must name one.
        let err = stderr(&o);
        assert!(
            o.status.success() || err.contains("zero total counts"),
            "{tenx}: {err}"
        );
    }
    fails_with(
        &["train", &p("nothing.store"), "--out", &p("m2")],
        &["nothing.store"],
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn max_steps_stops_mid_epoch() {
    let d = tmpdir("maxsteps");
    // 216 training cells = 2 minibatches per epoch; 3 steps end in the second epoch.
    ok(&train(
        &fixture("cli/small.h5ad"),
        &d.join("m"),
        &[
            "--max-epochs",
            "10",
            "--max-steps",
            "3",
            "--batch-key",
            "stim",
        ],
    ));
    let bytes = std::fs::read(d.join("m/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let nbt = st
        .tensor("z_encoder.encoder.fc_layers.Layer 0.1.num_batches_tracked")
        .unwrap();
    assert_eq!(i64::from_le_bytes(nbt.data().try_into().unwrap()), 3);
    assert_eq!(
        std::fs::read_to_string(d.join("m/history.csv"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    std::fs::remove_dir_all(&d).ok();
}

// ------------------------------------------------------------------------------------------------
// Nothing the program did not create is ever deleted or replaced.

/// Every file under `dir` with its bytes, for before / after comparisons.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn outputs_never_replace_what_scvi_rs_did_not_write() {
    let d = tmpdir("dataloss");
    let small = fixture("cli/small.h5ad");
    let s = small.to_str().unwrap();

    // A folder that merely holds a header.json is a user's folder, not a store.
    let proj = d.join("proj");
    std::fs::create_dir_all(proj.join("sub")).unwrap();
    std::fs::write(proj.join("header.json"), "{}").unwrap();
    std::fs::write(proj.join("notes.txt"), "x").unwrap();
    let before = snapshot(&proj);
    let p = proj.to_str().unwrap();
    fails_with(&["convert", s, p], &["proj", "already exists", "--force"]);
    fails_with(
        &["convert", s, p, "--force"],
        &["proj", "refusing to replace it", "not a scvi-rs store"],
    );
    fails_with(
        &[
            "simulate", "--cells", "50", "--genes", "20", "--out", p, "--force",
        ],
        &["proj", "refusing"],
    );
    assert_eq!(before, snapshot(&proj), "a user's folder was changed");

    // An existing .h5ad is kept without --force, replaced with it.
    let h = d.join("user.h5ad");
    std::fs::write(&h, "my data").unwrap();
    let hs = h.to_str().unwrap();
    fails_with(&["convert", s, hs], &["user.h5ad", "--force"]);
    fails_with(
        &["simulate", "--cells", "50", "--genes", "20", "--out", hs],
        &["user.h5ad", "--force"],
    );
    assert_eq!(std::fs::read(&h).unwrap(), b"my data");
    ok(&run(&["convert", s, hs, "--force"]));
    assert_ne!(std::fs::read(&h).unwrap(), b"my data");

    // A store that scvi-rs wrote is replaced with --force, and only then.
    let st = d.join("a.store");
    let sts = st.to_str().unwrap();
    ok(&run(&["convert", s, sts]));
    fails_with(&["convert", s, sts], &["a.store", "--force"]);
    ok(&run(&[
        "simulate", "--cells", "60", "--genes", "20", "--out", sts, "--force",
    ]));
    // ... but not once someone has put a file of their own in it.
    std::fs::write(st.join("mine.txt"), "x").unwrap();
    fails_with(&["convert", s, sts, "--force"], &["mine.txt", "refusing"]);
    assert!(st.join("mine.txt").exists());

    // A model directory is replaced only by a model that trained; a folder of the user's never.
    let m = d.join("model");
    let ms = m.to_str().unwrap();
    ok(&train(&small, &m, &["--batch-key", "stim"]));
    let good = snapshot(&m);
    fails_with(
        &["train", s, "--out", ms, "--force", "--max-steps", "0"],
        &["--max-steps"],
    );
    assert_eq!(good, snapshot(&m), "a good model was replaced");
    let user = d.join("results");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("figure.png"), "png").unwrap();
    fails_with(
        &["train", s, "--out", user.to_str().unwrap(), "--force"],
        &["results", "refusing", "model directory"],
    );
    assert!(user.join("figure.png").exists());

    // Outputs that cannot be written fail before any work, naming the user's path.
    let nowhere = d.join("no/such/folder/model");
    fails_with(
        &["train", s, "--out", nowhere.to_str().unwrap()],
        &["--out", "no/such/folder", "does not exist"],
    );
    let long = d.join("m".repeat(300));
    fails_with(
        &["train", s, "--out", long.to_str().unwrap()],
        &["--out", "at most 255"],
    );
    fails_with(
        &[
            "embed",
            ms,
            s,
            "--out",
            d.join("x".repeat(280) + ".npy").to_str().unwrap(),
        ],
        &["--out", "at most 255"],
    );

    // Nothing but what the commands were asked to write is left in the folder.
    let mut names: Vec<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.store", "model", "proj", "results", "user.h5ad"]);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn interrupting_a_writing_command_leaves_no_temporaries() {
    let d = tmpdir("sigint");
    for out in ["big.h5ad", "big.store"] {
        let path = d.join(out);
        let child = exe()
            // Long enough to interrupt mid-write, small enough on disk (~25 values a cell: under
            // 1 GB; the command checks the free space first).
            .args(["simulate", "--cells", "3000000", "--genes", "2000"])
            .args(["--library-median", "30", "--out"])
            .arg(&path)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the temporary exists (the write has started), then interrupt.
        let t0 = std::time::Instant::now();
        while std::fs::read_dir(&d).unwrap().count() == 0 && t0.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let killed = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(130), "{out}: {err}");
        assert!(err.contains("interrupted"), "{err}");
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            0,
            "{out}: an interrupted write left files behind"
        );
    }
    std::fs::remove_dir_all(&d).ok();
}
