"""What the report states about the run's circumstances: the machine (CPU model, cores, memory,
GPU) and the software (scvi-rs's version and commit, the Python packages)."""

import os
import platform
import subprocess
import sys

from cli_args import ROOT, cpu_threads_available


def _first(path, key):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine(device):
    mem_kb = _first("/proc/meminfo", "MemTotal")
    out = {
        "cpu_model": _first("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "logical_cpus": os.cpu_count(),
        "cpus_usable": cpu_threads_available(),
        "memory_gib": round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None,
        "os": platform.platform(),
        "hostname": platform.node(),
    }
    if device == "cuda":
        try:
            out["gpu"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out["gpu"] = "nvidia-smi not available"
    return out


def _git(*args):
    p = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else None


def software(scvi_rs_version):
    from importlib import metadata
    packages = {}
    for name in ["scvi-tools", "torch", "lightning", "anndata", "numpy", "scipy", "pandas", "scanpy", "igraph",
                 "umap-learn", "scikit-learn", "matplotlib"]:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    freeze = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "scvi-rs": scvi_rs_version,
        "scvi-rs_commit": _git("rev-parse", "HEAD"),
        "scvi-rs_tree_modified": bool(status) if status is not None else None,
        "python": sys.version.split()[0],
        "packages": packages,
        "pip_freeze": freeze,
    }
