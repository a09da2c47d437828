"""Wall time of model.train(max_epochs=20) on the same data: scvi_rs from Python, the scvi-rs command
line, and scvi-tools' SCVI.train, in one Python session with the same thread count.

    PYTHONPATH=python /path/to/scvi-tools-venv/bin/python scripts/python/bench_train.py \\
        ../shared/data/kang_ifnb_hvg2k.h5ad --threads 2 --epochs 20

Needs the extension built into python/scvi_rs (scripts/python/test.sh does it) and, for the last
row, scvi-tools with torch in the running Python. The command line's time is its own "trained N
epochs in S s" (training only, as the other two), and its whole run with reading the file.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-key", default="stim")
    # scvi-tools is much slower: fewer epochs keep the run short (compare seconds per epoch).
    ap.add_argument("--scvi-tools-epochs", type=int, default=None)
    ap.add_argument("--bin", default=os.path.join("target", "release", "scvi-rs"))
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import anndata as ad
    import scvi_rs

    adata = ad.read_h5ad(args.data)
    print(f"{args.data}: {adata.n_obs} cells x {adata.n_vars} genes; {args.threads} threads, "
          f"{args.epochs} epochs, batch key {args.batch_key}")
    print(f"{'':34s} {'epochs':>6s} {'seconds':>8s} {'s/epoch':>8s}")

    def row(name, epochs, secs):
        print(f"{name:34s} {epochs:6d} {secs:8.2f} {secs / epochs:8.3f}", flush=True)

    scvi_rs.settings.num_threads = args.threads
    scvi_rs.SCVI.setup_anndata(adata, batch_key=args.batch_key)
    model = scvi_rs.SCVI(adata)
    t0 = time.perf_counter()
    model.train(max_epochs=args.epochs, accelerator="cpu", progress_bar=False)
    row("scvi_rs (Python)", args.epochs, time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        p = subprocess.run(
            [args.bin, "train", args.data, "--out", os.path.join(tmp, "m"), "--batch-key",
             args.batch_key, "--max-epochs", str(args.epochs), "--threads", str(args.threads),
             "--device", "cpu", "--quiet"],
            capture_output=True, text=True, check=True,
        )
        whole = time.perf_counter() - t0
        m = re.search(r"trained \d+ epochs in ([0-9.]+) s", p.stderr)
        row("scvi-rs train (CLI), training", args.epochs, float(m.group(1)))
        row("scvi-rs train (CLI), whole run", args.epochs, whole)

    try:
        import scvi
        import torch
    except ImportError:
        print("scvi-tools is not installed here: its row is left out", file=sys.stderr)
    else:
        torch.set_num_threads(args.threads)
        scvi.settings.num_threads = args.threads
        scvi.settings.seed = 0
        st = adata.copy()
        scvi.model.SCVI.setup_anndata(st, batch_key=args.batch_key)
        sm = scvi.model.SCVI(st)
        epochs = args.scvi_tools_epochs or args.epochs
        t0 = time.perf_counter()
        sm.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False)
        row(f"scvi-tools {scvi.__version__} SCVI.train", epochs, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
