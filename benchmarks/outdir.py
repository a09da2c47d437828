"""The output folder: refused if it exists (unless --force and it is an earlier report of this
script), written under OUT.partial and renamed into place only when the report is complete, so a
failed or interrupted run never leaves a half report under the user's name nor deletes the old one."""

import shutil
import tempfile
from pathlib import Path

from cli_args import UsageError

MARKER = ".compare-report"


def _ours(path: Path) -> bool:
    return path.is_dir() and (path / MARKER).is_file()


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def check(out: Path, force: bool):
    if out.exists() or out.is_symlink():
        if not force:
            raise UsageError(f"the output folder {out} exists; pass --force to replace it, or choose another --out")
        if not _ours(out):
            raise UsageError(f"refusing to replace {out}: it has no {MARKER} marker, so this script did not write it")
    part = partial_path(out)
    if (part.exists() or part.is_symlink()) and not _ours(part):
        raise UsageError(f"{part} exists and was not written by this script; move it away first")
    if not out.parent.exists():
        raise UsageError(f"the folder that should hold --out, {out.parent}, does not exist")


def start(out: Path) -> Path:
    """An empty, marked OUT.partial (a marked leftover of an interrupted run is replaced)."""
    part = partial_path(out)
    if _ours(part):
        shutil.rmtree(part)
    part.mkdir()
    (part / MARKER).write_text("written by benchmarks/compare.sh; --force may replace this folder\n")
    return part


def finish(part: Path, out: Path):
    """Moves the complete report into place; an earlier report (checked to be ours) goes only now."""
    trash = None
    if _ours(out):
        trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=out.name + ".old-"))
        out.rename(trash / out.name)
    part.rename(out)
    if trash is not None:
        shutil.rmtree(trash)
