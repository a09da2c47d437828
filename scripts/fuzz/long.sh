#!/usr/bin/env bash
# The long fuzz run: real inputs mutated byte by byte and by their structure, through every reader
# and command, in child processes (tests/fuzz/). Runs for SECONDS (default 4 hours) from a fresh
# seed unless SCVI_RS_FUZZ_SEED is set; cases that end badly (panic, abort, hang, partial output,
# an error said other than once) are kept in target/fuzz-findings/<case>/ in the regression
# corpus's form: fix the cause, then copy the folder into tests/fixtures/fuzz/.
#
#   bash scripts/fuzz/long.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
export SCVI_RS_FUZZ_SECONDS="${1:-14400}"
cargo test --release --test fuzz fuzz_long -- --ignored --nocapture
