#!/usr/bin/env bash
# Create (or reuse) the reference virtual environment `.venv-ref` at the repository root:
# scvi-tools 1.4.2 (which pulls torch, lightning, anndata, scanpy's dependencies) plus the
# `safetensors` package that scripts/parity/make_fixture.py writes the fixture with.
#
# Idempotent: an existing venv is reused, and pip runs only for what is missing or at the
# wrong version. Prints the path of the venv's python on the last line.
#
#   scripts/parity/setup_venv.sh            # create / check
#   PYTHON=python3.11 scripts/parity/setup_venv.sh
#
# The install is large (~6 GB: torch comes with its CUDA wheels) and takes several minutes
# the first time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.venv-ref"
PY="${PYTHON:-python3}"
SCVI_VERSION="1.4.2"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi

if ! "$VENV/bin/python" - "$SCVI_VERSION" <<'EOF' 2>/dev/null
import sys
import scvi
sys.exit(0 if scvi.__version__ == sys.argv[1] else 1)
EOF
then
    echo "installing scvi-tools==$SCVI_VERSION into $VENV (this takes a while)" >&2
    "$VENV/bin/pip" install -q "scvi-tools==$SCVI_VERSION"
fi

if ! "$VENV/bin/python" -c 'import safetensors' 2>/dev/null; then
    echo "installing safetensors into $VENV" >&2
    "$VENV/bin/pip" install -q "safetensors>=0.4"
fi

"$VENV/bin/python" -c 'import scvi, torch, safetensors; print("scvi-tools", scvi.__version__, "torch", torch.__version__, "safetensors", safetensors.__version__)' >&2
echo "$VENV/bin/python"
