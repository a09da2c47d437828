"""Shared helpers: the repository's paths, the scvi-rs binary, small simulated AnnData objects."""

import os
import shutil
import subprocess

import pytest

import scvi_rs
from simdata import simulated  # noqa: F401 (re-exported for the tests)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SHARED = os.path.join(ROOT, "..", "shared", "data")


def skip(why):
    """Skip with the reason (pytest -rs prints it)."""
    pytest.skip(why)


def binary():
    """The command line (SCVI_RS_BIN, else target/release/scvi-rs), or skip."""
    exe = os.environ.get("SCVI_RS_BIN") or os.path.join(ROOT, "target", "release", "scvi-rs")
    if not os.path.exists(exe):
        skip(f"no scvi-rs binary at {exe} (cargo build --release)")
    return exe


def cli(*args):
    """Run the command line; returns (returncode, stderr)."""
    p = subprocess.run([binary(), *map(str, args)], capture_output=True, text=True)
    return p.returncode, p.stderr


def fixture(*parts):
    return os.path.join(FIXTURES, *parts)


@pytest.fixture
def tmp(tmp_path):
    return tmp_path


@pytest.fixture(autouse=True)
def fixed_settings():
    """Every test starts from the defaults (seed 0, two threads: the same as the CLI runs)."""
    scvi_rs.settings.seed = 0
    scvi_rs.settings.num_threads = 2
    yield
    scvi_rs.settings.seed = 0
    scvi_rs.settings.num_threads = None


def rm(path):
    shutil.rmtree(path, ignore_errors=True)
