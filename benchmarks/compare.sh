#!/usr/bin/env bash
# scvi-rs and scvi-tools side by side on one data set, with a report (issue 12):
#
#   benchmarks/compare.sh data.h5ad --batch-key stim --labels-key cell_type --max-epochs 50 \
#       [--device cpu|cuda] [--seeds 3] [--threads N] [--out report/] [--force]
#
# Checks the input, the output folder and the scvi-rs binary (cargo build --release, or --scvi-rs
# PATH) first, builds or reuses the pinned Python environment benchmarks/.venv (requirements.txt;
# --venv DIR elsewhere), then trains both tools seed after seed and writes report.md, results.json
# and PNG plots. All options: benchmarks/compare.sh --help. The work is done by compare.py; this
# wrapper only finds a Python to start it with (PYTHON=python3.11 to choose one).
set -euo pipefail
py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1; then
  echo "compare.sh: error: '$py' not found; install Python >= 3.10 (with venv and pip) or set PYTHON" >&2
  exit 2
fi
exec "$py" "$(dirname "${BASH_SOURCE[0]}")/compare.py" "$@"
