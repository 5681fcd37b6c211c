#!/usr/bin/env bash
# Runs the test suite on a fresh Debian machine: installs everything, lints and type-checks the
# packages (scripts/lint.sh: ruff, mypy; a finding fails the run), then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -m slow for the opt-in QEMU checks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev,detect,aws,scaleout   # aws: the AWS IoT and Greengrass transports are tested too
export PATH="$PWD/.venv/bin:$PATH"   # the tests run garrison-agent / garrison-detect as commands
bash scripts/lint.sh
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
