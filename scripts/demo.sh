#!/usr/bin/env bash
# Install occoord and run its main job on an example: submit a manifest into a spool, accept it,
# and show the spool's files (the state of every task is a file name).
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
install_occoord ""
OCC="$VENV/bin/occoord"
SPOOL="${OCCOORD_SPOOL:-$ROOT/spool}"
export OCCOORD_SPOOL="$SPOOL"

"$OCC" init
"$OCC" validate contrib/examples/hello.json
"$OCC" submit contrib/examples/hello.json
"$OCC" accept --wait
RUN="$(ls "$SPOOL/runs" | tail -n 1)"
echo "--- ls $SPOOL/runs/$RUN/tasks"
ls "$SPOOL/runs/$RUN/tasks"
"$OCC" status "$RUN"
