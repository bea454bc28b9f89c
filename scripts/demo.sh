#!/usr/bin/env bash
# Install greenmine with everything the demo needs, then run the demo.
#
#   bash scripts/demo.sh [--duration SECONDS]
#
# The demo uses Mosquitto when it is installed (apt-get install mosquitto) and
# an in-process demo broker otherwise; it needs no internet.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[all]'
exec .venv/bin/greenmine demo "$@"
