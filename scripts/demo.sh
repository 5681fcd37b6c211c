#!/usr/bin/env bash
# The main job on one machine, on embedded defaults: a local broker, the detect engine with an
# example profile, and the agent on this machine; alarms are printed as they happen.
# Extra arguments go to `garrison-detect demo` (e.g. --duration 120).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh detect
export PATH="$PWD/.venv/bin:$PATH"
exec garrison-detect demo "$@"
