#!/bin/sh
# Build, once, an aarch64 Debian guest that runs the Garrison agent at boot (cached).
#
# No binfmt_misc, no chroot, no network beyond the Debian mirror: debootstrap resolves and
# downloads the arm64 packages (--download-only), each package is unpacked with dpkg-deb, the
# Debian arm64 kernel comes from linux-image-arm64, and the whole guest becomes one initramfs
# whose /init brings up the network and starts `garrison-agent run` with settings from the
# kernel command line (garrison.broker=..., garrison.thing=..., garrison.interval=...).
# Output (in $CACHE): vmlinuz, initrd.img. Re-running does nothing unless agent/, collectors/ or
# these scripts changed (then the downloads are reused and the guest is repacked, ~30 s).
#
#   firmware-sim/qemu/build-image.sh            # needs debootstrap, dpkg-deb, cpio, python3 -m pip
#   CACHE=/var/tmp/garrison-qemu SUITE=bookworm MIRROR=http://deb.debian.org/debian
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${CACHE:-/var/tmp/garrison-qemu}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3-minimal,python3,python3-paho-mqtt,python3-psutil,python3-cbor2,iproute2,kmod,busybox-static,linux-image-arm64
PY=${PYTHON:-python3}

for tool in debootstrap dpkg-deb cpio gzip; do
    command -v "$tool" >/dev/null || { echo "build-image: $tool is missing (apt-get install debootstrap cpio)" >&2; exit 2; }
done
mkdir -p "$CACHE"
# Up to date: nothing the guest carries changed since the last build (REBUILD=1 forces one).
if [ "${REBUILD:-0}" = 0 ] && [ -f "$CACHE/initrd.img" ] && [ -f "$CACHE/vmlinuz" ] &&
   [ -z "$(find "$REPO/agent" "$REPO/collectors" "$REPO/setup.cfg" "$HERE" -newer "$CACHE/initrd.img" -print -quit)" ]; then
    echo "build-image: $CACHE/initrd.img is up to date"
    exit 0
fi

# 1. Download the arm64 packages (cached: debootstrap skips what is already there).
DL="$CACHE/download"
if [ ! -f "$DL/.done" ]; then
    echo "build-image: downloading $SUITE arm64 packages from $MIRROR"
    debootstrap --arch=arm64 --download-only --variant=minbase --include="$PACKAGES" \
        "$SUITE" "$DL" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        { echo "build-image: debootstrap failed, see $CACHE/debootstrap.log" >&2; exit 1; }
    touch "$DL/.done"
fi

# 2. Unpack every package into a fresh root (merged /usr, as bookworm installs it).
ROOT="$CACHE/rootfs"
rm -rf "$ROOT"
mkdir -p "$ROOT/usr/bin" "$ROOT/usr/sbin" "$ROOT/usr/lib"
for d in bin sbin lib; do ln -s "usr/$d" "$ROOT/$d"; done
for deb in "$DL"/var/cache/apt/archives/*.deb; do
    dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$ROOT"
done

# 3. The kernel, and only the modules the guest needs (virtio transport and network, sock_diag for the agent); the
#    guest's own depmod indexes them at boot (no host kmod needed).
KVER=$(ls "$ROOT/lib/modules" | head -n 1)
cp "$ROOT/boot/vmlinuz-$KVER" "$CACHE/vmlinuz"
cp "$ROOT/boot/config-$KVER" "$CACHE/config"
MODS="$CACHE/mods"
rm -rf "$MODS" && mkdir -p "$MODS"
(cd "$ROOT/lib/modules/$KVER" &&
    find . \( -name 'virtio_net.ko*' -o -name 'net_failover.ko*' -o -name 'failover.ko*' \
        -o -name 'virtio_mmio.ko*' -o -name 'virtio_pci*.ko*' -o -name 'virtio.ko*' -o -name 'virtio_ring.ko*' -o -name 'inet_diag.ko*' -o -name 'tcp_diag.ko*' -o -name 'udp_diag.ko*' \
        -o -name 'modules.order' -o -name 'modules.builtin*' \) |
    cpio -pdm --quiet "$MODS")
rm -rf "$ROOT/lib/modules/$KVER" "$ROOT/boot" "$ROOT/usr/share/doc" "$ROOT/usr/share/man" "$ROOT/usr/share/locale" \
    "$ROOT/var/cache/apt/archives"
mkdir -p "$ROOT/lib/modules/$KVER"
cp -a "$MODS/." "$ROOT/lib/modules/$KVER/"

# 4. The agent: the project's wheel, unpacked where Debian's python3 looks.
WHEEL_DIR="$CACHE/wheel"
rm -rf "$WHEEL_DIR"
"$PY" -m pip wheel --no-deps -q -w "$WHEEL_DIR" "$REPO" >/dev/null
PYVER=$(ls "$ROOT/usr/lib" | grep -E '^python3\.[0-9]+$' | sort -V | tail -n 1)
SITE="$ROOT/usr/local/lib/$PYVER/dist-packages"
mkdir -p "$SITE"
"$PY" -m zipfile -e "$WHEEL_DIR"/garrison-*.whl "$SITE"
mkdir -p "$ROOT/usr/local/bin"
cat >"$ROOT/usr/local/bin/garrison-agent" <<'PYEOF'
#!/usr/bin/python3
import sys
from garrison.agent.cli import main
sys.exit(main())
PYEOF
chmod 755 "$ROOT/usr/local/bin/garrison-agent"

# 5. /init: mount, network (QEMU user networking: we are 10.0.2.15, the host is 10.0.2.2), agent.
install -m 755 "$HERE/guest-init.sh" "$ROOT/init"
echo garrison-qemu >"$ROOT/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
mkdir -p "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/tmp" "$ROOT/run" "$ROOT/root" "$ROOT/var/lib/garrison-agent"

# 6. One initramfs holds the whole guest (no disk image, no root filesystem driver needed).
(cd "$ROOT" && find . | cpio -o -H newc --quiet | gzip -1) >"$CACHE/initrd.img.tmp"
mv "$CACHE/initrd.img.tmp" "$CACHE/initrd.img"
rm -rf "$ROOT" "$MODS" "$WHEEL_DIR"     # the initramfs has it all; keep only the downloads
echo "build-image: $CACHE/vmlinuz ($KVER) and $CACHE/initrd.img ($(du -h "$CACHE/initrd.img" | cut -f1)) ready"
