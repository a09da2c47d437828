#!/usr/bin/env python3
"""Side by side on one machine: scvi-rs and scvi-tools train SCVI with the same hyper-parameters on
the same seeded 90% of the cells, then report seconds per epoch and the held-out ELBO (get_elbo on
the remaining 10%, scvi-tools' sign: higher is better).

Run with the reference venv (scripts/parity/setup_venv.sh):
    .venv-ref/bin/python scripts/bench/heldout_elbo.py ../shared/data/kang_ifnb_hvg2k.h5ad \
        --batch-key stim --epochs 20 --threads 2 --seeds 0 1
scvi-rs decides the split (its split.json); scvi-tools is given the same indices through
datasplitter_kwargs={"external_indexing": ...}.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def run_scvi_rs(exe, data, batch_key, epochs, seed, threads, workdir):
    model = os.path.join(workdir, f"scvi_rs_seed{seed}")
    cmd = [exe, "train", data, "--batch-key", batch_key, "--max-epochs", str(epochs), "--seed", str(seed),
           "--threads", str(threads), "--device", "cpu", "--out", model, "--force", "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    import csv
    with open(os.path.join(model, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    per_epoch = [float(r["seconds"]) for r in rows]
    out = subprocess.run([exe, "elbo", model, data, "--subset", "validation", "--threads", str(threads),
                          "--device", "cpu"], check=True, capture_output=True, text=True).stdout
    elbo = json.loads(out)["elbo"]
    with open(os.path.join(model, "split.json")) as f:
        split = json.load(f)
    return dict(wall_s=wall, s_per_epoch=float(np.mean(per_epoch)), heldout_elbo=elbo,
                train_idx=split["train_indices"], val_idx=split["validation_indices"])


def run_scvi_tools(data, batch_key, epochs, seed, threads, train_idx, val_idx):
    import torch
    torch.set_num_threads(threads)
    import anndata
    import scvi
    scvi.settings.seed = seed
    adata = anndata.read_h5ad(data)
    scvi.model.SCVI.setup_anndata(adata, batch_key=batch_key)
    model = scvi.model.SCVI(adata)
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False,
                datasplitter_kwargs={"external_indexing": [np.array(train_idx), np.array(val_idx), np.array([], dtype=int)]})
    wall = time.perf_counter() - t0
    elbo = float(model.get_elbo(indices=np.array(val_idx)))
    return dict(wall_s=wall, s_per_epoch=wall / epochs, heldout_elbo=elbo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--batch-key", default="stim")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--scvi-rs", default=os.path.join(os.path.dirname(__file__), "../../target/release/scvi-rs"))
    ap.add_argument("--skip-scvi-tools", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in a.seeds:
            rs = run_scvi_rs(a.scvi_rs, a.data, a.batch_key, a.epochs, seed, a.threads, work)
            rows.append(dict(tool="scvi-rs", seed=seed, **{k: rs[k] for k in ("wall_s", "s_per_epoch", "heldout_elbo")}))
            print(json.dumps(rows[-1]), flush=True)
            if not a.skip_scvi_tools:
                st = run_scvi_tools(a.data, a.batch_key, a.epochs, seed, a.threads, rs["train_idx"], rs["val_idx"])
                rows.append(dict(tool="scvi-tools", seed=seed, **st))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{a.data}: {a.epochs} epochs, {a.threads} threads, held-out = 10% of cells (seeded split)")
    print(f"{'tool':<11} {'seed':>4} {'s/epoch':>9} {'wall s':>8} {'held-out ELBO':>14}")
    for r in rows:
        print(f"{r['tool']:<11} {r['seed']:>4} {r['s_per_epoch']:>9.3f} {r['wall_s']:>8.1f} {r['heldout_elbo']:>14.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
