"""Checks that run before anything long: the data file and its obs keys (read by `scvi-rs info`,
which needs no Python packages), and the scvi-rs binary (built by cargo unless --scvi-rs is given).
Standard library only. Each failure is a UsageError naming the flag or file and what was expected."""

import json
import shutil
import subprocess
import sys

from cli_args import ROOT, UsageError

MIN_CELLS = 200  # the held-out 10% must hold enough cells for 15- and 50-neighbour metrics
LABEL_KINDS = {"categorical", "strings", "integers", "bools"}


def check_data_file(args):
    if not args.data.is_file():
        raise UsageError(f"the data file {args.data} does not exist (or is not a file)")
    if args.data.suffix != ".h5ad":
        raise UsageError(f"the data must be an .h5ad file (scvi-tools reads it with anndata); got {args.data}")


def scvi_rs_binary(args):
    """--scvi-rs as given (checked to run), or target/release/scvi-rs after `cargo build --release`."""
    if args.scvi_rs is not None:
        exe = shutil.which(args.scvi_rs) if "/" not in args.scvi_rs else args.scvi_rs
        if exe is None:
            raise UsageError(f"--scvi-rs {args.scvi_rs}: no such program")
        _check_runs(exe, f"--scvi-rs {args.scvi_rs}")
        return exe
    exe = ROOT / "target" / "release" / "scvi-rs"
    if shutil.which("cargo") is None:
        raise UsageError("cargo is not on PATH, so scvi-rs cannot be built; install Rust (rustup) or pass "
                         "--scvi-rs PATH to a built scvi-rs")
    print(f"compare.sh: cargo build --release (in {ROOT})", file=sys.stderr)
    p = subprocess.run(["cargo", "build", "--release", "--bin", "scvi-rs"], cwd=ROOT, stdout=sys.stderr)
    if p.returncode != 0 or not exe.is_file():
        raise UsageError(f"cargo build --release failed (see above), so there is no {exe}; fix the build or "
                         "pass --scvi-rs PATH to a built scvi-rs")
    _check_runs(str(exe), str(exe))
    return str(exe)


def _check_runs(exe, what):
    try:
        p = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"{what} cannot be run: {e}") from None
    if p.returncode != 0 or not p.stdout.startswith("scvi-rs"):
        said = (p.stdout.strip() or p.stderr.strip()).splitlines()
        said = repr(said[0]) if said else "nothing"
        raise UsageError(f"{what} is not a working scvi-rs ('{exe} --version' printed {said}, not 'scvi-rs VERSION')")


def check_keys(exe, args):
    """The obs columns --batch-key and --labels-key name, as `scvi-rs info` describes them."""
    p = subprocess.run([exe, "info", str(args.data)], capture_output=True, text=True)
    if p.returncode != 0:
        raise UsageError(f"scvi-rs cannot read {args.data}: {p.stderr.strip()}")
    info = json.loads(p.stdout)
    columns = {c["name"]: c for c in info.get("obs", [])}
    for flag, key in [("--batch-key", args.batch_key), ("--labels-key", args.labels_key)]:
        if key not in columns:
            raise UsageError(f"{flag} {key}: {args.data} has no obs column of that name; its obs columns are: "
                             + (", ".join(sorted(columns)) or "(none)"))
        col = columns[key]
        if col.get("kind") not in LABEL_KINDS:
            raise UsageError(f"{flag} {key}: the column holds {col.get('kind')}; a category per cell is expected "
                             "(categorical, strings, integers or booleans)")
        if col.get("missing", 0) or col.get("n_missing", 0):
            raise UsageError(f"{flag} {key}: {col.get('missing') or col.get('n_missing')} cells have no value; "
                             "give every cell one (or drop those cells) first")
    labels = columns[args.labels_key]
    if labels.get("kind") == "categorical" and labels.get("n_categories", 0) < 2:
        raise UsageError(f"--labels-key {args.labels_key}: one cell type only; the latent metrics compare "
                         "at least two")
    n_cells = info.get("n_cells", 0)
    if n_cells < MIN_CELLS:
        raise UsageError(f"{args.data} has {n_cells} cells; at least {MIN_CELLS} are needed so that the "
                         "held-out 10% can be judged")
    return {"n_cells": n_cells, "n_genes": info.get("n_genes"), "nnz": info.get("nnz"),
            "batch": columns[args.batch_key], "labels": labels}
