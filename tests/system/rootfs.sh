#!/bin/sh
# Build (once) a cached Debian bookworm rootfs that boots systemd in systemd-nspawn.
# Usage: tests/system/rootfs.sh            -> prints the rootfs path
#        tests/system/rootfs.sh --mirror   -> prints the Debian mirror it would use
# Env:   TQ_ROOTFS (default /var/cache/tq-test/bookworm); TQ_MIRROR (default: the mirror of this machine's
#        own apt sources, so that it works wherever apt works, behind a local mirror or proxy too);
#        TQ_APT_ETC (default /etc/apt, where those sources are read).
# The rootfs is built in a temporary directory beside it and renamed into place
# only when complete, so a half-built tree is never used. Delete it to rebuild.
set -eu

rootfs=${TQ_ROOTFS:-/var/cache/tq-test/bookworm}
apt_etc=${TQ_APT_ETC:-/etc/apt}

# The first Debian archive in apt's sources: a `deb` entry for a release suite (a plain word such as
# bookworm, not -security or -updates). deb822 files (sources.list.d/*.sources) first, then the
# one-line format (sources.list, sources.list.d/*.list).
apt_mirror() {
    for f in "$apt_etc"/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk 'BEGIN { RS = ""; FS = "\n" }
        {
            types = ""; uris = ""; suites = ""; enabled = 1
            for (i = 1; i <= NF; i++) {
                line = $i
                if (line ~ /^Types:/) { sub(/^Types:[ \t]*/, "", line); types = " " line " " }
                else if (line ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", line); uris = line }
                else if (line ~ /^Suites:/) { sub(/^Suites:[ \t]*/, "", line); suites = " " line " " }
                else if (line ~ /^Enabled:[ \t]*no/) { enabled = 0 }
            }
            if (enabled && types ~ / deb / && suites ~ / [a-z]+ /) { split(uris, u, /[ \t]+/); print u[1]; exit }
        }' "$f"
    done
    for f in "$apt_etc"/sources.list "$apt_etc"/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk '$1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while (i < NF && $i !~ /\]$/) i++; i++ }
            if ($(i + 1) ~ /^[a-z]+$/) { print $i; exit }
        }' "$f"
    done
}

mirror=${TQ_MIRROR:-$(apt_mirror | head -n 1)}
if [ "${1:-}" = --mirror ]; then
    echo "$mirror"
    exit 0
fi
# systemd + dbus to boot; python3 + tq's Debian dependencies so that
# `apt install ./tq.deb` inside the container needs no network.
include=systemd,systemd-sysv,dbus,python3,python3-systemd,python3-sdnotify,python3-croniter,python3-prometheus-client,python3-aiohttp,procps
# Bump when anything below changes: a cached rootfs with another recipe is rebuilt.
recipe="5 $include"

if [ -x "$rootfs/lib/systemd/systemd" ] && [ "$(cat "$rootfs/.tq-rootfs-complete" 2>/dev/null)" = "$recipe" ]; then
    echo "$rootfs"
    exit 0
fi

command -v debootstrap >/dev/null || { echo "rootfs.sh: debootstrap not installed" >&2; exit 1; }
[ -n "$mirror" ] || { echo "rootfs.sh: no Debian archive in $apt_etc/sources.list*; set TQ_MIRROR" >&2; exit 1; }
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
