"""report.md (summary tables first, then the plots, then the details) and results.json."""

import json
import math
import shlex
from pathlib import Path

from stats import TOOLS, number

BUSY_OTHER_CORES = 0.25  # other processes using more than this many cores on average: flagged


def _fmt(v, digits=4):
    """digits significant digits, without exponents (whole numbers from 10 ** digits on)."""
    v = number(v)
    if v is None:
        return "n/a"
    if v == 0 or abs(v) >= 10 ** (digits - 1):
        return f"{v:,.0f}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(v))))
    return f"{v:,.{decimals}f}"


def _mean_sd(d):
    if d["mean"] is None:
        return "n/a"
    s = _fmt(d["mean"])
    return s if d["sd"] is None else f"{s} ± {_fmt(d['sd'], 2)}"


def _summary_tables(summary, n_seeds):
    spread = "mean ± sd over seeds" if n_seeds > 1 else "one seed"
    cost = ["| | scvi-rs | scvi-tools | scvi-rs / scvi-tools |", "| --- | ---: | ---: | ---: |"]
    qual = ["| held-out cells | better | scvi-rs | scvi-tools | scvi-rs − scvi-tools |",
            "| --- | :---: | ---: | ---: | ---: |"]
    for e in summary.values():
        label = e["label"] + (f" ({e['unit']})" if e["unit"] else "")
        if e["kind"] == "cost":
            r = e.get("ratio_scvi_rs_over_scvi_tools")
            cost.append(f"| {label} | {_mean_sd(e['scvi-rs'])} | {_mean_sd(e['scvi-tools'])} | "
                        f"{'n/a' if r is None else '**' + _fmt(r, 3) + '**'} |")
        else:
            d = e.get("difference_scvi_rs_minus_scvi_tools")
            label = label.replace("held-out ", "")
            qual.append(f"| {label} | {e['better']} | {_mean_sd(e['scvi-rs'])} | {_mean_sd(e['scvi-tools'])} | "
                        f"{'n/a' if d is None else ('+' if d > 0 else '') + _fmt(d, 3)} |")
    return [f"### Speed and memory ({spread})", "", *cost, "",
            f"### Quality on the held-out cells ({spread})", "", *qual]


def _per_seed_table(seeds):
    cols = [("s/epoch", "s_per_epoch"), ("wall s", "train_wall_s"), ("RSS MB", "train_peak_rss_mb"),
            ("ELBO", "elbo"), ("rec. error", "reconstruction_error"), ("marg. LL", "marginal_ll"),
            ("purity", "knn_purity"), ("mixing", "batch_entropy"), ("silhouette", "silhouette"),
            ("NMI", "nmi"), ("ARI", "ari")]
    if any(number(s[t]["figures"].get("gpu_peak_mb")) is not None for s in seeds for t in TOOLS):
        cols.insert(3, ("GPU MB", "gpu_peak_mb"))
    lines = ["| seed | tool | " + " | ".join(c for c, _ in cols) + " |",
             "| ---: | --- | " + " | ".join("---:" for _ in cols) + " |"]
    for s in seeds:
        for t in TOOLS:
            f = s[t]["figures"]
            lines.append(f"| {s['seed']} | {t} | " + " | ".join(_fmt(f.get(k)) for _, k in cols) + " |")
    return lines


def _load_table(seeds):
    lines = ["| seed | tool | load before (1 / 5 / 15 min) | load during, mean / max | load after (1 min) | "
             "other processes' cores, mean | CPU s / wall s |",
             "| ---: | --- | --- | --- | ---: | ---: | ---: |"]
    for s in seeds:
        for t in TOOLS:
            r = s[t]["train"]
            other = r["other_processes_cores"]
            flag = " ⚠" if other is not None and other > BUSY_OTHER_CORES else ""
            lines.append(
                f"| {s['seed']} | {t} | {' / '.join(f'{x:.2f}' for x in r['load_before'])} | "
                f"{r['load1_during_mean']:.2f} / {r['load1_during_max']:.2f} | {r['load_after'][0]:.2f} | "
                f"{_fmt(other, 2)}{flag} | {r['cpu_s'] / r['wall_s']:.2f} |")
    return lines


def busy_runs(seeds):
    return [(s["seed"], t) for s in seeds for t in TOOLS
            if (s[t]["train"]["other_processes_cores"] or 0) > BUSY_OTHER_CORES]


def _n_categories(col):
    return col.get("n_categories", col.get("n_unique", "?"))


def _header(res):
    cfg, data, seeds = res["config"], res["data"], res["seeds"]
    lines = [f"# scvi-rs and scvi-tools side by side: {Path(cfg['data']).name}", "",
             f"{data['n_cells']:,} cells x {data['n_genes']:,} genes, batch key `{cfg['batch_key']}` "
             f"({_n_categories(data['batch'])} batches), labels `{cfg['labels_key']}` "
             f"({_n_categories(data['labels'])} types); {cfg['max_epochs']} epochs, {len(seeds)} seed(s), "
             f"device {cfg['device']}, {cfg['threads']} thread(s) for both tools. Held-out cells: the "
             f"{seeds[0]['heldout_cells']:,} validation cells of each seed's split (the same for both tools, "
             "never trained on)."]
    if cfg["max_epochs"] < 10 or len(seeds) < 3:
        lines += ["", "**Smoke-sized run** (few epochs or seeds): the figures show that the pipeline works, "
                  "not how the tools compare."]
    busy = busy_runs(seeds)
    if busy:
        lines += ["", f"**The machine was not quiet**: other processes used more than {BUSY_OTHER_CORES} of a "
                  "core on average during " + ", ".join(f"{t} seed {s}" for s, t in busy)
                  + " (see the load table below); those timings are not fair figures, PyTorch's above all."]
    return lines


def _summary(res):
    lines = ["## Summary", "", *_summary_tables(res["summary"], len(res["seeds"])), "",
             "Ratios below 1 mean scvi-rs takes less. ELBO and marginal log-likelihood: scvi-tools' `get_elbo` "
             "and `get_marginal_ll` signs (higher is better); reconstruction error: `get_reconstruction_error` "
             "(negative log-likelihood, lower is better). Each tool evaluates its own model."]
    if any(isinstance(s["scvi-rs"]["figures"].get("marginal_ll"), str) for s in res["seeds"]):
        lines += ["", "scvi-rs's reconstruction error and marginal log-likelihood read n/a: this scvi-rs has no "
                  "`evaluate` command, so its held-out ELBO comes from `scvi-rs elbo --subset validation`."]
    return lines


def _plots(res):
    return ["## Plots", "",
            "![Training curves](training_curves.png)", "",
            "Negative ELBO per cell against the epoch (`history.csv` / `model.history`: `elbo_train`, "
            "`elbo_validation`), mean over seeds with the seeds' range shaded.", "",
            "![UMAPs](umap.png)", "",
            f"UMAPs of the two latent spaces (posterior means) of the held-out cells, seed {res['umap_seed']}, "
            "coloured by cell type (top) and batch (bottom).", "",
            "![Time and memory](time_memory.png)", "",
            "Bars: mean over seeds; dots: the seeds; whiskers: standard deviation.", "",
            "![Quality](quality.png)"]


METHOD = [
    "- One seed after the other, scvi-rs first, never two trainings at once. scvi-rs decides the seeded "
    "90 / 10 split (`split.json`); scvi-tools trains on exactly those cells through "
    "`datasplitter_kwargs={\"external_indexing\": [train, validation, []]}`.",
    "- Same epochs, batch key, labels key and model options for both; everything else at each tool's "
    "defaults (the same values: README.md). Validation every epoch in both (scvi-rs always does it; "
    "scvi-tools is given `check_val_every_n_epoch=1`), so an epoch is the same work.",
    "- Time per epoch: scvi-rs's `history.csv` `seconds`; scvi-tools: a Lightning callback from the start "
    "of one training epoch to the next (validation included). Median of the epochs after the first. Wall "
    "time: the whole training process (start-up and data loading included). Peak RSS: the training "
    "process's own maximum resident set, started by a small launcher (`benchmarks/launch.py`, ~10 MB) so "
    "that the driver's memory is not charged to it; scvi-tools trains in a process of its own and "
    "evaluates in another, so its figure is training alone, as scvi-rs's is.",
    "- Threads: `OMP_NUM_THREADS`, `MKL_NUM_THREADS`, `OPENBLAS_NUM_THREADS` set to the same count for "
    "both; `torch.set_num_threads` for PyTorch, `--threads` for scvi-rs.",
    "- Latent metrics: the same Python code (`benchmarks/latent_metrics.py`) on both tools' latent means "
    "of the held-out cells: kNN purity with 15 neighbours, batch entropy with 50 neighbours divided by "
    "log(batches), silhouette of the labels, NMI / ARI of Leiden clusters of the 15-neighbour graph at "
    "the resolution in 0.1..2.0 with the best NMI.",
]


def _method(res):
    s0 = res["seeds"][0]
    lines = ["## How it was run", "", "```sh", res["command"], "```", "", *METHOD, "",
             f"Commands of seed {s0['seed']}:", "", "```sh"]
    for t in TOOLS:
        lines.append(shlex.join(s0[t]["train"]["command"]))
        for step in ("evaluation", "embedding"):
            if s0[t].get(step, {}).get("command"):
                lines.append(shlex.join(s0[t][step]["command"]))
    return lines + ["```", "", "scvi-tools calls (in `benchmarks/scvi_tools_child.py`):", "", "```python",
                    *s0["scvi-tools"]["calls"], "```"]


def _circumstances(res):
    cfg, m, sw, seeds = res["config"], res["machine"], res["software"], res["seeds"]
    commit = (sw["scvi-rs_commit"] or "unknown")[:12] + (" with local changes" if sw["scvi-rs_tree_modified"] else "")
    return ["## Machine, versions, threads, load", "",
            f"- Machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs ({m['cpus_usable']} usable by this "
            f"run), {m['memory_gib']} GiB, {m['os']}" + (f"; GPU: {m['gpu']}" if m.get("gpu") else ""),
            f"- {sw['scvi-rs']} (`{cfg['scvi_rs_binary']}`); the repository of this script at {commit}",
            "- Python " + sw["python"] + ": " + ", ".join(f"{k} {v}" for k, v in sw["packages"].items()),
            f"- Threads: {cfg['threads']} for both (scvi-rs `--threads {cfg['threads']}`; torch reported "
            f"{seeds[0]['scvi-tools'].get('torch_threads')} after `torch.set_num_threads`).",
            "",
            "Load during each training run (1-minute load average, sampled every second; other processes' "
            "cores = the machine's busy CPU time less the run's own, over the wall time):",
            "", *_load_table(seeds)]


FILES = ["## Files", "",
         "- `results.json`: every figure here and more (per-epoch times and losses, commands, load samples, "
         "the full package list).",
         "- `runs/seedN/scvi-rs/`, `runs/seedN/scvi-tools/`: models, logs, the held-out latents; "
         "`runs/seedN/split.json`: the split both tools used."]


def write_markdown(res, path: Path):
    parts = [_header(res), _summary(res), _plots(res), ["## Per seed", "", *_per_seed_table(res["seeds"])],
             _method(res), _circumstances(res), FILES]
    path.write_text("\n\n".join("\n".join(p) for p in parts) + "\n")


def _plain(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON: {type(o)}")


def write_json(res, path: Path):
    path.write_text(json.dumps(res, indent=1, default=_plain))
