"""The command line of benchmarks/compare.sh (a contract: keep these names) and the checks on it
that need nothing but the standard library, so that they run before any environment is built."""

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

USAGE_EXAMPLE = (
    "benchmarks/compare.sh data.h5ad --batch-key stim --labels-key cell_type --max-epochs 50 "
    "[--device cpu|cuda] [--seeds 3] [--threads N] [--out report/] [--force]"
)

# Model options passed identically to both tools (scvi-rs flag, scvi-tools SCVI() keyword).
# Left unset, each tool uses its own default, and the defaults are the same (README.md).
MODEL_OPTIONS = {
    "n_hidden": ("--n-hidden", int),
    "n_latent": ("--n-latent", int),
    "n_layers": ("--n-layers", int),
    "gene_likelihood": ("--gene-likelihood", str),
    "dispersion": ("--dispersion", str),
}
GENE_LIKELIHOODS = ["zinb", "nb", "poisson"]
DISPERSIONS = ["gene", "gene-batch", "gene-label", "gene-cell"]


class UsageError(Exception):
    """A problem with the user's input, reported as one clear line before any long run."""


def cpu_threads_available():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def parser():
    p = argparse.ArgumentParser(
        prog="benchmarks/compare.sh",
        description="Train scvi-rs and scvi-tools on the same cells, split, epochs and model options, "
        "one after the other for each seed; evaluate both the same way on the held-out cells; write a "
        "folder with report.md, results.json and PNG plots.",
        epilog="Example: " + USAGE_EXAMPLE,
    )
    p.add_argument("data", help="an .h5ad file with raw counts in X")
    p.add_argument("--batch-key", required=True, help="obs column with the batch of each cell")
    p.add_argument("--labels-key", required=True,
                   help="obs column with the cell type of each cell (for the latent-space metrics)")
    p.add_argument("--max-epochs", type=int, required=True, help="epochs, the same for both tools")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1, run one after the other (default 3)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for both tools (default: every core this process may use)")
    p.add_argument("--out", default=None,
                   help="output folder (default: compare-<data name>-<device> in the current directory)")
    p.add_argument("--force", action="store_true",
                   help="replace --out if it is an earlier report of this script")
    p.add_argument("--scvi-rs", dest="scvi_rs", default=None,
                   help="the scvi-rs binary (default: build it with cargo build --release)")
    p.add_argument("--venv", default=str(ROOT / "benchmarks" / ".venv"),
                   help="the pinned Python environment, created or reused (default: benchmarks/.venv)")
    p.add_argument("--n-mc-samples", type=int, default=1000,
                   help="importance samples per cell for the marginal log-likelihood (scvi-tools' default: 1000)")
    p.add_argument("--batch-size", type=int, default=None, help="minibatch size for both (default: each tool's, 128)")
    for name, (flag, kind) in MODEL_OPTIONS.items():
        extra = {}
        if name == "gene_likelihood":
            extra["choices"] = GENE_LIKELIHOODS
        if name == "dispersion":
            extra["choices"] = DISPERSIONS
        p.add_argument(flag, dest=name, type=kind, default=None, help="model option for both (default: each tool's)",
                       **extra)
    return p


def parse(argv):
    args = parser().parse_args(argv)
    args.data = Path(args.data)
    if args.threads is None:
        args.threads = cpu_threads_available()
    if args.out is None:
        args.out = f"compare-{args.data.stem}-{args.device}"
    args.out = Path(args.out)
    args.venv = Path(args.venv)
    args.seed_list = list(range(args.seeds))
    return args


def check_numbers(args):
    for name in ["max_epochs", "seeds", "threads", "n_mc_samples"]:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ["batch_size", "n_hidden", "n_latent", "n_layers"]:
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {v}")


def model_options(args):
    """The model options the user set, by scvi-tools keyword (None: left at both tools' default)."""
    return {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k) is not None}
