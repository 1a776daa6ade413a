#!/bin/sh
# Make a Debian bookworm (minbase) rootfs tarball with debootstrap, ready for `shale import`.
# Usage: contrib/mkdebian.sh OUT.tar [MIRROR]
set -eu
out=${1:?usage: $0 OUT.tar [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
command -v debootstrap >/dev/null || { echo "apt-get install debootstrap" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
debootstrap --variant=minbase bookworm "$tmp/rootfs" "$mirror" >&2
rm -rf "$tmp/rootfs/var/cache/apt/archives/"*.deb "$tmp/rootfs/var/lib/apt/lists/"*
tar --numeric-owner --xattrs -C "$tmp/rootfs" -cf "$out" .
echo "$out"
