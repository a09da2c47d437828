"""The few statistics the report uses, and the list of figures it summarises."""

import math
import statistics

TOOLS = ["scvi-rs", "scvi-tools"]

# (key in a tool's per-seed "figures", label, unit, what is better, kind). "cost" rows get the
# ratio scvi-rs / scvi-tools, "quality" rows the difference scvi-rs - scvi-tools.
FIGURES = [
    ("s_per_epoch", "time per epoch, median after the first", "s", "lower", "cost"),
    ("train_wall_s", "training wall time, whole process", "s", "lower", "cost"),
    ("train_peak_rss_mb", "peak RSS of training", "MB", "lower", "cost"),
    ("gpu_peak_mb", "peak GPU memory of training (nvidia-smi)", "MB", "lower", "cost"),
    ("elbo", "held-out ELBO", "nats/cell", "higher", "quality"),
    ("reconstruction_error", "held-out reconstruction error", "nats/cell", "lower", "quality"),
    ("marginal_ll", "held-out marginal log-likelihood", "nats/cell", "higher", "quality"),
    ("knn_purity", "kNN cell-type purity (k = 15)", "", "higher", "quality"),
    ("batch_entropy", "batch-mixing entropy (k = 50, normalised)", "", "higher", "quality"),
    ("silhouette", "cell-type silhouette", "", "higher", "quality"),
    ("nmi", "Leiden NMI vs labels", "", "higher", "quality"),
    ("ari", "Leiden ARI vs labels", "", "higher", "quality"),
]


def median_after_first(seconds):
    """Time per epoch: the first epoch carries one-off costs (allocation, start-up of thread pools,
    page faults), so the median of the others; with a single epoch, that epoch."""
    rest = seconds[1:] or seconds
    return statistics.median(rest)


def number(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def describe(values):
    """Mean, sample standard deviation, min, max over the seeds' numbers (text such as 'n/a' skipped)."""
    nums = [number(v) for v in values]
    nums = [v for v in nums if v is not None]
    if not nums:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {"n": len(nums), "mean": statistics.fmean(nums),
            "sd": statistics.stdev(nums) if len(nums) > 1 else None, "min": min(nums), "max": max(nums)}


def summarise(seeds):
    """For each figure: each tool's description over seeds, and the ratio or difference of means."""
    out = {}
    for key, label, unit, better, kind in FIGURES:
        per_tool = {t: describe([s[t]["figures"].get(key) for s in seeds]) for t in TOOLS}
        if all(per_tool[t]["n"] == 0 for t in TOOLS):
            continue
        a, b = per_tool["scvi-rs"]["mean"], per_tool["scvi-tools"]["mean"]
        entry = {"label": label, "unit": unit, "better": better, "kind": kind, **per_tool}
        if a is not None and b is not None:
            if kind == "cost":
                entry["ratio_scvi_rs_over_scvi_tools"] = a / b if b else None
            else:
                entry["difference_scvi_rs_minus_scvi_tools"] = a - b
        out[key] = entry
    return out
