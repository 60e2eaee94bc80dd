#!/usr/bin/env bash
# Cold build time of each cargo profile (README, "Build profiles"): `cargo build --profile P`
# in a fresh CARGO_TARGET_DIR per profile, one after the other, timed with /usr/bin/time.
#   loadtest/build-times.sh [PROFILE...]      (default: release dist)
# Prints one Markdown row per profile: wall time, CPU time (user + sys; what the build costs
# whatever else runs) and the load average before and after (other builds make wall time
# longer: run it on a quiet machine for figures to keep). Each fresh target dir is deleted after.
set -euo pipefail
cd "$(dirname "$0")/.."
profiles=("$@")
[[ ${#profiles[@]} -gt 0 ]] || profiles=(release dist)
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

echo "| profile | cold build, wall | CPU (user + sys) | load average before → after | rustc |"
echo "| --- | ---: | ---: | --- | --- |"
for p in "${profiles[@]}"; do
  dir=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-build-$p-XXXXXX")
  times=$(mktemp)
  before=$(cut -d' ' -f1-3 /proc/loadavg)
  if ! CARGO_TARGET_DIR="$dir" /usr/bin/time -f "%e %U %S" -o "$times" \
      cargo build --profile "$p" --locked --quiet >"$dir.log" 2>&1; then
    echo "cargo build --profile $p failed; see $dir.log" >&2
    exit 1
  fi
  after=$(cut -d' ' -f1-3 /proc/loadavg)
  read -r wall user sys <"$times"
  awk -v p="$p" -v w="$wall" -v u="$user" -v s="$sys" -v b="$before" -v a="$after" -v r="$(rustc --version)" \
    'BEGIN { printf "| %s | %.1f min | %.1f min | %s → %s | %s |\n", p, w / 60, (u + s) / 60, b, a, r }'
  rm -rf "$dir" "$dir.log" "$times"
done
