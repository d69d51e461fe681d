#!/usr/bin/env bash
# Install what is missing, build the built-in models, and run a single-node appliance in the
# foreground. Ctrl-C stops every process it started. Extra arguments go to `appliance up`,
# e.g. scripts/run.sh --set http.port=8081
# The node root (config, models, rendered files, logs) is .node/ in the checkout unless
# APPLIANCE_ROOT says otherwise; no root privileges are needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
export APPLIANCE_ROOT="${APPLIANCE_ROOT:-$PWD/.node}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
.venv/bin/appliance builtin-models
exec .venv/bin/appliance up --foreground "$@"
