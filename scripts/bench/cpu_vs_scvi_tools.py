#!/usr/bin/env python3
"""Training throughput of scvi-rs (CPU engine) and scvi-tools side by side, in one run.

Both train scvi-tools' default SCVI model (ZINB, gene dispersion, 128 hidden, 10 latent, 1 layer,
batch size 128, train_size 0.9, Adam lr 1e-3) on the same .h5ad with the same batch key, for the same
number of epochs, with T threads each (T = 1, 2 by default), one after the other, validation every
epoch in both. The figure is training cells per second per epoch (ceil(0.9 n) cells / the epoch's
wall time, validation included), the median over the epochs, as scvi-rs' history.csv counts it.

    .venv-ref/bin/python scripts/bench/cpu_vs_scvi_tools.py --epochs 3 --threads 1,2

scvi-rs: `target/release/scvi-rs train ... --threads T` (built first if missing); its history.csv has
per-epoch seconds. scvi-tools: `SCVI.setup_anndata(adata, batch_key=...)`, `SCVI(adata).train(
max_epochs=N, accelerator="cpu", check_val_every_n_epoch=1)` in a fresh process with
`torch.set_num_threads(T)` (and OMP/MKL thread variables), timed per epoch by a Lightning callback.
The machine may be shared: run it when it is quiet, and read the medians.
"""

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCVI_TOOLS_CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
import anndata, scvi
from lightning.pytorch.callbacks import Callback

class EpochTimer(Callback):
    def __init__(self):
        self.starts = []
        self.end = None
    def on_train_epoch_start(self, trainer, module):
        self.starts.append(time.perf_counter())
    def on_train_end(self, trainer, module):
        self.end = time.perf_counter()

adata = anndata.read_h5ad(sys.argv[3])
scvi.model.SCVI.setup_anndata(adata, batch_key=sys.argv[4])
model = scvi.model.SCVI(adata)
timer = EpochTimer()
model.train(max_epochs=int(sys.argv[2]), accelerator="cpu", enable_progress_bar=False,
            check_val_every_n_epoch=1, callbacks=[timer])
bounds = timer.starts + [timer.end]
print(json.dumps({"epochs": [b - a for a, b in zip(bounds, bounds[1:])],
                  "threads": torch.get_num_threads(), "version": scvi.__version__,
                  "torch": torch.__version__}))
"""


def run_scvi_rs(binary, data, batch_key, epochs, threads, out):
    cmd = [str(binary), "train", str(data), "--batch-key", batch_key, "--max-epochs", str(epochs),
           "--threads", str(threads), "--out", str(out), "--force", "--quiet", "--device", "cpu"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(Path(out) / "history.csv") as f:
        return [float(r["seconds"]) for r in csv.DictReader(f)]


def run_scvi_tools(python, data, batch_key, epochs, threads):
    env = dict(os.environ)
    for k in ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"]:
        env[k] = str(threads)
    env["PYTHONWARNINGS"] = "ignore"
    p = subprocess.run([python, "-c", SCVI_TOOLS_CHILD, str(threads), str(epochs), str(data), batch_key],
                       check=True, capture_output=True, text=True, env=env)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/kang_ifnb_hvg2k.h5ad"))
    ap.add_argument("--batch-key", default="stim")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--scvi-rs", default=str(ROOT / "target/release/scvi-rs"))
    ap.add_argument("--python", default=str(ROOT / ".venv-ref/bin/python"))
    ap.add_argument("--skip-scvi-tools", action="store_true")
    args = ap.parse_args()

    binary = Path(args.scvi_rs)
    if not binary.exists():
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    import h5py  # noqa: F401  (only to fail early without the reference venv)

    with h5py.File(args.data, "r") as f:
        n_cells = f["X"].attrs["shape"][0] if "shape" in f["X"].attrs else f["obs"]["_index"].shape[0]
    n_train = math.ceil(0.9 * n_cells)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for t in [int(x) for x in args.threads.split(",")]:
            rs = run_scvi_rs(binary, args.data, args.batch_key, args.epochs, t, Path(tmp) / f"m{t}")
            st = None if args.skip_scvi_tools else run_scvi_tools(
                args.python, args.data, args.batch_key, args.epochs, t)
            rows.append((t, rs, st))
            print(f"threads {t}: scvi-rs epochs {['%.3f' % s for s in rs]}"
                  + ("" if st is None else f"; scvi-tools {st['version']} (torch {st['torch']}, "
                     f"{st['threads']} threads) epochs {['%.2f' % s for s in st['epochs']]}"),
                  file=sys.stderr)
    print(f"\n{args.data}: {n_cells} cells, {n_train} training cells per epoch, {args.epochs} epochs, "
          f"validation every epoch\n")
    print("| threads | scvi-rs s/epoch | scvi-rs cells/s | scvi-tools s/epoch | scvi-tools cells/s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for t, rs, st in rows:
        a = statistics.median(rs)
        line = f"| {t} | {a:.3f} | {n_train / a:,.0f} |"
        if st is None:
            line += " | | |"
        else:
            b = statistics.median(st["epochs"])
            line += f" {b:.2f} | {n_train / b:,.0f} | {b / a:.1f}x |"
        print(line)


if __name__ == "__main__":
    main()
