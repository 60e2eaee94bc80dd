#!/usr/bin/env bash
# `make image`: builds the runtime image with buildah, without a Docker engine or a registry,
# then starts it and checks that it serves. The image is the Dockerfile's own `runtime` stage,
# built on a Debian base made here by debootstrap, with a binary built on the host:
#   1. the binary: $TOLLGATE_BIN, else `cargo build --profile release`
#   2. localhost/tollgate-base:bookworm: debootstrap minbase (with ca-certificates), once
#   3. localhost/tollgate:dev: `buildah bud --target runtime` of the Dockerfile
#   4. smoke: in the image, `tollgate check`, then the gateway with a demo upstream, a proxied
#      request and `tollgate health`
# Needs root, buildah and debootstrap (Debian's packages; installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || {
    echo "installing $tool"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
  }
done
B=(buildah --storage-driver vfs)
work=target/image
mkdir -p "$work"

bin=${TOLLGATE_BIN:-}
if [[ -z $bin ]]; then
  cargo build --profile release --bin tollgate
  bin=target/release/tollgate
fi

if ! "${B[@]}" inspect --type image localhost/tollgate-base:bookworm >/dev/null 2>&1; then
  if [[ ! -x $work/rootfs/bin/sh ]]; then
    echo "debootstrap: a minimal Debian bookworm in $work/rootfs"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$work/rootfs" \
      http://deb.debian.org/debian >"$work/debootstrap.log"
  fi
  ctr=$("${B[@]}" from scratch)
  "${B[@]}" copy "$ctr" "$work/rootfs/" / >/dev/null
  "${B[@]}" commit --quiet --rm "$ctr" localhost/tollgate-base:bookworm >/dev/null
fi

ctr=$("${B[@]}" from scratch)
"${B[@]}" copy "$ctr" "$bin" /tollgate >/dev/null
"${B[@]}" commit --quiet --rm "$ctr" localhost/tollgate-binary:latest >/dev/null

"${B[@]}" bud --isolation chroot --quiet --format docker --target runtime \
  --build-arg RUNTIME_BASE=localhost/tollgate-base:bookworm \
  --build-arg BINARY_SOURCE=localhost/tollgate-binary:latest \
  -t localhost/tollgate:dev . >/dev/null
echo "built localhost/tollgate:dev"

ctr=$("${B[@]}" from localhost/tollgate:dev)
trap '"${B[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
run() { "${B[@]}" run --isolation chroot --user tollgate "$ctr" -- "$@"; }
run /usr/local/bin/tollgate check -c /etc/tollgate/tollgate.yaml
# The image's default config: the gateway on :8080 in front of a demo upstream on :9000.
run /bin/sh -c '
  /usr/local/bin/tollgate echo --listen 127.0.0.1:9000 & echo_pid=$!
  /usr/local/bin/tollgate -c /etc/tollgate/tollgate.yaml >/tmp/gw.log 2>&1 & gw_pid=$!
  for i in $(seq 50); do /usr/local/bin/tollgate health >/dev/null 2>&1 && break; sleep 0.2; done
  status=0
  /usr/local/bin/tollgate health || status=1
  /usr/local/bin/tollgate health --url http://127.0.0.1:8080/hello || status=1
  kill $gw_pid $echo_pid; wait 2>/dev/null
  [ $status = 0 ] || cat /tmp/gw.log
  exit $status'
echo "image smoke test passed: localhost/tollgate:dev serves a proxied request"
