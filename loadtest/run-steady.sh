#!/usr/bin/env bash
# Steady load with wrk (the k6 steady.js / soak.js scenario on a machine without k6):
# fixed connections for a fixed time, credentials from the environment, responses counted
# by status, p95/p99/failed-rate thresholds; exits 1 when a threshold fails.
#
#   TARGET=http://127.0.0.1:8080 REQUEST_PATH=/hello API_KEY=tg_… loadtest/run-steady.sh
#   RATE=500 DURATION=30m loadtest/run-steady.sh          # a paced soak
#
#   TARGET (http://127.0.0.1:8080)  REQUEST_PATH (/)  DURATION (30s)  CONNECTIONS (64)
#   THREADS (2)  TIMEOUT (10s)  RATE (unset: as fast as possible)  and those of wrk/steady.lua:
#   API_KEY  API_KEY_HEADER  BEARER_TOKEN  HOST_HEADER  METHOD  P95_MS  P99_MS  MAX_FAILED
#   EXPECTED_STATUSES
#
# Many connections need file descriptors: the soft open-file limit is raised to the hard one.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

TARGET=${TARGET:-http://127.0.0.1:8080}
REQUEST_PATH=${REQUEST_PATH:-/}
DURATION=${DURATION:-30s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
TIMEOUT=${TIMEOUT:-10s}
export CONNECTIONS

command -v wrk >/dev/null || { echo "wrk is not installed (Debian: apt-get install wrk)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(( THREADS <= CONNECTIONS )) || THREADS=$CONNECTIONS

url="${TARGET%/}/${REQUEST_PATH#/}"
echo "wrk: $url, $CONNECTIONS connections, $THREADS threads, $DURATION${RATE:+, about $RATE requests/s}" >&2
exec wrk -t "$THREADS" -c "$CONNECTIONS" -d "$DURATION" --timeout "$TIMEOUT" --latency \
  -s "$here/wrk/steady.lua" "$url"
