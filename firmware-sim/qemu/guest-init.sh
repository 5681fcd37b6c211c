#!/bin/sh
# PID 1 of the Garrison QEMU guest: mount, bring up the network, run the agent.
# Settings come from the kernel command line: garrison.broker=URL garrison.thing=NAME
# garrison.interval=SECONDS garrison.format=json|cbor (defaults below).
export PATH=/usr/local/bin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmp /tmp

BROKER=mqtt://10.0.2.2:1883 THING=qemu-arm64 INTERVAL=10 FORMAT=json
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        garrison.broker=*) BROKER=${arg#garrison.broker=} ;;
        garrison.thing=*) THING=${arg#garrison.thing=} ;;
        garrison.interval=*) INTERVAL=${arg#garrison.interval=} ;;
        garrison.format=*) FORMAT=${arg#garrison.format=} ;;
    esac
done

depmod 2>/dev/null
for m in virtio_mmio virtio_pci virtio_net inet_diag tcp_diag udp_diag; do modprobe "$m" 2>/dev/null; done
hostname garrison-qemu
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo "garrison-guest: $(uname -m) $(uname -r), python $(python3 -c 'import sys; print(sys.version.split()[0])'), reporting as $THING to $BROKER every $INTERVAL s"

garrison-agent run --thing "$THING" --broker "$BROKER" --interval "$INTERVAL" --format "$FORMAT" \
    --state-dir /var/lib/garrison-agent
echo "garrison-guest: agent exited with $?"
poweroff -f 2>/dev/null || busybox poweroff -f
