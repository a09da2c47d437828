#!/usr/bin/env python3
"""The quality guard of `--precision bf16` (issue 16): does training with bf16 head products give
the model f32 training gives?

For each seed, the same command trains twice on kang_ifnb_hvg2k.h5ad (20 epochs, 90/10 split,
batch key `stim`, Kang defaults otherwise), once per precision. The split depends on the seed
only, so both models of a seed are judged on the same held-out cells. Both are judged in f32
(`scvi-rs elbo` and `scvi-rs embed` run the f32 engine whatever the model was trained in), so the
figures compare the models, not the arithmetic that evaluates them:

- held-out ELBO (`scvi-rs elbo --subset validation`, scvi-tools' sign, nats per
  cell; higher is better): the bf16 mean over seeds must lie within the f32 models' spread between seeds,
  |mean_bf16 - mean_f32| <= max_f32 - min_f32;
- latent kNN cell-type purity on the held-out cells (benchmarks/latent_metrics.py, k = 15):
  |mean_bf16 - mean_f32| <= 0.01.

If either fails, the mode is not offered (issue 16). With one seed there is no spread: the ELBO
part is reported as undetermined, the purity part is still judged.

    /work/main/.venv-ref/bin/python scripts/bench/bf16_guard.py [--seeds 0,1,2] [--out DIR]
        [--data PATH] [--threads 2] [--exe target/release/scvi-rs] [--epochs 20]

Needs numpy, scikit-learn and h5py (the scvi-tools reference venv has them). Timings are not
taken here: this judges quality only.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from latent_metrics import knn_purity  # noqa: E402

PRECISIONS = ["f32", "bf16"]
PURITY_TOLERANCE = 0.01


def run(cmd, log):
    """Run cmd, its output in log; stop with the log's tail when it fails."""
    with open(log, "w") as f:
        p = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(map(str, cmd))}\n{Path(log).read_text()[-2000:]}")


def cell_types(data):
    """The obs column `cell_type` of an .h5ad as strings (categorical or plain)."""
    with h5py.File(data, "r") as f:
        col = f["obs"]["cell_type"]
        if isinstance(col, h5py.Group):
            cats = np.array([c.decode() if isinstance(c, bytes) else c for c in col["categories"][()]])
            return cats[col["codes"][()]]
        return np.array([c.decode() if isinstance(c, bytes) else c for c in col[()]])


def one(args, seed, precision, labels):
    """Train one model and judge it: (held-out ELBO, held-out kNN purity, epochs trained)."""
    out = Path(args.out) / f"seed{seed}_{precision}"
    out.mkdir(parents=True, exist_ok=True)
    model = out / "model"
    common = ["--threads", args.threads, "--device", "cpu"]
    run([args.exe, "train", args.data, "--batch-key", "stim", "--max-epochs", args.epochs,
         "--train-size", "0.9", "--seed", seed, "--precision", precision, "--out", model, "--force",
         "--quiet", *common], out / "train.log")
    meta = json.loads((model / "model.json").read_text())
    saved = meta.get("train", {}).get("precision", "f32")
    if saved != precision:
        sys.exit(f"{model}/model.json says precision {saved!r}, expected {precision!r}")
    run([args.exe, "elbo", model, args.data, "--subset", "validation", *common], out / "elbo.json")
    elbo = json.loads((out / "elbo.json").read_text())
    elbo = elbo["elbo"] if isinstance(elbo, dict) else float(elbo)
    run([args.exe, "embed", model, args.data, "--out", out / "z.npy", *common], out / "embed.log")
    z = np.load(out / "z.npy")
    held = np.array(json.loads((model / "split.json").read_text())["validation_indices"])
    purity = knn_purity(z[held], labels[held])
    return float(elbo), purity


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="/tmp/bf16_guard")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/kang_ifnb_hvg2k.h5ad"))
    p.add_argument("--threads", default="2")
    p.add_argument("--exe", default=str(ROOT / "target/release/scvi-rs"))
    p.add_argument("--epochs", default="20")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    labels = cell_types(args.data)
    res = {q: [] for q in PRECISIONS}
    print(f"data {args.data}, {args.epochs} epochs, 90/10 split, seeds {seeds}, evaluated in f32")
    print("| seed | precision | held-out ELBO | kNN purity (k = 15, held-out) |")
    print("|---:|---|---:|---:|")
    for seed in seeds:
        for q in PRECISIONS:
            e, k = one(args, seed, q, labels)
            res[q].append((e, k))
            print(f"| {seed} | {q} | {e:.3f} | {k:.4f} |", flush=True)

    elbo = {q: np.array([e for e, _ in res[q]]) for q in PRECISIONS}
    pur = {q: np.array([k for _, k in res[q]]) for q in PRECISIONS}
    d_elbo = elbo["bf16"].mean() - elbo["f32"].mean()
    spread = elbo["f32"].max() - elbo["f32"].min()
    d_pur = pur["bf16"].mean() - pur["f32"].mean()
    paired = elbo["bf16"] - elbo["f32"]
    print(f"\nheld-out ELBO: mean f32 {elbo['f32'].mean():.3f}, bf16 {elbo['bf16'].mean():.3f}, "
          f"difference {d_elbo:+.3f}; f32 spread between seeds {spread:.3f}; "
          f"paired bf16 - f32 per seed {', '.join(f'{d:+.3f}' for d in paired)}")
    print(f"kNN purity: mean f32 {pur['f32'].mean():.4f}, bf16 {pur['bf16'].mean():.4f}, "
          f"difference {d_pur:+.4f} (tolerance {PURITY_TOLERANCE})")
    purity_ok = abs(d_pur) <= PURITY_TOLERANCE
    if len(seeds) < 2:
        elbo_verdict = "UNDETERMINED (one seed: no spread between seeds to compare with)"
        elbo_ok = None
    else:
        elbo_ok = abs(d_elbo) <= spread
        elbo_verdict = "PASS" if elbo_ok else "FAIL"
    print(f"ELBO within the f32 spread: {elbo_verdict}")
    print(f"kNN purity within {PURITY_TOLERANCE}: {'PASS' if purity_ok else 'FAIL'}")
    if elbo_ok is None:
        verdict = "INCOMPLETE: run three seeds for the verdict" if purity_ok else "FAIL: bf16 is not offered"
    else:
        verdict = "PASS: bf16 may be offered" if elbo_ok and purity_ok else "FAIL: bf16 is not offered"
    print(f"VERDICT: {verdict}")
    sys.exit(0 if verdict.startswith(("PASS", "INCOMPLETE")) else 1)


if __name__ == "__main__":
    main()
