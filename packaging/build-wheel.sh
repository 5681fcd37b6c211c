#!/bin/sh
# Build the garrison wheel (pure Python, py3-none-any) into OUTDIR and print its path.
# Builds from a clean copy of the sources so the working tree gets no build/ or *.egg-info.
# Usage: [PYTHON=python3] packaging/build-wheel.sh OUTDIR
set -eu
out=${1:?usage: build-wheel.sh OUTDIR}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
# The files a commit would hold (tracked, plus new files not ignored); outside git, the whole tree
# minus build products.
if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$root" && git ls-files -z --cached --others --exclude-standard |
        tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$src"
else
    (cd "$root" && tar --exclude=.git --exclude=.venv --exclude=build --exclude=dist \
        --exclude=__pycache__ --exclude='*.egg-info' -cf - .) | tar -xf - -C "$src"
fi
# pip ($PYTHON, default python3) fetches setuptools/wheel into an isolated build environment.
"${PYTHON:-python3}" -m pip wheel --quiet --no-deps --wheel-dir "$src/dist" "$src" >&2
wheel=$(ls "$src"/dist/garrison-*-py3-none-any.whl)
cp "$wheel" "$out/"
echo "$out/$(basename "$wheel")"
