# Shared by scripts/*.sh: make .venv (once) and install occoord into it.
# shellcheck shell=bash
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${OCCOORD_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

stage_start() { STAGE_NAME="$1"; STAGE_T0=$(date +%s%N); echo "=== $STAGE_NAME"; }
stage_end() {
  local ms=$(( ($(date +%s%N) - STAGE_T0) / 1000000 ))
  printf '=== %s: %d.%03d s\n' "$STAGE_NAME" $((ms / 1000)) $((ms % 1000))
}

install_occoord() {
  local extra="${1:-}"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${extra}"
}
