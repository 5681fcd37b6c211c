#!/usr/bin/env bash
# Installs what Garrison needs on a fresh Debian machine (idempotent):
# the OS packages (as root, through apt), then the project and its extras in ./.venv.
# Usage: scripts/install.sh [EXTRAS]   (default: detect; the tests use dev,detect,aws)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-detect}"

apt_packages=()
command -v mosquitto >/dev/null || apt_packages+=(mosquitto)
command -v ip >/dev/null && command -v ss >/dev/null || apt_packages+=(iproute2)
command -v openssl >/dev/null || apt_packages+=(openssl)
if [[ "$extras" == *dev* ]]; then
  command -v systemd-analyze >/dev/null || apt_packages+=(systemd)
  # the Debian package's test installs it into a clean root holding its Debian dependencies
  # scale-out tests: a NATS JetStream cluster (devices' MQTT broker) and PostgreSQL (shared store)
  command -v nats-server >/dev/null || apt_packages+=(nats-server)
  [ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_packages+=(postgresql)
  # the console's browser tests (headless Chromium through Selenium) and the /metrics scrape test
  command -v chromium >/dev/null || apt_packages+=(chromium)
  command -v chromedriver >/dev/null || apt_packages+=(chromium-driver)
  command -v prometheus >/dev/null || apt_packages+=(prometheus)
  for pkg in python3-paho-mqtt python3-cbor2 python3-psutil; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || apt_packages+=("$pkg")
  done
fi
if ((${#apt_packages[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install: apt-get install ${apt_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
  else
    echo "install: missing ${apt_packages[*]} (run as root, or install them); continuing" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv .venv
  fi
fi
echo "install: pip install -e .[$extras] into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
