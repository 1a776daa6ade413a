#!/bin/bash
# The main job of shale, end to end, on a fresh Debian machine (root):
# install, make a busybox base from Debian's busybox-static, import it, show images and
# history, run a container, save and load.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s busybox-static >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq busybox-static >/dev/null
fi
python3 -m pip install -q -e . 2>&1 | grep -v -i warning || true
python3 -m compileall -q src/shale >/dev/null
export SHALE_ROOT=${SHALE_ROOT:-$(mktemp -d /tmp/shale-demo.XXXXXX)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
contrib/mkbusybox.sh "$work/busybox.tar" >/dev/null
say shale import -c 'CMD ["sh"]' -m "busybox base" "$work/busybox.tar" busybox:demo
say shale tag busybox:demo demo/busybox:1
say shale images
say shale history busybox:demo
say shale run --rm busybox:demo sh -c 'echo hello from a shale container; cat /etc/hostname'
say shale run --name seed004 -d busybox:demo sleep 600
say shale exec seed004 rm -rf /home
say shale diff seed004
say shale commit -m "no /home" -a demo seed004 busybox:nohome
say shale rm -f seed004
say shale history busybox:nohome
say shale save -o "$work/images.tar" busybox:demo busybox:nohome
say tar -tf "$work/images.tar"
say shale rmi busybox:nohome demo/busybox:1 busybox:demo
say shale load -i "$work/images.tar"
say shale images
say shale system check
echo
echo "data root: $SHALE_ROOT"
