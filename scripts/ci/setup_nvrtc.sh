#!/usr/bin/env bash
# Make NVRTC (NVIDIA's run-time CUDA compiler) available on a machine without a CUDA toolkit or a GPU,
# so that `cargo test --test cuda_kernels_compile` compiles every kernel in kernels/ for real.
#
# NVRTC runs without a GPU. The nvidia-cuda-nvrtc-cu12 wheel ships libnvrtc.so.12 (and its
# libnvrtc-builtins); this script installs it into a virtual environment (default .venv-nvrtc at
# the repository root; override with SCVI_RS_NVRTC_VENV) and prints the directory that holds the
# library on its last line of standard output.
#
# Use it as
#     export SCVI_RS_CUDA_LIB_DIR="$(bash scripts/ci/setup_nvrtc.sh)"
# scvi-rs searches SCVI_RS_CUDA_LIB_DIR (a ':'-separated list of directories) before the system's
# library path and loads libnvrtc from there by absolute path; LD_LIBRARY_PATH works too when it is
# set before the process starts (the dynamic loader reads it only at start-up).
#
# Exit status: 0 with the directory printed; 1 when the wheel could not be installed (no network,
# no python3), after saying why on standard error. Callers that can live without the check (CI on a
# machine without python) may ignore the failure: the compile test then prints that it skipped.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${SCVI_RS_NVRTC_VENV:-$root/.venv-nvrtc}"
# The cu12 wheel: cudarc is built with the cuda-12080 feature, which looks for libnvrtc.so.12.
pkg="${SCVI_RS_NVRTC_PACKAGE:-nvidia-cuda-nvrtc-cu12}"

find_lib() {
    find "$venv" -name 'libnvrtc.so.1[0-9]*' -not -name '*builtins*' 2>/dev/null | sort | head -n 1
}

lib="$(find_lib || true)"
if [ -z "$lib" ]; then
    if ! command -v python3 >/dev/null 2>&1; then
        echo "setup_nvrtc: python3 not found; cannot install $pkg" >&2
        exit 1
    fi
    if [ ! -x "$venv/bin/pip" ]; then
        python3 -m venv "$venv" >&2 || { echo "setup_nvrtc: could not create $venv" >&2; exit 1; }
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$pkg" >&2 \
        || { echo "setup_nvrtc: pip install $pkg failed" >&2; exit 1; }
    lib="$(find_lib || true)"
fi
if [ -z "$lib" ]; then
    echo "setup_nvrtc: $pkg installed but no libnvrtc.so.1x found under $venv" >&2
    exit 1
fi
dir="$(dirname "$lib")"
echo "setup_nvrtc: $(basename "$lib") in $dir" >&2
echo "$dir"
