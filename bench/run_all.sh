#!/usr/bin/env bash
# Reproduce every serving benchmark table of bench/README.md in one run (about 8 minutes on the
# 2-core development VM). Run after scripts/run.sh's (or scripts/install.sh's) install.
# Usage: bench/run_all.sh [serving_bench.py options, e.g. --rounds 3 --no-peers]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian load generators (not test dependencies): wrk (REST), h2load (gRPC, in nghttp2-client).
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

[ -x .venv/bin/appliance ] || scripts/install.sh

# The peers, each in its own venv under bench/ (gitignored; MLServer and KServe pin conflicting
# dependencies, so they cannot share one). Never project dependencies.
peer_venv() {  # name, pip requirements...
  local dir="bench/.venv-$1"; shift
  if [ ! -f "$dir/.installed" ]; then
    echo "[bench] installing $* into $dir (first run: a few minutes)"
    python3.11 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "$@"
    touch "$dir/.installed"
  fi
}
peer_venv mlserver mlserver==1.7.1 tensorflow-cpu==2.21.0 uvloop
peer_venv kserve kserve==0.21.0 tensorflow-cpu==2.21.0 uvloop

export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python bench/serving_bench.py "$@"
