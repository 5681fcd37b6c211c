#!/usr/bin/env bash
# The opt-in slow checks (minutes): the QEMU-emulated aarch64 device and the Debian package
# installed into a debootstrapped Debian. Installs what they need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for tool in qemu-system-aarch64:qemu-system-arm debootstrap:debootstrap cpio:cpio; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
  done
  if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
exec bash scripts/test.sh -m slow "$@"
