#!/usr/bin/env bash
# The closing table of issue 15: every hostile input and flag (fixtures through every command,
# absurd values of every numeric flag, special files, damaged stores, model files that lie,
# outputs that must not be touched), then a fuzz run (SCVI_RS_FUZZ_CASES, default 3000, seed
# SCVI_RS_FUZZ_SEED, default 15), each in a child process; prints the table (inputs tried, clean
# errors, panics, aborts, hangs, partial outputs) and lists the clean errors whose message names
# neither a file nor a flag. SCVI_RS_FUZZ_VERBOSE=1 prints every case and what it said.
#
#   bash scripts/fuzz/hostile.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo test --release --test fuzz hostile_table -- --ignored --nocapture
