#!/bin/sh
# `make deb`: build dist/tq_<version>_<arch>.deb with dpkg-buildpackage -us -uc -b.
# Builds in a scratch copy of the work tree (so debian/ build products and the
# parent directory stay clean), installs missing build dependencies with apt
# when run as root, and prints lintian's findings (they do not fail the build; tests/system/test_lintian.py
# fails on any error or warning that debian/tq.lintian-overrides does not override with a reason).
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
# Debian's python3 must build the venv, not a pyenv or virtualenv one on PATH.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME || true

if ! (cd "$repo" && dpkg-checkbuilddeps) 2>/dev/null; then
    [ "$(id -u)" = 0 ] || { (cd "$repo" && dpkg-checkbuilddeps); exit 1; }
    ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends build-essential lintian
    DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -q "$repo"
fi

scratch=$(mktemp -d /var/tmp/tq-deb.XXXXXX)
trap 'rm -rf "$scratch"' EXIT INT TERM
mkdir "$scratch/tq"
tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./dist --exclude=./build \
    --exclude=./debian/tq --exclude=./debian/.debhelper --exclude=__pycache__ \
    --exclude='.*_cache' -cf - . | tar -C "$scratch/tq" -xf -
(cd "$scratch/tq" && dpkg-buildpackage -us -uc -b)

mkdir -p "$repo/dist"
cp "$scratch"/tq_*.deb "$scratch"/tq_*.buildinfo "$scratch"/tq_*.changes "$repo/dist/"
deb=$(ls "$scratch"/tq_*.deb)
echo "built dist/$(basename "$deb")"
if command -v lintian >/dev/null; then
    echo "lintian:"
    lintian --display-info "$repo/dist/$(basename "$deb")" || true
fi
