#!/bin/sh
# Build (once) a cached Debian bookworm rootfs that boots systemd in systemd-nspawn.
# Usage: tests/system/rootfs.sh            -> prints the rootfs path
# Env:   TQ_ROOTFS (default /var/cache/tq-test/bookworm), TQ_MIRROR (default deb.debian.org).
# The rootfs is built in a temporary directory beside it and renamed into place
# only when complete, so a half-built tree is never used. Delete it to rebuild.
set -eu

rootfs=${TQ_ROOTFS:-/var/cache/tq-test/bookworm}
mirror=${TQ_MIRROR:-http://deb.debian.org/debian}
# systemd + dbus to boot; python3 + tq's Debian dependencies so that
# `apt install ./tq.deb` inside the container needs no network.
include=systemd,systemd-sysv,dbus,python3,python3-systemd,python3-sdnotify,procps
# Bump when anything below changes: a cached rootfs with another recipe is rebuilt.
recipe="2 $include"

if [ -x "$rootfs/lib/systemd/systemd" ] && [ "$(cat "$rootfs/.tq-rootfs-complete" 2>/dev/null)" = "$recipe" ]; then
    echo "$rootfs"
    exit 0
fi

command -v debootstrap >/dev/null || { echo "rootfs.sh: debootstrap not installed" >&2; exit 1; }
parent=$(dirname "$rootfs")
mkdir -p "$parent"
tmp=$(mktemp -d "$parent/.bookworm.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
chmod 755 "$tmp"    # mktemp makes it 0700; it becomes the container's /

debootstrap --variant=minbase --include="$include" bookworm "$tmp" "$mirror" >&2

# Quiet and deterministic: a fixed hostname, no getty (tests enter with nsenter),
# a persistent journal so the reboot test can read the previous boot.
echo tq-test > "$tmp/etc/hostname"
mkdir -p "$tmp/var/log/journal"
ln -sf /dev/null "$tmp/etc/systemd/system/console-getty.service"
ln -sf /dev/null "$tmp/etc/systemd/system/getty.target"
# The tests make /proc/sys writable so that fs.mqueue.* (per IPC namespace) can be
# raised; mask Debian's files that would change host-wide sysctls.
ln -sf /dev/null "$tmp/etc/sysctl.d/50-pid-max.conf"
ln -sf /dev/null "$tmp/etc/sysctl.d/99-protect-links.conf"
echo "$recipe" > "$tmp/.tq-rootfs-complete"

rm -rf "$rootfs"
mv "$tmp" "$rootfs"
trap - EXIT INT TERM
echo "$rootfs"
