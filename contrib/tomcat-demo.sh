#!/bin/bash
# Seed 004's scenario on a Tomcat image built from Debian's packages (root, bridge networking):
#   shale run -id --name tomcat01 -p 8888:8080 IMAGE
#   shale exec tomcat01 rm -rf webapps/docs        (the seed does it in `exec -it ... bash`)
#   shale commit -m=... -a=... tomcat01 tqk/tomcat02:1.0
#   shale run -d -p 7777:8080 IMAGE                -> /docs/ answers 200
#   shale run -d -p 9999:8080 tqk/tomcat02:1.0     -> /docs/ answers 404
# The image: a debootstrap'd Debian bookworm (contrib/mkdebian.sh, a few minutes; set
# DEBIAN_TAR to reuse a tarball), then `apt-get install tomcat10 tomcat10-docs` in a RUN,
# through the default bridge's NAT. Everything the demo makes is removed at the end unless
# KEEP=1. Usage: contrib/tomcat-demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export SHALE_ROOT=${SHALE_ROOT:-$(mktemp -d /tmp/shale-tomcat.XXXXXX)}
work=$(mktemp -d)
image=tomcat-demo:10
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    shale rm -f tomcat01 tomcat7777 tomcat9999 >/dev/null 2>&1 || true
    shale rmi tqk/tomcat02:1.0 "$image" debian:bookworm >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# status code of GET http://127.0.0.1:PORT/PATH once Tomcat answers (the JVM takes seconds)
status() {
  local url=http://127.0.0.1:$1$2 code=000
  for _ in $(seq 1 240); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)
    [ "$code" != 000 ] && break
    sleep 0.5
  done
  echo "$code"
}

tar=${DEBIAN_TAR:-}
if [ -z "$tar" ]; then
  tar="$work/debian.tar"
  echo "debootstrap: Debian bookworm minbase (a few minutes)"
  contrib/mkdebian.sh "$tar" >/dev/null
fi
say shale import "$tar" debian:bookworm

cat > "$work/Dockerfile" <<'EOF'
FROM debian:bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      tomcat10 tomcat10-docs \
 && rm -rf /var/lib/apt/lists/*
# Debian serves the docs app from /usr/share through a context file, and to 127.0.0.1 only;
# as in the official image, make it a directory of webapps/ (so `rm -rf webapps/docs`
# removes it) that anyone may read.
RUN rm /etc/tomcat10/Catalina/localhost/docs.xml \
 && cp -a /usr/share/tomcat10-docs/docs /var/lib/tomcat10/webapps/docs \
 && echo '<Context antiResourceLocking="false" />' \
      > /var/lib/tomcat10/webapps/docs/META-INF/context.xml
ENV CATALINA_HOME=/usr/share/tomcat10 CATALINA_BASE=/var/lib/tomcat10 CATALINA_TMPDIR=/tmp
WORKDIR /var/lib/tomcat10
EXPOSE 8080
CMD ["/usr/share/tomcat10/bin/catalina.sh", "run"]
EOF
say shale build -t "$image" "$work"

say shale run -id --name tomcat01 -p 8888:8080 "$image"
echo "8888 /docs/ -> $(status 8888 /docs/)"
say shale exec tomcat01 ls webapps
say shale exec tomcat01 rm -rf webapps/docs
say shale exec tomcat01 ls webapps
say shale commit -m="docs removed" -a="tqk" tomcat01 tqk/tomcat02:1.0
say shale run -d --name tomcat7777 -p 7777:8080 "$image"
say shale run -d --name tomcat9999 -p 9999:8080 tqk/tomcat02:1.0
say shale ps
a=$(status 7777 /docs/)
b=$(status 9999 /docs/)
echo
echo "curl http://127.0.0.1:7777/docs/ -> $a (expected 200)"
echo "curl http://127.0.0.1:9999/docs/ -> $b (expected 404)"
echo "curl http://127.0.0.1:9999/      -> $(status 9999 /) (Tomcat itself runs)"
[ "$a" = 200 ] && [ "$b" = 404 ]
