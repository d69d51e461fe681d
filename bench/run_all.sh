#!/usr/bin/env bash
# Reproduce every serving benchmark table of bench/README.md in one run (about 15 minutes on the
# 2-core development VM, quiet). Exits non-zero when a figure is not confirmed by the server's own
# counter (the cross-checks listed at the end of the run). Run after scripts/install.sh.
# Usage: bench/run_all.sh [serving_bench.py options, e.g. --rounds 3 --no-peers]
set -euo pipefail
cd "$(dirname "$0")/.."

bench/load_tools.sh   # wrk and h2load, when missing

[ -x .venv/bin/appliance ] || scripts/install.sh

# The peers, each in its own venv under bench/ (gitignored; MLServer and KServe pin conflicting
# dependencies, so they cannot share one). Never project dependencies. Each at its documented best:
# uvicorn's C parser (httptools) and uvloop, without which uvicorn falls back to the pure-Python h11
# parser (MLServer measured 2.9-3.4k req/s without httptools, 4.4-4.5k with it). The marker file
# holds the requirements it was installed with, so a changed list installs again.
peer_venv() {  # name, pip requirements...
  local dir="bench/.venv-$1"; shift
  if [ "$(cat "$dir/.installed" 2>/dev/null)" != "$*" ]; then
    echo "[bench] installing $* into $dir (first run: a few minutes)"
    [ -x "$dir/bin/pip" ] || python3.11 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "$@"
    echo "$*" > "$dir/.installed"
  fi
  "$dir/bin/python" -c "import httptools, uvloop" || { echo "[bench] $dir lacks httptools/uvloop" >&2; exit 1; }
}
case " $* " in
  *" --no-peers "*) ;;   # only the appliance: the peers' venvs are not needed
  *) peer_venv mlserver mlserver==1.7.1 tensorflow-cpu==2.21.0 uvloop httptools
     peer_venv kserve kserve==0.21.0 tensorflow-cpu==2.21.0 uvloop httptools ;;
esac

export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python bench/serving_bench.py "$@"
