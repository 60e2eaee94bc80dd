#!/usr/bin/env bash
# Drives the admin and account APIs with schemathesis (property-based tests generated from
# GET /openapi.json, every check on): a throw-away PostgreSQL, a debug tollgate with admin
# tokens and the account API, throttles raised so the run is not refused with 429.
#   scripts/schemathesis.sh [extra schemathesis options]
# Needs: a built binary (cargo build; TOLLGATE_BIN to override), PostgreSQL's binaries
# (/usr/lib/postgresql/*/bin), schemathesis (pip install schemathesis; SCHEMATHESIS to
# override). Runs as root (PostgreSQL runs as the postgres user) or as any user owning
# the temp dir. Exit status: schemathesis's.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${TOLLGATE_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/tollgate}
st=${SCHEMATHESIS:-schemathesis}
pg_bin=$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -1)")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

dir=$(mktemp -d /tmp/tollgate-schemathesis-XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

as_pg=()
if [[ $(id -u) -eq 0 ]]; then as_pg=(runuser -u postgres --); chown postgres "$dir"; fi
pg_port=$(free_port)
"${as_pg[@]}" "$pg_bin/initdb" -D "$dir/pg" -A trust -U postgres --no-sync -E UTF8 --locale=C >/dev/null
"${as_pg[@]}" "$pg_bin/postgres" -D "$dir/pg" -p "$pg_port" -k "$dir" -c listen_addresses=127.0.0.1 \
  -c fsync=off >"$dir/pg.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break; sleep 0.2; done
"$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres tollgate

proxy_port=$(free_port)
admin_port=$(free_port)
metrics_port=$(free_port)
token=$(openssl rand -hex 32)
cat >"$dir/tollgate.yaml" <<EOF
server: {threads: 1, grace_period: 0s, graceful_shutdown_timeout: 1s, pid_file: "$dir/tollgate.pid", upgrade_sock: "$dir/upgrade.sock"}
listeners: [{address: "127.0.0.1:$proxy_port"}]
metrics: {address: "127.0.0.1:$metrics_port"}
database: {url: "postgres://postgres@127.0.0.1:$pg_port/tollgate"}
admin:
  address: 127.0.0.1:$admin_port
  failed_auth_throttle: {requests: 1000000, per: 1s}
account:
  login_throttle:
    per_account: {requests: 1000000, per: 1s}
    per_ip: {requests: 1000000, per: 1s}
    per_session: {requests: 1000000, per: 1s}
auth:
  api_key: {pepper_env: TOLLGATE_KEY_PEPPER}
upstreams: [{name: a, targets: [{address: "127.0.0.1:9"}]}]
routes: [{name: r, path_prefix: /, upstream: a}]
EOF
TOLLGATE_ADMIN_TOKENS=$token TOLLGATE_KEY_PEPPER=$(openssl rand -hex 32) \
  TOLLGATE_ACCOUNT_SECRET=$(openssl rand -hex 32) \
  "$bin" -c "$dir/tollgate.yaml" >"$dir/tollgate.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin_port/health" >/dev/null && break; sleep 0.2; done

set +e
# From the temp dir: schemathesis keeps a cache in ./.schemathesis.
cd "$dir"
"$st" run "http://127.0.0.1:$admin_port/openapi.json" -H "Authorization: Bearer $token" \
  --checks all --max-examples 50 "$@"
status=$?
set -e
if [[ -n ${KEEP_LOGS:-} ]]; then cp "$dir/tollgate.log" "$KEEP_LOGS"; fi
exit $status
