#!/bin/sh
# Run every benchmark: benchmarks/run.sh [--quick] [options of python -m benchmarks]
set -eu
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" -m benchmarks "$@"
