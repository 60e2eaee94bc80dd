#!/usr/bin/env bash
# Installs what building or testing tollgate needs and this machine lacks (Debian/Ubuntu).
#   scripts/ensure-deps.sh build   cmake, pkg-config, libssl-dev (Pingora's build)
#   scripts/ensure-deps.sh test    the above plus redis-server, PostgreSQL, promtool, openssl, node,
#                                  python3 and kubernetes-validate (pip: tests/deploy_files.rs)
#   scripts/ensure-deps.sh bench   the above plus wrk and nginx (apt), and oha (cargo install: the
#                                  open-loop load generator; Debian has neither oha nor wrk2)
# Nothing is installed when everything is present; installing needs root (or sudo).
set -euo pipefail

want=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || want+=("$2"); }
need_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" || want+=("$1"); }

case "${1:-build}" in
  build|test|bench) ;;
  *) echo "usage: $0 build|test|bench" >&2; exit 2 ;;
esac

need_cmd cmake cmake
need_cmd pkg-config pkg-config
need_pkg libssl-dev
if [[ "${1:-build}" != build ]]; then
  need_cmd redis-server redis-server
  need_cmd redis-cli redis-tools
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || want+=(postgresql)
  need_cmd promtool prometheus
  need_cmd openssl openssl
  need_cmd runuser util-linux
  # tests/deploy_systemd.rs checks the unit with systemd-analyze verify.
  need_cmd systemd-analyze systemd
  # tests/loadtest_scripts.rs syntax-checks the k6 scripts with node.
  need_cmd node nodejs
  # tests/deploy_files.rs validates deploy/kubernetes/ with kubernetes-validate (PyPI).
  need_cmd python3 python3
  python3 -m pip --version >/dev/null 2>&1 || want+=(python3-pip)
fi
if [[ "${1:-build}" == bench ]]; then
  need_cmd wrk wrk
  need_cmd nginx nginx-light
fi

if [[ ${#want[@]} -gt 0 ]]; then
  echo "installing: ${want[*]}"
  if [[ $(id -u) -eq 0 ]]; then SUDO=(); elif command -v sudo >/dev/null; then SUDO=(sudo); else
    echo "missing packages and not root: install ${want[*]} yourself" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  # The Debian packages start their services on install; tests start their own servers.
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  for svc in redis-server postgresql nginx prometheus; do
    "${SUDO[@]}" service "$svc" stop >/dev/null 2>&1 || true
  done
fi

# kubernetes-validate (PyPI) checks the Kubernetes manifests offline against the bundled
# schemas (tests/deploy_files.rs). A Debian python3 refuses a plain pip install
# (externally managed): then it goes in with --break-system-packages, as it has no dependency
# Debian's own python3 packages rely on.
if [[ "${1:-build}" != build ]] && ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "installing kubernetes-validate (pip)"
  pip=(python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore)
  if [[ $(id -u) -ne 0 ]]; then pip+=(--user); fi
  "${pip[@]}" kubernetes-validate 2>/dev/null || "${pip[@]}" --break-system-packages kubernetes-validate
fi

# oha (crates.io) drives bench.py's open-loop case: a fixed arrival rate with latency corrected
# for coordinated omission. One compile of a few minutes, into ~/.cargo/bin.
if [[ "${1:-build}" == bench ]] && ! command -v oha >/dev/null 2>&1; then
  echo "installing oha (cargo install oha --locked)"
  (unset CARGO_TARGET_DIR; cargo install oha --locked --quiet)
fi
