"""scvi-tools's side of a seed, from the driver: two measured child processes
(scvi_tools_child.py train, then evaluate), each given a JSON job."""

import json
import sys
from pathlib import Path

import numpy as np

from cli_args import model_options
from measure import run_measured

CHILD = Path(__file__).with_name("scvi_tools_child.py")


class ScviTools:
    def __init__(self, threads, device, env):
        self.threads, self.device = threads, device
        # scvi-tools and Lightning warn at length about things that are as intended here (the
        # external split, no logger); the warnings still land in the logs, not on the console.
        self.env = dict(env, PYTHONWARNINGS="ignore")

    def _job(self, args, seed, split_path, work: Path, **extra):
        job = {"data": str(args.data), "batch_key": args.batch_key, "labels_key": args.labels_key,
               "max_epochs": args.max_epochs, "seed": seed, "threads": self.threads, "device": self.device,
               "model_options": model_options(args), "batch_size": args.batch_size,
               "split": str(split_path), "model_dir": str(work / "model"), **extra}
        return job

    def _run(self, kind, job, work: Path):
        job_path = work / f"{kind}_job.json"
        job_path.write_text(json.dumps(job, indent=1))
        cmd = [sys.executable, CHILD, kind, job_path]
        run = run_measured(cmd, self.env, work / f"{kind}.out", work / f"{kind}.log", gpu=self.device == "cuda")
        with open(job["result"]) as f:
            return run, json.load(f)

    def train(self, args, seed, split_path: Path, work: Path):
        job = self._job(args, seed, split_path, work, result=str(work / "train_result.json"))
        run, got = self._run("train", job, work)
        return {"run": run, **got}

    def evaluate(self, args, seed, split_path: Path, work: Path):
        latent = work / "latent_heldout.npy"
        job = self._job(args, seed, split_path, work, result=str(work / "evaluate_result.json"),
                        n_mc_samples=args.n_mc_samples, latent=str(latent))
        run, got = self._run("evaluate", job, work)
        return {"command": run["command"], "wall_s": run["wall_s"], **got}, np.load(latent)
