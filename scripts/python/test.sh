#!/usr/bin/env bash
# The Python package's tests, as scripts/test.sh runs them: a venv of its own (.venv-py, made once
# and remade when requirements.txt changes), the extension built into it with maturin in release
# mode and in the root's target directory (so it reuses the core's compiled dependencies), then
# pytest. Prints pytest's own summary line last; exits with pytest's status.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=.venv-py
req=scripts/python/requirements.txt
python="${SCVI_RS_PYTHON:-python3}"
if ! command -v "$python" >/dev/null; then
  echo "skipped: no $python to build the Python package with"
  exit 0
fi
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/requirements.txt"; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.txt"
fi
VIRTUAL_ENV="$PWD/$venv" CARGO_TARGET_DIR="$PWD/target" \
  "$venv/bin/maturin" develop --release --quiet -m python/Cargo.toml
# -rs: each skipped test's reason; -p no:cacheprovider: no .pytest_cache in the tree.
exec "$venv/bin/python" -m pytest python/tests -q -rs -p no:cacheprovider "$@"
