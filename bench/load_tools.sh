#!/usr/bin/env bash
# Install the Debian load generators the benchmarks drive, when missing: wrk (REST) and h2load
# (gRPC, in nghttp2-client). Not test dependencies. Called by run_all.sh and by the bench scripts
# that need them (edge_bench.py, shadow_bench.py) before their first run.
set -euo pipefail
missing=()
for pkg in wrk nghttp2-client; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "[bench] apt-get install ${missing[*]}"
  $sudo apt-get update -qq >/dev/null || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
