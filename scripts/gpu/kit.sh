#!/usr/bin/env bash
# Build the device kit: everything scripts/gpu/run.sh needs on the GPU machine, which has no Rust
# toolchain and no network, in one ignored folder (default gpu-kit/ at the repository root) that
# the device tool carries (`carry: ["gpu-kit"]`; 64 MiB in all, with the working tree).
#
#   bin/scvi-rs            the release binary (`cargo build --release`), stripped
#   bin/<test>             each GPU test executable (`cargo test --release --no-run`, found through
#                          cargo's JSON messages), stripped: cuda_errors cuda_kernels
#                          cuda_kernels_compile cuda_libs cuda_step cuda_train
#   bin/gpu_step           the step benchmark (benches/gpu_step.rs), stripped
#   data/kang_ifnb_hvg2k.h5ad   the 20-epoch training test's and the benchmark's data
#   run.sh                 a copy of scripts/gpu/run.sh
#   MANIFEST               the commit, whether the tree had changes, the build time, each file's
#                          size and sha256
#
# The tests take every path from the environment (SCVI_RS_BIN, SCVI_RS_KANG_H5AD,
# SCVI_RS_BENCH_DATA, SCVI_RS_NVRTC13_DIR), which run.sh sets from the kit's own location, so
# nothing baked in at build time is needed there.
#
# Usage: bash scripts/gpu/kit.sh [KIT_DIR]     (SCVI_RS_KANG_H5AD names another copy of the data)
# Exit status: 0 with the kit built and under the size limit; 1 otherwise, saying why.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
kit="${1:-gpu-kit}"
tests=(cuda_errors cuda_kernels cuda_kernels_compile cuda_libs cuda_step cuda_train)
data="${SCVI_RS_KANG_H5AD:-$root/../shared/data/kang_ifnb_hvg2k.h5ad}"
# The device tool carries at most 64 MiB: the kit plus the working tree. Keep a margin.
limit_mib=60

die() { echo "kit.sh: $*" >&2; exit 1; }
[ -f "$data" ] || die "the Kang data is not at $data (set SCVI_RS_KANG_H5AD)"
command -v strip >/dev/null || die "strip (binutils) is needed"

# The executables cargo reports for the named targets ("name=path" lines).
executables() {
    sed -n 's/.*"target":{[^}]*"name":"\([^"]*\)".*"executable":"\([^"]*\)".*/\1=\2/p'
}

rm -rf "$kit"
mkdir -p "$kit/bin" "$kit/data"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

# The tests and the bench first: `cargo test` builds the binary too, with the test-support feature
# (the kernel emulation) that the shipped binary must not have; `cargo build` below replaces it.
args=()
for t in "${tests[@]}"; do args+=(--test "$t"); done
echo "kit.sh: building the GPU tests and the step benchmark (cargo test --release --no-run)"
cargo test --release --no-run --message-format=json-render-diagnostics "${args[@]}" \
    --bench gpu_step >"$log" || die "cargo test --no-run failed (see above)"
found=0
while IFS='=' read -r name path; do
    case " ${tests[*]} gpu_step " in
        *" $name "*) strip -o "$kit/bin/$name" "$path"; found=$((found + 1)) ;;
    esac
done < <(executables <"$log")
[ "$found" -eq $((${#tests[@]} + 1)) ] || die "expected $((${#tests[@]} + 1)) test executables, cargo reported $found"

echo "kit.sh: building the release binary (cargo build --release)"
cargo build --release --bin scvi-rs --message-format=json-render-diagnostics >"$log" \
    || die "cargo build failed (see above)"
bin="$(executables <"$log" | sed -n 's/^scvi-rs=//p' | tail -n 1)"
[ -n "$bin" ] || die "cargo reported no scvi-rs executable"
strip -o "$kit/bin/scvi-rs" "$bin"

cp "$data" "$kit/data/kang_ifnb_hvg2k.h5ad"
cp scripts/gpu/run.sh "$kit/run.sh"
{
    echo "commit $(git rev-parse HEAD)"
    if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
        echo "tree: with uncommitted changes"
    else
        echo "tree: clean"
    fi
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(ldd --version 2>&1 | head -n 1)"
    (cd "$kit" && find . -type f ! -name MANIFEST | sort | while read -r f; do
        printf '%10d %s %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)" "$f"
    done)
} >"$kit/MANIFEST"

kit_bytes="$(du -sb "$kit" | cut -f1)"
tree_bytes="$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)"
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
cat "$kit/MANIFEST"
echo "kit.sh: kit $(mib "$kit_bytes") MiB + working tree $(mib "$tree_bytes") MiB = $(mib $((kit_bytes + tree_bytes))) MiB (limit ${limit_mib} MiB of the 64 carried)"
[ $((kit_bytes + tree_bytes)) -le $((limit_mib * 1048576)) ] || die "the kit and the tree are over ${limit_mib} MiB"
echo "kit.sh: ready: on the device machine, from the repository root: bash $kit/run.sh"
