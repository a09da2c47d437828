#!/usr/bin/env bash
# benchmarks/compare.sh fails fast and clearly on bad input (issue 12, item 6): each case must exit
# non-zero within seconds, print one "compare.sh: error:" line that names the problem, and leave
# neither the output folder nor a Python environment behind. No training runs and nothing is
# downloaded (the one pip case points pip at a closed local port).
#
#   bash benchmarks/test_compare.sh            # uses target/release/scvi-rs, or SCVI_RS=PATH
set -uo pipefail
cd "$(dirname "$0")/.."
exe="${SCVI_RS:-target/release/scvi-rs}"
if [ ! -x "$exe" ]; then
  echo "skipped: no scvi-rs binary at $exe (cargo build --release, or SCVI_RS=PATH)"
  echo "0 passed, 0 failed, 1 skipped"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$exe" simulate --cells 300 --genes 50 --out "$tmp/sim.h5ad" >/dev/null 2>&1 \
  || { echo "could not simulate test data with $exe"; exit 1; }
data="$tmp/sim.h5ad"
passed=0
failed=0

# expect NAME PATTERN ARGS...: compare.sh ARGS exits non-zero within 60 s, its stderr matches
# PATTERN (grep -E), and neither $tmp/out nor $tmp/venv appears where it was not before (except the
# venv of the pip case, which must be created before pip can fail in it).
expect() {
  local name="$1" pattern="$2"
  shift 2
  local had_out=0 had_venv=0
  [ -e "$tmp/out" ] && had_out=1
  [ -e "$tmp/venv" ] && had_venv=1
  local t0=$SECONDS rc=0
  timeout 60 benchmarks/compare.sh "$@" >"$tmp/stdout" 2>"$tmp/stderr" || rc=$?
  local why=""
  if [ "$rc" -eq 0 ]; then why="exited 0"
  elif [ "$rc" -eq 124 ]; then why="took more than 60 s"
  elif ! grep -qE -- "$pattern" "$tmp/stderr"; then why="stderr does not match /$pattern/"
  elif ! grep -q "compare.sh: error:" "$tmp/stderr"; then why="no 'compare.sh: error:' line"
  elif [ "$had_out" -eq 0 ] && [ -e "$tmp/out" ]; then why="left $tmp/out"
  elif [ -e "$tmp/out.partial" ]; then why="left $tmp/out.partial"
  elif [ "$had_venv" -eq 0 ] && [ -e "$tmp/venv" ] && [ "$name" != "pip-fails" ]; then
    why="created the environment"
  fi
  if [ -z "$why" ]; then
    passed=$((passed + 1))
    echo "ok   $name ($((SECONDS - t0)) s): $(grep 'compare.sh: error:' "$tmp/stderr" | head -1 | cut -c1-150)"
  else
    failed=$((failed + 1))
    echo "FAIL $name: $why (exit $rc)"
    sed 's/^/     /' "$tmp/stderr" | tail -20
  fi
}

common=(--max-epochs 2 --seeds 1 --scvi-rs "$exe" --venv "$tmp/venv" --out "$tmp/out")
expect missing-batch-key "--batch-key stimx: .* no obs column .* batch, cell_type" \
  "$data" --batch-key stimx --labels-key cell_type "${common[@]}"
expect missing-labels-key "--labels-key celltype: .* no obs column" \
  "$data" --batch-key batch --labels-key celltype "${common[@]}"
expect no-data-file "data file .*nope.h5ad does not exist" \
  "$tmp/nope.h5ad" --batch-key batch --labels-key cell_type "${common[@]}"
expect not-h5ad "must be an .h5ad file" \
  "$exe" --batch-key batch --labels-key cell_type "${common[@]}"
expect zero-epochs "--max-epochs must be at least 1" \
  "$data" --batch-key batch --labels-key cell_type "${common[@]}" --max-epochs 0
expect bad-binary "--scvi-rs .*(cannot be run|not a working scvi-rs)" \
  "$data" --batch-key batch --labels-key cell_type "${common[@]}" --scvi-rs /bin/true
mkdir "$tmp/out"
echo "someone else's" >"$tmp/out/notes.txt"
expect out-exists "output folder .*out exists; pass --force" \
  "$data" --batch-key batch --labels-key cell_type "${common[@]}"
expect out-not-ours-force "refusing to replace .*out: it has no .compare-report marker" \
  "$data" --batch-key batch --labels-key cell_type "${common[@]}" --force
[ -f "$tmp/out/notes.txt" ] || { failed=$((failed + 1)); echo "FAIL --force deleted a folder it did not write"; }
rm -rf "$tmp/out"
mkdir "$tmp/venv"
echo x >"$tmp/venv/something"
expect venv-not-an-env "venv exists but is not a Python environment" \
  "$data" --batch-key batch --labels-key cell_type "${common[@]}"
rm -rf "$tmp/venv"
expect venv-cannot-create "could not be built: .*-m venv' failed" \
  "$data" --batch-key batch --labels-key cell_type "${common[@]}" --venv /proc/no/such/venv
PIP_INDEX_URL=http://127.0.0.1:9/simple PIP_RETRIES=0 PIP_NO_CACHE_DIR=1 PIP_FIND_LINKS= \
  expect pip-fails "could not be built: pip install -r benchmarks/requirements.txt failed" \
  "$data" --batch-key batch --labels-key cell_type "${common[@]}"
rm -rf "$tmp/venv"
PYTHON=no-such-python3 expect no-python "'no-such-python3' not found" \
  "$data" --batch-key batch --labels-key cell_type "${common[@]}"

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
