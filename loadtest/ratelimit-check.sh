#!/usr/bin/env bash
# The exact-quota check of k6/ratelimit.js with curl: against a running gateway whose route
# limits this caller to QUOTA requests per WINDOW_SECONDS (fixed window, a single limit),
# send QUOTA + EXTRA requests inside one window, starting with its first request, and check
# that exactly the first QUOTA get 200 and the rest 429; that RateLimit-Policy and RateLimit
# have the Structured Field shape (q= w= / r= t=) and name the quota; that X-RateLimit-Limit
# is QUOTA and X-RateLimit-Remaining counts down to 0; and that every 429 has Retry-After and
# {"error": "rate_limited"}. Exits 0 when all hold, 1 otherwise, 2 on bad usage.
#
#   TARGET=http://127.0.0.1:8080 REQUEST_PATH=/api API_KEY=tg_… QUOTA=20 WINDOW_SECONDS=10 \
#     loadtest/ratelimit-check.sh
#
#   TARGET  REQUEST_PATH (/)  METHOD (GET)  API_KEY  API_KEY_HEADER (x-api-key)  BEARER_TOKEN
#   HOST_HEADER  QUOTA (10)  WINDOW_SECONDS (10, at least 2)  EXTRA (5)  ALIGN_ATTEMPTS (3)
#   VERBOSE=1 prints every answer's status and headers.
#
# Use a credential nothing else is using. No clock is needed: a first request reads t (the
# seconds left in its window) from RateLimit; unless it was itself the first of a fresh
# window (remaining = QUOTA-1) the script sleeps t seconds, into the next window, and tries
# again.
set -euo pipefail

TARGET=${TARGET:-http://127.0.0.1:8080}
REQUEST_PATH=${REQUEST_PATH:-/}
METHOD=${METHOD:-GET}
QUOTA=${QUOTA:-10}
WINDOW_SECONDS=${WINDOW_SECONDS:-10}
EXTRA=${EXTRA:-5}
ALIGN_ATTEMPTS=${ALIGN_ATTEMPTS:-3}
url="${TARGET%/}/${REQUEST_PATH#/}"

for v in QUOTA WINDOW_SECONDS EXTRA ALIGN_ATTEMPTS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a whole number (got ${!v})" >&2; exit 2; }
done
if (( QUOTA < 1 || EXTRA < 1 || WINDOW_SECONDS < 2 )); then
  echo "need QUOTA >= 1, EXTRA >= 1, WINDOW_SECONDS >= 2" >&2; exit 2
fi
command -v curl >/dev/null || { echo "curl is not installed" >&2; exit 2; }

curl_args=(-sS --http1.1 -X "$METHOD" --max-time 10)
[[ -n ${API_KEY:-} ]] && curl_args+=(-H "${API_KEY_HEADER:-x-api-key}: $API_KEY")
[[ -n ${BEARER_TOKEN:-} ]] && curl_args+=(-H "Authorization: Bearer $BEARER_TOKEN")
[[ -n ${HOST_HEADER:-} ]] && curl_args+=(-H "Host: $HOST_HEADER")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# send N: request number N; leaves $work/N.h (headers), $work/N.b (body), $work/N.s (status).
send() {
  curl "${curl_args[@]}" -D "$work/$1.h" -o "$work/$1.b" -w '%{http_code}' "$url" >"$work/$1.s" \
    || { echo "request $1: curl failed (is the gateway at $TARGET?)" >&2; exit 1; }
  tr -d '\r' <"$work/$1.h" >"$work/$1.h.tmp" && mv "$work/$1.h.tmp" "$work/$1.h"
}
# hdr N NAME: the value of header NAME (case-insensitive) in answer N, or nothing.
hdr() {
  awk -v name="$(tr 'A-Z' 'a-z' <<<"$2")" 'BEGIN { FS = ":" }
    tolower($1) == name { sub(/^[^:]*:[ \t]*/, ""); sub(/[ \t]+$/, ""); v = v == "" ? $0 : v ", " $0 }
    END { printf "%s", v }' "$work/$1.h"
}
status() { cat "$work/$1.s"; }

# Structured Field List members: "name" or token, then ;key=value parameters.
sf_member='("([^"\\]|\\.)*"|[A-Za-z*][A-Za-z0-9!#$%&'\''*+.^_`|~:/-]*)(;[a-z*][a-z0-9_.*-]*(=("([^"\\]|\\.)*"|[A-Za-z0-9*][A-Za-z0-9!#$%&'\''*+.^_`|~:/-]*))?)*'
sf_list="^${sf_member}([ \t]*,[ \t]*${sf_member})*\$"
# param MEMBER KEY: the integer value of ;KEY= in MEMBER, or nothing.
param() { grep -oE ";$2=-?[0-9]+" <<<"$1" | head -n1 | cut -d= -f2 || true; }
name_of() { sed -E 's/^[ \t]*("([^"\\]|\\.)*"|[^;]*).*/\1/' <<<"$1"; }

problems=0
problem() { echo "  request $1: $2" >&2; problems=$((problems + 1)); }

# 1. Find the first request of a fresh window.
first_t=""
for (( attempt = 0; attempt <= ALIGN_ATTEMPTS; attempt++ )); do
  send 1
  s=$(status 1); rl=$(hdr 1 RateLimit)
  if [[ $s != 200 && $s != 429 ]]; then
    echo "expected 200 or 429, got $s: is TARGET/REQUEST_PATH right and the credential valid?" >&2
    head -c 300 "$work/1.b" >&2; echo >&2; exit 1
  fi
  r=$(param "$rl" r); t=$(param "$rl" t)
  if [[ -z $r || -z $t ]]; then
    echo "no usable RateLimit header (\"$rl\"): is the route rate limited for this caller?" >&2; exit 1
  fi
  policy=$(hdr 1 RateLimit-Policy); member=""
  IFS=',' read -ra members <<<"$policy"
  for m in "${members[@]}"; do [[ $(name_of "$m") == "$(name_of "$rl")" ]] && member=$m; done
  if [[ $(param "$member" q) != "$QUOTA" || $(param "$member" w) != "$WINDOW_SECONDS" ]]; then
    echo "the caller's tightest window is ${member# } (RateLimit-Policy: $policy) but QUOTA=$QUOTA WINDOW_SECONDS=$WINDOW_SECONDS: make them match" >&2
    exit 1
  fi
  if [[ $s == 200 && $r == $((QUOTA - 1)) ]]; then first_t=$t; break; fi
  wait_s=$(( t > 0 ? t : 1 ))
  echo "window already in use (status $s, r=$r); waiting ${wait_s}s" >&2
  sleep "$wait_s"
done
[[ -n $first_t ]] || { echo "no fresh window after $ALIGN_ATTEMPTS waits: is something else using this credential, or is QUOTA wrong?" >&2; exit 1; }

# 2. The rest of the window, back to back.
total=$((QUOTA + EXTRA))
start_ns=$(date +%s%N)
for (( i = 2; i <= total; i++ )); do send "$i"; done
elapsed_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))

# 3. Check every answer.
if (( elapsed_ms >= (first_t - 1) * 1000 )); then
  echo "  $total requests took ${elapsed_ms}ms but the window had only ~$((first_t - 1))s left: inconclusive, raise WINDOW_SECONDS" >&2
  problems=$((problems + 1))
fi
ok=0; limited=0
for (( i = 1; i <= total; i++ )); do
  s=$(status "$i")
  [[ ${VERBOSE:-} == 1 ]] && { echo "--- request $i: $s"; cat "$work/$i.h"; }
  (( i <= QUOTA )) && want=200 || want=429
  [[ $s == 200 ]] && ok=$((ok + 1)); [[ $s == 429 ]] && limited=$((limited + 1))
  [[ $s == "$want" ]] || problem "$i" "status $s, expected $want"

  policy=$(hdr "$i" RateLimit-Policy); rl=$(hdr "$i" RateLimit)
  if [[ ! $policy =~ $sf_list ]]; then problem "$i" "RateLimit-Policy \"$policy\" is not a Structured Field list"
  elif [[ ! $rl =~ $sf_list || $rl == *,* ]]; then problem "$i" "RateLimit \"$rl\" is not a one-member Structured Field list"
  else
    name=$(name_of "$rl")
    member=""
    IFS=',' read -ra members <<<"$policy"
    for m in "${members[@]}"; do [[ $(name_of "$m") == "$name" ]] && member=$m; done
    if [[ -z $member ]]; then problem "$i" "RateLimit names $name, which RateLimit-Policy ($policy) does not list"
    else
      [[ $(param "$member" q) == "$QUOTA" ]] || problem "$i" "policy $name: q=$(param "$member" q), expected QUOTA=$QUOTA"
      [[ $(param "$member" w) == "$WINDOW_SECONDS" ]] || problem "$i" "policy $name: w=$(param "$member" w), expected WINDOW_SECONDS=$WINDOW_SECONDS"
    fi
    want_r=$(( QUOTA - i > 0 ? QUOTA - i : 0 ))
    [[ $(param "$rl" r) == "$want_r" ]] || problem "$i" "RateLimit r=$(param "$rl" r), expected $want_r"
    rt=$(param "$rl" t)
    [[ -n $rt ]] && (( rt <= WINDOW_SECONDS )) || problem "$i" "RateLimit t=$rt not in 0..$WINDOW_SECONDS"
  fi

  want_rem=$(( QUOTA - i > 0 ? QUOTA - i : 0 ))
  [[ $(hdr "$i" X-RateLimit-Remaining) == "$want_rem" ]] || problem "$i" "X-RateLimit-Remaining $(hdr "$i" X-RateLimit-Remaining), expected $want_rem"
  [[ $(hdr "$i" X-RateLimit-Limit) == "$QUOTA" ]] || problem "$i" "X-RateLimit-Limit $(hdr "$i" X-RateLimit-Limit), expected $QUOTA"
  retry=$(hdr "$i" Retry-After)
  if [[ $want == 429 ]]; then
    if [[ ! $retry =~ ^[0-9]+$ ]] || (( retry < 1 || retry > WINDOW_SECONDS )); then
      problem "$i" "Retry-After \"$retry\" is not an integer in 1..$WINDOW_SECONDS"
    fi
    grep -qE '"error"[[:space:]]*:[[:space:]]*"rate_limited"' "$work/$i.b" || problem "$i" "429 body lacks \"error\": \"rate_limited\": $(head -c 200 "$work/$i.b")"
  elif [[ -n $retry ]]; then
    problem "$i" "Retry-After \"$retry\" on an allowed request"
  fi
done

echo "$ok x 200, $limited x 429 in $((elapsed_ms + 0))ms after the first; $problems problem(s)"
if (( problems == 0 )); then echo "ratelimit-check: ok"; else echo "ratelimit-check: FAILED" >&2; exit 1; fi
