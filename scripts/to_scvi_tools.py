#!/usr/bin/env python3
"""Convert an scvi-rs model directory into one that scvi-tools' `SCVI.load` reads.

    python scripts/to_scvi_tools.py model/ scvi_model/          # needs torch (e.g. .venv-ref)
    # then, in Python:  scvi.model.SCVI.load("scvi_model/", adata=adata)

The weights already carry scvi-tools' state_dict names; this writes them into `model.pt` with the
registry and init parameters SCVI.load needs (batch and label categories, gene names, setup keys).
Only the options SCVI's constructor takes as arguments are carried over; `adata` must have the same
genes in the same order and the obs columns named at training.
"""
import importlib.util
import os
import sys

# The conversion lives in the Python package; loaded by path, so torch is the only need.
_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python", "scvi_rs", "_scvi_tools.py")
_spec = importlib.util.spec_from_file_location("_scvi_tools", _path)
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(f"wrote {_mod.convert(sys.argv[1], sys.argv[2])}")
