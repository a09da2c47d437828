"""The benchmark's own Python environment: a venv (benchmarks/.venv unless --venv says otherwise)
with the exact versions of requirements.txt. Built once, reused while requirements.txt and the
Python version are unchanged (a stamp file records them), rebuilt (pip brings it to the pins) when
either changes. Standard library only: it runs under the system python3 before the venv exists."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from cli_args import UsageError

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
STAMP = ".compare-env-stamp"
MIN_PYTHON = (3, 10)

# Run inside the venv: every pinned distribution must be installed at its pinned version, and the
# modules the bench imports must import.
_VERIFY = r"""
import json, sys
from importlib import metadata
pins = json.loads(sys.argv[1])
wrong = {}
for name, want in pins.items():
    try:
        got = metadata.version(name)
    except metadata.PackageNotFoundError:
        got = None
    if got is None or got.split("+")[0] != want:
        wrong[name] = got
if wrong:
    print(json.dumps({"wrong": wrong}))
    sys.exit(1)
import scvi, torch, lightning, anndata, scanpy, igraph, umap, sklearn, matplotlib, h5py  # noqa
print(json.dumps({"ok": True}))
"""


def pins():
    out = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[name.strip()] = version.strip()
    return out


def _stamp(python):
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True,
                             text=True).stdout.strip()
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest() + " " + version


def _fail(venv, what, log=None):
    msg = f"the Python environment {venv} could not be built: {what}"
    if log is not None and Path(log).exists():
        tail = Path(log).read_text(errors="replace").strip().splitlines()[-15:]
        msg += f"\n  the end of {log}:\n    " + "\n    ".join(tail)
    msg += ("\n  it needs python >= 3.10 with venv and pip (Debian: apt-get install python3-venv), PyPI, "
            "and ~7 GB of disk; another interpreter: PYTHON=python3.11 benchmarks/compare.sh ...; "
            "another place: --venv DIR")
    raise UsageError(msg)


def ensure(venv: Path) -> Path:
    """The venv's python, built or checked. Raises UsageError, saying why, when it cannot be built."""
    if sys.version_info < MIN_PYTHON:
        raise UsageError(f"python >= 3.10 is needed to build the environment; this is {sys.version.split()[0]} "
                         f"({sys.executable}); set PYTHON=python3.11 (or newer)")
    python = venv / "bin" / "python"
    stamp = venv / STAMP
    if python.exists() and stamp.exists() and stamp.read_text() == _stamp(python):
        print(f"compare.sh: reusing the Python environment {venv}", file=sys.stderr)
        return python
    if venv.exists() and not python.exists():
        if any(venv.iterdir()):
            raise UsageError(f"{venv} exists but is not a Python environment; remove it or pass --venv DIR")
    if not python.exists():
        print(f"compare.sh: creating the Python environment {venv}", file=sys.stderr)
        p = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if p.returncode != 0:
            said = (p.stderr.strip() or p.stdout.strip()).splitlines()
            _fail(venv, f"'{sys.executable} -m venv' failed: {said[-1] if said else 'no message'}")
    log = venv / "pip.log"
    print(f"compare.sh: installing the pinned packages of {REQUIREMENTS.name} into {venv} "
          f"(the first time: several minutes and ~7 GB; log: {log})", file=sys.stderr)
    with open(log, "w") as f:
        p = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r",
                            str(REQUIREMENTS)], stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        _fail(venv, "pip install -r benchmarks/requirements.txt failed", log)
    p = subprocess.run([str(python), "-c", _VERIFY, json.dumps(pins())], capture_output=True, text=True)
    if p.returncode != 0:
        said = (p.stdout.strip() or p.stderr.strip()).splitlines()
        _fail(venv, "after pip, the pinned versions or imports do not check out: "
              + (said[-1] if said else "no message"))
    stamp.write_text(_stamp(python))
    print(f"compare.sh: the Python environment {venv} is ready", file=sys.stderr)
    return python
