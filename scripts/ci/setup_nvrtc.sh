#!/usr/bin/env bash
# Make NVRTC (NVIDIA's run-time CUDA compiler) available on a machine without a CUDA toolkit or a GPU,
# so that the kernel-compilation tests compile every CUDA kernel in kernels/ for real.
#
# NVRTC runs without a GPU. The pip wheels ship it: `nvidia-cuda-nvrtc-cu12` (CUDA 12:
# nvidia/cuda_nvrtc/lib/libnvrtc.so.12) and `nvidia-cuda-nvrtc` 13.0 (CUDA 13:
# nvidia/cu13/lib/libnvrtc.so.13, with no RUNPATH, as on the GPU machine, so scvi-rs must load its
# libnvrtc-builtins itself). This script installs the one of major version $1 (12, the default, or
# 13) into a virtual environment (default .venv-nvrtc at the repository root; override with
# SCVI_RS_NVRTC_VENV) and prints the folder that holds the library on its last line of standard
# output.
#
# Use it as
#     export SCVI_RS_CUDA_LIB_DIR="$(bash scripts/ci/setup_nvrtc.sh)"
# scvi-rs searches SCVI_RS_CUDA_LIB_DIR (a ':'-separated list of folders) first and loads libnvrtc
# from there by absolute path (src/cuda/libs); it would also find the wheel of a python3 on PATH.
#
# Exit status: 0 with the folder printed; 1 when the wheel could not be installed (no network,
# no python3), after saying why on standard error. Callers that can live without the check (CI on a
# machine without python) may ignore the failure: the compile tests then print that they skipped.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${SCVI_RS_NVRTC_VENV:-$root/.venv-nvrtc}"
major="${1:-12}"
case "$major" in
    12) pkg="nvidia-cuda-nvrtc-cu12" ;;
    # 13.0, the NVRTC of the GPU machine's toolkit (nvcc 13.0, driver 580).
    13) pkg="nvidia-cuda-nvrtc==13.0.*" ;;
    *) echo "setup_nvrtc: major version 12 or 13, not '$major'" >&2; exit 1 ;;
esac

find_lib() {
    find "$venv" -name "libnvrtc.so.$major" 2>/dev/null | sort | head -n 1
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
    echo "setup_nvrtc: $pkg installed but no libnvrtc.so.$major found under $venv" >&2
    exit 1
fi
dir="$(dirname "$lib")"
echo "setup_nvrtc: $(basename "$lib") in $dir" >&2
echo "$dir"
