#!/usr/bin/env bash
# The device call: run ON the GPU machine, in one call, everything the kit (scripts/gpu/kit.sh)
# carries, and print a summary table last. The machine has no Rust and no network; the kit holds
# the stripped release binary, the GPU test executables, the step benchmark and the Kang data.
#
#   device tool:  run(command="bash gpu-kit/run.sh", carry=["gpu-kit"], timeout_s=570)
#   here:         bash scripts/gpu/run.sh --rehearse   (shows every step would run; no GPU needed)
#                 bash scripts/gpu/run.sh              (runs what can run; the GPU steps fail: no GPU)
#
# Options: --rehearse; --deadline SECONDS (default 420: every step's time limit is cut to what is
# left of it, and steps that no longer fit are reported NOT RUN); --only a,b (rerun those steps).
#
# Steps, in order of what they are worth (docs/cuda.md, "The device call", gives the time budget):
# machine, nvidia-smi, doctor, the GPU tests (cuda_kernels, cuda_step, cuda_errors, cuda_libs,
# cuda_train: 20 epochs of Kang on the GPU against the CPU's held-out ELBO), the step benchmark
# (bench), compute-sanitizer memcheck and racecheck on the kernel tests, cuda_kernels_compile.
# Every test runs with SCVI_RS_REQUIRE_GPU=1, so a test that finds no GPU fails instead of
# skipping; the emulated twins of the GPU tests are skipped (--skip emulated): they need no GPU
# and have run where the kit was built. A failing or hung step (each runs under `timeout`) never
# stops the next. Everything is logged under $OUT (a temporary folder when $OUT is unset), in at
# most 8 files, as the device tool brings back: run.log (all output), summary.txt, timing.txt,
# doctor.txt, nvidia-smi.txt, bench.txt, logs.tar.gz (one log per step).
# Exit status: 0 when every step passed (or, rehearsing, every step is ready); 1 otherwise.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -x "$here/bin/scvi-rs" ]; then
    kit="$here"
else
    kit="${SCVI_RS_KIT:-$here/../../gpu-kit}"
fi
rehearse=0
deadline=420
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rehearse) rehearse=1 ;;
        --deadline) deadline="$2"; shift ;;
        --only) only=",$2,"; shift ;;
        *) echo "run.sh: unknown option $1 (--rehearse, --deadline S, --only a,b)" >&2; exit 2 ;;
    esac
    shift
done
if [ ! -d "$kit/bin" ]; then
    echo "run.sh: no kit at $kit (build it with scripts/gpu/kit.sh, carry it as gpu-kit)" >&2
    exit 1
fi
kit="$(cd "$kit" && pwd)"

OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/scvi-rs-gpu-run.XXXXXX")}"
mkdir -p "$OUT"
work="$(mktemp -d "${TMPDIR:-/tmp}/scvi-rs-gpu-work.XXXXXX")"
mkdir -p "$work/logs" "$work/home"
exec > >(tee "$OUT/run.log") 2>&1
tee_pid=$!

# What the tests and the binary read instead of paths baked in at build time.
export SCVI_RS_REQUIRE_GPU=1
export SCVI_RS_BIN="$kit/bin/scvi-rs"
export SCVI_RS_KANG_H5AD="$kit/data/kang_ifnb_hvg2k.h5ad"
export SCVI_RS_BENCH_DATA="$SCVI_RS_KANG_H5AD"
export SCVI_RS_BENCH_BATCH_KEY=stim
# One kernel cache for the run: doctor compiles every kernel once, the tests then load the CUBINs.
export SCVI_RS_KERNEL_CACHE="$work/kernel-cache"
export RUST_BACKTRACE=1

# CUDA 13's NVRTC from a pip wheel (the image's Python has nvidia-cuda-nvrtc), for cuda_libs's
# real-load test; the engine finds the libraries on its own (doctor says where).
if [ -z "${SCVI_RS_NVRTC13_DIR:-}" ]; then
    for d in /opt/*/.venv/lib/python3*/site-packages/nvidia/cu13/lib \
        /usr/local/lib/python3*/dist-packages/nvidia/cu13/lib \
        /usr/lib/python3/dist-packages/nvidia/cu13/lib; do
        if [ -e "$d/libnvrtc.so.13" ]; then export SCVI_RS_NVRTC13_DIR="$d"; break; fi
    done
fi
sanitizer="$(command -v compute-sanitizer || ls -d /usr/local/cuda/bin/compute-sanitizer \
    /usr/local/cuda-*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1 || true)"

# The functions below run in their own shells (under `timeout`) and read these.
export kit work sanitizer OUT
start=$SECONDS
names=()
declare -A status secs budget detail
# What rehearsing runs here for real: the machine check (the kit's binaries load and start), and
# the benchmark on the host emulation at a small batch (its table, with exact counts).
declare -A dry=(
    [machine]="machine"
    [bench]="$kit/bin/gpu_step --emulated --batch-sizes 16 --steps 1"
)
n=0

# run_step NAME BUDGET_S EXPECTED_S CHECK -- COMMAND...
# CHECK is a function that prints why the step cannot run here (missing file or tool), or nothing.
run_step() {
    local name="$1" cap="$2" expect="$3" check="$4"
    shift 5
    n=$((n + 1))
    names+=("$name")
    budget[$name]="$expect/$cap"
    local log="$work/logs/$(printf '%02d' "$n")-$name.log"
    if [ -n "$only" ] && [[ "$only" != *",$name,"* ]]; then
        status[$name]="not asked"; secs[$name]=0; detail[$name]="--only"
        return
    fi
    local missing
    missing="$($check)"
    echo
    echo "=== [$n] $name (expected ${expect}s, limit ${cap}s): $*"
    if [ "$rehearse" = 1 ]; then
        # A tool of the GPU machine absent here (nvidia-smi, compute-sanitizer) is no reason the
        # step would not run there; a file missing from the kit is.
        secs[$name]=0
        local lacking
        lacking="$(echo "$missing" | grep -v '^tool: ' | grep .)"
        if [ -n "$lacking" ]; then
            status[$name]="MISSING"; detail[$name]="$(echo $lacking)"
        elif [ -n "${dry[$name]:-}" ]; then
            # Steps that can run here without a GPU do, as they would there.
            local rc
            bash -c "$(declare -f machine); ${dry[$name]}" 2>&1 | tee "$log"
            rc=${PIPESTATUS[0]}
            if [ "$rc" = 0 ]; then status[$name]="READY"; else status[$name]="FAIL ($rc)"; fi
            detail[$name]="ran here: $(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-110)"
        else
            status[$name]="READY"; detail[$name]="$(rehearse_detail "$name" "$@")"
            [ -n "$missing" ] && detail[$name]="${detail[$name]}; $(echo "$missing" | sed 's/^tool: //' | tr '\n' ' ')"
        fi
        echo "${status[$name]}: ${detail[$name]}"
        return
    fi
    local left=$((deadline - (SECONDS - start)))
    if [ "$left" -lt 15 ]; then
        status[$name]="NOT RUN"; secs[$name]=0; detail[$name]="deadline ${deadline}s reached"
        echo "NOT RUN: ${detail[$name]}"
        return
    fi
    local limit=$((cap < left ? cap : left))
    local t0=$SECONDS rc
    if [ -n "$missing" ]; then
        echo "$missing" | tee "$log"
        rc=127
    elif declare -F "$1" >/dev/null; then
        # A step written as a function here runs in its own shell, so that `timeout` can stop it.
        timeout --kill-after=10 "$limit" bash -c "$(declare -f "$1"); $1" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
    else
        timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
    fi
    secs[$name]=$((SECONDS - t0))
    case "$rc" in
        0) status[$name]="PASS" ;;
        124 | 137) status[$name]="TIMEOUT" ;;
        *) status[$name]="FAIL ($rc)" ;;
    esac
    detail[$name]="$(step_detail "$log" "$missing")"
}

# One line on what a step's log says: the test counts, the sanitizer's verdict, or the last line.
step_detail() {
    local log="$1" missing="$2"
    if [ -n "$missing" ]; then echo "$missing"; return; fi
    local r
    r="$(grep -E '^test result:' "$log" | awk '{ for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { if (NR) printf "%d passed, %d failed", p, f }')"
    local s
    s="$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -n 1)"
    local panics
    panics="$(grep -cE "panicked at" "$log")"
    [ "$panics" -gt 0 ] && s="${s:+$s; }$panics panicked"
    if [ -n "$r" ] || [ -n "$s" ]; then
        echo "${r}${r:+${s:+; }}${s}"
    else
        grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-120
    fi
}

# Rehearsing: what the step would run (the tests a test binary lists under the filter).
rehearse_detail() {
    local name="$1"
    shift
    local exe
    for a in "$@"; do
        case "$a" in "$kit"/bin/cuda_*) exe="$a" ;; esac
    done
    if [ -n "${exe:-}" ]; then
        local filters=() seen=0
        for a in "$@"; do
            if [ "$seen" = 1 ]; then filters+=("$a"); fi
            [ "$a" = "$exe" ] && seen=1
        done
        local tests
        tests="$("$exe" --list "${filters[@]}" 2>/dev/null | sed -n 's/: test$//p')"
        echo "would run $(echo "$tests" | grep -c .) tests: $(echo "$tests" | tr '\n' ' ' | cut -c1-150)"
    else
        echo "would run: $(basename "$1") ${*:2}" | cut -c1-150
    fi
}

need_file() { [ -e "$1" ] || echo "missing $1"; }
need_kit() { for f in "$@"; do need_file "$kit/$f"; done; }
check_none() { :; }
check_smi() { command -v nvidia-smi >/dev/null || echo "tool: nvidia-smi absent here (no NVIDIA driver)"; }
check_bin() { need_kit bin/scvi-rs; }
check_test() { need_kit "bin/$1" bin/scvi-rs data/kang_ifnb_hvg2k.h5ad; }
check_kernels() { check_test cuda_kernels; }
check_step() { check_test cuda_step; }
check_errors() { check_test cuda_errors; }
check_libs() { check_test cuda_libs; }
check_train() { check_test cuda_train; }
check_compile() { check_test cuda_kernels_compile; }
check_bench() { need_kit bin/gpu_step data/kang_ifnb_hvg2k.h5ad; }
check_sanitizer() {
    check_kernels
    [ -n "$sanitizer" ] || echo "tool: compute-sanitizer absent here (it comes with the CUDA toolkit)"
}

machine() {
    date -u
    uname -a
    echo "cores: $(nproc)"
    free -g 2>/dev/null | head -n 2
    cat "$kit/MANIFEST"
    echo "kit: $kit; out: $OUT; NVRTC 13 wheel: ${SCVI_RS_NVRTC13_DIR:-none found}; compute-sanitizer: ${sanitizer:-none found}"
    # The binaries were built elsewhere: every library they need must resolve here.
    if ldd "$kit"/bin/* | grep -q 'not found'; then
        ldd "$kit"/bin/* | grep 'not found'
        return 1
    fi
    "$kit/bin/scvi-rs" --version
}

smi() {
    nvidia-smi || return 1
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv
}

# doctor must see the GPU (it exits 0 without one: it is a report).
doctor() {
    "$kit/bin/scvi-rs" doctor >"$work/doctor.txt" 2>&1
    local rc=$?
    cat "$work/doctor.txt"
    [ "$rc" = 0 ] || return "$rc"
    grep -q 'cuda:0: ' "$work/doctor.txt" || { echo "doctor lists no GPU"; return 1; }
}

t() { echo "$kit/bin/$1"; }
gpu_only=(--skip emulated --test-threads=1 --nocapture)
# The struct-size check compiles the host emulation: a host check, already run where it was built.
host_only=(--skip argument_structs)

run_step machine 20 2 check_none -- machine
run_step nvidia-smi 20 3 check_smi -- smi
run_step doctor 90 30 check_bin -- doctor
run_step cuda_kernels 90 10 check_kernels -- "$(t cuda_kernels)" "${gpu_only[@]}" "${host_only[@]}"
run_step cuda_step 120 15 check_step -- "$(t cuda_step)" "${gpu_only[@]}"
run_step cuda_errors 60 10 check_errors -- "$(t cuda_errors)" --test-threads=1 --nocapture
run_step cuda_libs 90 30 check_libs -- "$(t cuda_libs)" --test-threads=1 --nocapture
run_step cuda_train 180 60 check_train -- "$(t cuda_train)" --nocapture
run_step bench 90 30 check_bench -- "$kit/bin/gpu_step"
run_step memcheck 150 60 check_sanitizer -- "${sanitizer:-compute-sanitizer}" --tool memcheck \
    --error-exitcode 3 --print-limit 20 "$(t cuda_kernels)" "${gpu_only[@]}" "${host_only[@]}"
run_step racecheck 150 60 check_sanitizer -- "${sanitizer:-compute-sanitizer}" --tool racecheck \
    --racecheck-report analysis --error-exitcode 3 --print-limit 20 "$(t cuda_kernels)" \
    "${gpu_only[@]}" "${host_only[@]}"
run_step cuda_kernels_compile 90 30 check_compile -- "$(t cuda_kernels_compile)" --test-threads=4

# What comes back: at most 8 files, none deeper than two folders.
cp "$work/doctor.txt" "$OUT/doctor.txt" 2>/dev/null
for s in nvidia-smi bench; do
    f="$(ls "$work/logs/"*"-$s.log" 2>/dev/null | head -n 1)"
    [ -n "$f" ] && cp "$f" "$OUT/$s.txt"
done
tar -czf "$OUT/logs.tar.gz" -C "$work" logs 2>/dev/null

{
    echo "Timing (nothing here is a measurement unless the run was on a GPU):"
    grep -hE 'sgemm 4096|^\| |^floor terms' "$work/logs/"*-bench.log 2>/dev/null
    grep -hE 'seed [01]: held-out ELBO|CPU mean' "$work/logs/"*-cuda_train.log 2>/dev/null
} >"$OUT/timing.txt"
echo
cat "$OUT/timing.txt"

total=$((SECONDS - start))
fails=0
for s in "${names[@]}"; do
    case "${status[$s]}" in PASS | READY | "not asked") ;; *) fails=$((fails + 1)) ;; esac
done
{
    echo
    if [ "$rehearse" = 1 ]; then
        echo "Summary (rehearsal: nothing was run on a GPU; budget = expected/limit seconds; deadline ${deadline}s)"
    else
        echo "Summary ($(date -u +%H:%M:%S) UTC, ${total}s of a ${deadline}s deadline; budget = expected/limit seconds)"
    fi
    printf '| %-20s | %-9s | %5s | %-7s | %s\n' step status secs budget detail
    printf '| %-20s | %-9s | %5s | %-7s | %s\n' --- --- --- --- ---
    for s in "${names[@]}"; do
        printf '| %-20s | %-9s | %5s | %-7s | %s\n' "$s" "${status[$s]}" "${secs[$s]}" "${budget[$s]}" "${detail[$s]}"
    done
    echo "$fails of ${#names[@]} steps did not pass; logs under $OUT"
} | tee "$OUT/summary.txt"
rm -rf "$work"
# Let tee finish run.log before the device tool collects $OUT.
exec 1>&- 2>&-
wait "$tee_pid" 2>/dev/null
[ "$fails" = 0 ]
