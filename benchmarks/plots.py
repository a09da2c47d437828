"""The report's PNG plots (matplotlib, no display needed). Both tools keep one colour throughout."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from stats import FIGURES, TOOLS, number  # noqa: E402

COLOURS = {"scvi-rs": "#E66100", "scvi-tools": "#5D3A9B"}
DPI = 110


def _save(fig, path):
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def training_curves(seeds, path):
    """Negative ELBO per cell (scvi-tools' `elbo_*` history: lower is better) against the epoch, on
    the training and the validation (held-out) cells; the line is the mean over seeds and the band
    the seeds' range."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in [(axes[0], "elbo_train", "training cells"), (axes[1], "elbo_validation", "held-out cells")]:
        for tool in TOOLS:
            curves = [s[tool]["history"].get(key) for s in seeds]
            curves = [np.array([np.nan if v is None else v for v in c], dtype=float) for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            m = np.stack([c[:n] for c in curves])
            x = np.arange(1, n + 1)
            ax.plot(x, np.nanmean(m, axis=0), color=COLOURS[tool], label=tool, marker="o" if n <= 10 else None)
            if len(curves) > 1:
                ax.fill_between(x, np.nanmin(m, axis=0), np.nanmax(m, axis=0), color=COLOURS[tool], alpha=0.2)
        ax.set_title(f"ELBO loss, {title}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("negative ELBO per cell (lower is better)")
    axes[0].legend()
    _save(fig, path)


def umaps(coords, labels, batches, path):
    """coords: tool -> (n, 2). Columns: the tools; rows: coloured by cell type, then by batch."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 10))
    size = max(1.0, min(8.0, 12000 / len(labels)))
    for row, (values, what) in enumerate([(labels, "cell type"), (batches, "batch")]):
        cats = sorted(set(values))
        cmap = plt.get_cmap("tab10" if len(cats) <= 10 else "tab20")
        for col, tool in enumerate(TOOLS):
            ax = axes[row, col]
            xy = coords[tool]
            for i, c in enumerate(cats):
                sel = values == c
                ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=cmap(i % cmap.N), label=str(c), linewidths=0)
            ax.set_title(f"{tool}: coloured by {what}")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=12 / size ** 0.5,
                            frameon=False, fontsize=9)
    _save(fig, path)


def _bars(ax, seeds, key, title, zoom=False):
    """Per tool: the mean over seeds (a bar, or for zoom a large dot), the seeds as small dots and
    their standard deviation as a whisker. zoom: for likelihoods, large numbers whose differences
    matter and not their distance from zero, the axis spans the values instead of starting at zero."""
    shown = []
    for i, tool in enumerate(TOOLS):
        vals = [number(s[tool]["figures"].get(key)) for s in seeds]
        vals = [v for v in vals if v is not None]
        if not vals:
            # In axes height, not data: a zoomed axis may lie far from zero.
            ax.text(i, 0.5, "n/a", ha="center", va="center", color=COLOURS[tool], transform=ax.get_xaxis_transform())
            continue
        mean = float(np.mean(vals))
        sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        if zoom:
            ax.errorbar(i, mean, yerr=sd if sd else None, fmt="o", markersize=9, color=COLOURS[tool], capsize=5)
        else:
            ax.bar(i, mean, color=COLOURS[tool], alpha=0.85, yerr=sd if sd else None, capsize=4)
        ax.scatter([i] * len(vals), vals, color="black", s=10, zorder=3)
        ax.annotate(f"{mean:.4g}", (i, mean), ha="center", va="bottom", fontsize=8,
                    xytext=(12 if zoom else 0, 3), textcoords="offset points")
        shown += vals + [mean - sd, mean + sd]
    if zoom and shown:
        lo, hi = min(shown), max(shown)
        pad = max(hi - lo, 1e-3 * max(abs(lo), abs(hi)), 1e-9)
        ax.set_ylim(lo - 0.5 * pad, hi + 0.5 * pad)
    ax.set_xlim(-0.6, len(TOOLS) - 0.4)
    ax.set_xticks(range(len(TOOLS)), TOOLS)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _mean(seeds, tool, key):
    vals = [number(s[tool]["figures"].get(key)) for s in seeds]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


ZOOMED = {"elbo", "reconstruction_error", "marginal_ll"}


def _panels(seeds, kind, ncols):
    keys = [(k, label, unit, better) for k, label, unit, better, kd in FIGURES
            if kd == kind and any(number(s[t]["figures"].get(k)) is not None for s in seeds for t in TOOLS)]
    ncols = min(ncols, max(1, len(keys)))
    nrows = (len(keys) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 3.4 * nrows), squeeze=False)
    for ax, (key, label, unit, better) in zip(axes.flat, keys, strict=False):
        title = f"{label}\n({unit + ', ' if unit else ''}{better} is better)"
        if kind == "cost":
            means = [_mean(seeds, tool, key) for tool in TOOLS]
            if None not in means and means[1]:
                title += f"\nscvi-rs / scvi-tools = {means[0] / means[1]:.3g}"
        _bars(ax, seeds, key, title, zoom=key in ZOOMED)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def time_and_memory(seeds, path):
    _save(_panels(seeds, "cost", 4), path)


def quality(seeds, path):
    _save(_panels(seeds, "quality", 4), path)
