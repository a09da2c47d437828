#!/usr/bin/env python3
"""After-training speed: scvi-tools 1.4.2's methods on an scvi-rs model (exported with
`scvi-rs export`), timed on the same cores as the scvi-rs commands (BENCHMARKS.md, issue 9).

    PY=/path/to/.venv-ref/bin/python
    "$PY" scripts/bench/infer_vs_scvi_tools.py MODEL_DIR DATA.h5ad THREADS [N_CELLS_MLL]

Prints one JSON object (and each figure on stderr as it comes): wall and CPU seconds (the process's,
all threads; on a shared machine the CPU seconds are the fairer figure) of get_marginal_ll(n_mc_samples=200) on the first N_CELLS_MLL
cells (default 1358, a tenth of Kang), get_normalized_expression(n_samples=25) on every cell, and
differential_expression(groupby="stim", group1="STIM", group2="CTRL") in both modes.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
# The scvi-rs binary that exports the model for scvi-tools (SCVI_RS_BIN, else the release build).
BINARY = os.environ.get("SCVI_RS_BIN", os.path.join(ROOT, "target/release/scvi-rs"))


def main(model_dir, data, threads, n_mll=1358):
    import anndata as ad
    import numpy as np
    import scvi
    import torch

    torch.set_num_threads(threads)
    adata = ad.read_h5ad(data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = os.path.join(tmp, "scvi_tools")
        subprocess.run([BINARY, "export", model_dir, tmp], check=True, stdout=subprocess.DEVNULL)
        model = scvi.model.SCVI.load(tmp, adata=adata)
    out = {"scvi_tools": scvi.__version__, "threads": threads, "n_cells": adata.n_obs}

    def timed(name, f, **extra):
        t, c = time.perf_counter(), time.process_time()
        value = f()
        out[name] = dict(seconds=time.perf_counter() - t, cpu_seconds=time.process_time() - c, **extra)
        print(name, out[name], file=sys.stderr, flush=True)
        return value

    timed("marginal_ll_200", lambda: model.get_marginal_ll(indices=np.arange(n_mll), n_mc_samples=200),
          cells=n_mll)
    timed("normalize_25", lambda: model.get_normalized_expression(n_samples=25, return_numpy=True))
    for mode in ["vanilla", "change"]:
        timed("de_" + mode, lambda: model.differential_expression(groupby="stim", group1="STIM", group2="CTRL",
                                                                   mode=mode, silent=True))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), *(int(a) for a in sys.argv[4:5]))
