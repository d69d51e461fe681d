#!/usr/bin/env bash
# Install what is missing, then run the whole test suite. Extra arguments go to pytest,
# e.g. scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh --with-test-tools
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec .venv/bin/python -m pytest "$@"
