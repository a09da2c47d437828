#!/usr/bin/env python3
"""The driver of benchmarks/compare.sh: scvi-rs and scvi-tools side by side on one data set.

Run by the system python3 first, it checks the input, the output folder and the scvi-rs binary,
builds or reuses the pinned environment (pyenv.py), then runs itself again with that environment's
python, which does the work: for each seed, one after the other, scvi-rs trains (deciding the
split), evaluates and embeds; scvi-tools trains on the same split in a child process and evaluates
in another; the same code scores both latents; then the plots, report.md and results.json.
"""

import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cli_args  # noqa: E402
import outdir  # noqa: E402
import preflight  # noqa: E402
import pyenv  # noqa: E402
from cli_args import UsageError  # noqa: E402

BINARY_ENV = "SCVI_RS_COMPARE_BINARY"  # the binary the first stage checked, handed to the second


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def in_venv(args):
    return Path(sys.prefix).resolve() == args.venv.resolve()


def checked(argv):
    """Parses and checks everything that can be checked before a long run; in the first stage also
    builds the environment and re-executes this file inside it (never returns then)."""
    args = cli_args.parse(argv)
    cli_args.check_numbers(args)
    preflight.check_data_file(args)
    outdir.check(args.out, args.force)
    exe = os.environ.get(BINARY_ENV) or preflight.scvi_rs_binary(args)
    data_info = preflight.check_keys(exe, args)
    if not in_venv(args):
        python = pyenv.ensure(args.venv)
        os.environ[BINARY_ENV] = exe
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *argv])
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise UsageError(f"--device cuda: PyTorch in {args.venv} sees no GPU "
                             f"(torch {torch.__version__}, CUDA {torch.version.cuda})")
    return args, exe, data_info


def heldout_writer(args, heldout, path):
    """For an `scvi-rs evaluate` that takes the cells to evaluate as its data: the held-out cells as an
    .h5ad of their own, written on first use."""
    def write():
        if not path.exists():
            import anndata
            a = anndata.read_h5ad(args.data, backed="r")
            a[heldout].to_memory().write_h5ad(path)
        return path
    return write


def run_seed(args, seed, rs, st, part, obs):
    import json

    import numpy as np

    import latent_metrics
    from stats import median_after_first

    d = part / "runs" / f"seed{seed}"
    rs_dir, st_dir = d / "scvi-rs", d / "scvi-tools"
    rs_dir.mkdir(parents=True)
    st_dir.mkdir(parents=True)

    log(f"seed {seed}: scvi-rs train")
    r = rs.train(args, seed, rs_dir / "model", rs_dir)
    heldout = sorted(r["split"]["validation"])
    split_path = d / "split.json"
    split_path.write_text(json.dumps({"train": r["split"]["train"], "validation": r["split"]["validation"],
                                      "heldout": heldout}))
    log(f"seed {seed}: scvi-rs trained in {r['run']['wall_s']:.1f} s; evaluate and embed")
    r["evaluation"] = rs.evaluate(rs_dir / "model", args.data, heldout_writer(args, heldout, d / "heldout.h5ad"),
                                  args.n_mc_samples, rs_dir)
    z_all, r["embedding"] = rs.embed(rs_dir / "model", args.data, rs_dir / "latent_all.npy", rs_dir)
    z_rs = z_all[heldout]
    np.save(rs_dir / "latent_heldout.npy", z_rs)
    (rs_dir / "latent_all.npy").unlink()  # all cells' latents: only the held-out ones are kept

    log(f"seed {seed}: scvi-tools train")
    t = st.train(args, seed, split_path, st_dir)
    log(f"seed {seed}: scvi-tools trained in {t['run']['wall_s']:.1f} s; evaluate")
    t["evaluation"], z_st = st.evaluate(args, seed, split_path, st_dir)

    labels = obs[args.labels_key].to_numpy()[heldout]
    batches = obs[args.batch_key].to_numpy()[heldout]
    out = {"seed": seed, "heldout_cells": len(heldout)}
    log(f"seed {seed}: latent metrics")
    for tool, rec, z in [("scvi-rs", r, z_rs), ("scvi-tools", t, z_st)]:
        rec.pop("split", None)
        rec["latent"] = latent_metrics.all_metrics(z, labels, batches)
        ev = rec["evaluation"]
        rec["figures"] = {
            "s_per_epoch": median_after_first(rec["epoch_seconds"]),
            "train_wall_s": rec["run"]["wall_s"],
            "train_peak_rss_mb": rec["run"]["peak_rss_mb"],
            "gpu_peak_mb": rec["run"]["gpu_peak_mb_nvidia_smi"],
            "elbo": ev.get("elbo"),
            "reconstruction_error": ev.get("reconstruction_error"),
            "marginal_ll": ev.get("marginal_ll"),
            **{k: rec["latent"][k] for k in ["knn_purity", "batch_entropy", "silhouette", "nmi", "ari"]},
        }
        rec["train"] = rec.pop("run")
        out[tool] = rec
    return out, (z_rs, z_st, labels, batches)


def relocated(value, old, new):
    """value with every string path under the OUT.partial folder renamed to the final folder."""
    if isinstance(value, dict):
        return {k: relocated(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [relocated(v, old, new) for v in value]
    if isinstance(value, str) and value.startswith(old):
        return new + value[len(old):]
    return value


def main(argv):
    try:
        args, exe, data_info = checked(argv)
    except UsageError as e:
        print(f"compare.sh: error: {e}", file=sys.stderr)
        return 2

    import anndata
    import h5py

    import machine_info
    import plots
    import report
    import stats
    from latent_metrics import umap_coords
    from measure import RunFailed, thread_env
    from runner_scvi_rs import ScviRs
    from runner_scvi_tools import ScviTools

    env = thread_env(args.threads)
    rs = ScviRs(exe, args.threads, args.device, env)
    st = ScviTools(args.threads, args.device, env)
    with h5py.File(args.data, "r") as f:
        obs = anndata.io.read_elem(f["obs"])
    load = os.getloadavg()
    if load[0] > 0.5:
        log(f"warning: the 1-minute load average is {load[0]:.2f} before the first run; timings (PyTorch's "
            "above all) suffer on a busy machine, and the report will say so")
    if rs.evaluate_help() is None:
        log("note: this scvi-rs has no `evaluate` command; its held-out reconstruction error and marginal LL "
            "will read n/a (ELBO from `scvi-rs elbo`)")

    part = outdir.start(args.out)
    log(f"writing to {part} (renamed to {args.out} when complete)")
    res = {
        "command": "benchmarks/compare.sh " + shlex.join(argv),
        "config": {"data": str(args.data), "batch_key": args.batch_key, "labels_key": args.labels_key,
                   "max_epochs": args.max_epochs, "seeds": args.seed_list, "device": args.device,
                   "threads": args.threads, "n_mc_samples": args.n_mc_samples, "batch_size": args.batch_size,
                   "model_options": cli_args.model_options(args), "scvi_rs_binary": exe,
                   "python_env": str(args.venv)},
        "data": data_info,
        "machine": machine_info.machine(args.device),
        "software": machine_info.software(rs.version()),
        "seeds": [],
    }
    t0 = time.time()
    try:
        first = None
        for seed in args.seed_list:
            rec, latents = run_seed(args, seed, rs, st, part, obs)
            res["seeds"].append(rec)
            first = first or latents
            report.write_json(res, part / "results.json")  # kept as it grows, should a later seed fail
        log("UMAPs and plots")
        z_rs, z_st, labels, batches = first
        coords = {"scvi-rs": umap_coords(z_rs), "scvi-tools": umap_coords(z_st)}
        res["umap_seed"] = args.seed_list[0]
        res["summary"] = stats.summarise(res["seeds"])
        res["total_wall_s"] = time.time() - t0
        res = relocated(res, str(part), str(args.out))
        plots.training_curves(res["seeds"], part / "training_curves.png")
        plots.umaps(coords, labels.astype(str), batches.astype(str), part / "umap.png")
        plots.time_and_memory(res["seeds"], part / "time_memory.png")
        plots.quality(res["seeds"], part / "quality.png")
        report.write_json(res, part / "results.json")
        report.write_markdown(res, part / "report.md")
    except RunFailed as e:
        print(f"compare.sh: error: a run failed; what was done so far is in {part}:\n{e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"compare.sh: interrupted; what was done so far is in {part} (the next run replaces it)",
              file=sys.stderr)
        return 130
    outdir.finish(part, args.out)
    log(f"done in {time.time() - t0:.0f} s: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
