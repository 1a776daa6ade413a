#!/bin/sh
# Make a busybox rootfs tarball from Debian's busybox-static, ready for `shale import`.
# Every applet is linked; /etc/passwd and /etc/group hold root, daemon, nobody and a user.
# Usage: contrib/mkbusybox.sh OUT.tar
set -eu
out=${1:?usage: $0 OUT.tar}
bb=$(command -v busybox || true)
[ -x /bin/busybox ] && bb=/bin/busybox
[ -n "$bb" ] || { echo "busybox-static is not installed (apt-get install busybox-static)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/sbin" "$tmp/usr/bin" "$tmp/usr/sbin" "$tmp/etc" "$tmp/root" \
         "$tmp/tmp" "$tmp/home/app" "$tmp/var" "$tmp/dev" "$tmp/proc" "$tmp/sys"
chmod 1777 "$tmp/tmp"
cp "$bb" "$tmp/bin/busybox"
for applet in $("$bb" --list-full); do
  [ "$applet" = "bin/busybox" ] && continue
  mkdir -p "$tmp/$(dirname "$applet")"
  ln -sf /bin/busybox "$tmp/$applet"
done
cat > "$tmp/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > "$tmp/etc/group" <<'G'
root:x:0:
daemon:x:1:
wheel:x:10:app
app:x:1000:
nogroup:x:65534:
G
chown 1000:1000 "$tmp/home/app"
tar --numeric-owner --sort=name --mtime=@0 -C "$tmp" -cf "$out" .
echo "$out"
