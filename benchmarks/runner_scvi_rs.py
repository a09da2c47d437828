"""scvi-rs's side of a seed: train (which decides the split), the held-out evaluation by its own
`evaluate` (or, until that command exists, `elbo`), and the latent means from `embed`."""

import csv
import json
import subprocess
from pathlib import Path

import numpy as np

from cli_args import MODEL_OPTIONS
from measure import run_measured

NOT_AVAILABLE = "n/a (scvi-rs evaluate not available)"


class ScviRs:
    def __init__(self, exe, threads, device, env):
        self.exe, self.threads, self.device, self.env = str(exe), threads, device, env
        self._evaluate_help = None

    def _common(self):
        return ["--threads", str(self.threads), "--device", self.device]

    def version(self):
        return subprocess.run([self.exe, "--version"], capture_output=True, text=True, check=True).stdout.strip()

    def evaluate_help(self):
        """The help text of `scvi-rs evaluate`, or None where this build has no such command."""
        if self._evaluate_help is None:
            p = subprocess.run([self.exe, "evaluate", "--help"], capture_output=True, text=True)
            self._evaluate_help = p.stdout if p.returncode == 0 else ""
        return self._evaluate_help or None

    def train(self, args, seed, model_dir: Path, logs: Path):
        cmd = [self.exe, "train", args.data, "--batch-key", args.batch_key, "--labels-key", args.labels_key,
               "--max-epochs", str(args.max_epochs), "--seed", str(seed), "--out", model_dir, "--quiet",
               *self._common()]
        if args.batch_size is not None:
            cmd += ["--batch-size", str(args.batch_size)]
        for name, (flag, _) in MODEL_OPTIONS.items():
            if getattr(args, name) is not None:
                cmd += [flag, str(getattr(args, name))]
        run = run_measured(cmd, self.env, logs / "train.out", logs / "train.log", gpu=self.device == "cuda")
        with open(model_dir / "history.csv") as f:
            rows = list(csv.DictReader(f))
        with open(model_dir / "split.json") as f:
            split = json.load(f)
        seconds = [float(r["seconds"]) for r in rows]
        return {
            "run": run,
            "epoch_seconds": seconds,
            "history": {k: [float(r[k]) if r[k] != "" else None for r in rows]
                        for k in ["elbo_train", "elbo_validation", "reconstruction_loss_train",
                                  "reconstruction_loss_validation", "kl_local_train", "kl_local_validation"]
                        if k in rows[0]},
            "split": {"train": split["train_indices"], "validation": split["validation_indices"]},
        }

    def evaluate(self, model_dir: Path, data: Path, heldout_h5ad, n_mc_samples, logs: Path):
        """Held-out ELBO, reconstruction error and marginal LL (scvi-tools' signs). heldout_h5ad() writes
        the held-out cells as their own .h5ad for an `evaluate` that takes the cells as its data."""
        help_text = self.evaluate_help()
        if help_text is not None:
            if "--subset" in help_text:
                cmd = [self.exe, "evaluate", model_dir, data, "--subset", "validation"]
            else:
                cmd = [self.exe, "evaluate", model_dir, heldout_h5ad()]
            # The command is young (issue 9): pass only the options its help lists.
            extra = {"--n-mc-samples": str(n_mc_samples), "--threads": str(self.threads), "--device": self.device}
            for flag, value in extra.items():
                if flag in help_text:
                    cmd += [flag, value]
            run = run_measured(cmd, self.env, logs / "evaluate.out", logs / "evaluate.log", gpu=self.device == "cuda")
            got = json.loads((logs / "evaluate.out").read_text())
            keys = ["elbo", "reconstruction_error", "kl_local", "marginal_ll"]
            return {"command": run["command"], "wall_s": run["wall_s"], "source": "scvi-rs evaluate",
                    **{k: float(got[k]) for k in keys if k in got}}
        cmd = [self.exe, "elbo", model_dir, data, "--subset", "validation", *self._common()]
        run = run_measured(cmd, self.env, logs / "elbo.out", logs / "elbo.log", gpu=self.device == "cuda")
        got = json.loads((logs / "elbo.out").read_text())
        return {"command": run["command"], "wall_s": run["wall_s"], "source": "scvi-rs elbo (fallback)",
                "elbo": float(got["elbo"]), "reconstruction_error": NOT_AVAILABLE, "marginal_ll": NOT_AVAILABLE}

    def embed(self, model_dir: Path, data: Path, out_npy: Path, logs: Path):
        """The latent means of every cell of data, and the command that wrote them."""
        cmd = [self.exe, "embed", model_dir, data, "--out", out_npy, *self._common()]
        run = run_measured(cmd, self.env, logs / "embed.out", logs / "embed.log", gpu=self.device == "cuda")
        return np.load(out_npy), {"command": run["command"], "wall_s": run["wall_s"]}

