#!/bin/sh
# Boot the aarch64 guest built by build-image.sh under qemu-system-aarch64 (-M virt, user networking).
# Inside the guest the host is 10.0.2.2, and QEMU forwards connections to it to the host's
# loopback: a broker on the host's 127.0.0.1:PORT is reachable from the guest's agent.
#
#   firmware-sim/qemu/run-guest.sh PORT [THING] [INTERVAL]     (serial console on stdout)
set -eu
CACHE=${CACHE:-/var/tmp/garrison-qemu}
PORT=${1:?usage: run-guest.sh BROKER_PORT [THING] [INTERVAL_SECONDS]}
THING=${2:-qemu-arm64}
INTERVAL=${3:-10}
for f in vmlinuz initrd.img; do
    [ -f "$CACHE/$f" ] || { echo "run-guest: $CACHE/$f is missing; run build-image.sh first" >&2; exit 2; }
done
command -v qemu-system-aarch64 >/dev/null ||
    { echo "run-guest: qemu-system-aarch64 is missing (apt-get install qemu-system-arm)" >&2; exit 2; }
exec qemu-system-aarch64 -M virt -cpu cortex-a57 -smp 1 -m 1024 -display none -monitor none -serial stdio \
    -no-reboot -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" \
    -append "console=ttyAMA0 loglevel=4 garrison.broker=mqtt://10.0.2.2:$PORT garrison.thing=$THING garrison.interval=$INTERVAL" \
    -netdev user,id=net0 -device virtio-net-pci,netdev=net0,romfile=
