#!/usr/bin/env bash
# Lint and formatting (ruff) and type checks (mypy) over the packages, configured in pyproject.toml.
# scripts/test.sh runs this before pytest; a finding fails the run (`ruff format .` fixes the format).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY -m ruff check --no-cache .
$PY -m ruff format --no-cache --check .
# The folders install as garrison.* through setup.cfg's package_dir, which mypy cannot follow in
# an editable install: give it the same tree as symbolic links.
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/garrison"
for folder in agent collectors wire detect; do ln -s "$PWD/$folder" "$tree/garrison/$folder"; done
ln -s "$PWD/firmware-sim/garrison_sim" "$tree/garrison/sim"
MYPYPATH="$tree" $PY -m mypy --no-incremental -p garrison.agent -p garrison.collectors -p garrison.wire \
    -p garrison.detect -p garrison.sim
