#!/usr/bin/env bash
# Install occoord and run its main job end to end: a watcher serves a spool (with the built-in
# OpenCode simulator, so no model or account is needed), a manifest is copied into incoming/, and
# the task files are listed each time they change until the run's summary appears.
#
# With a real OpenCode server instead: drop --simulate (occoord spawns `opencode serve`) or pass
# --server URL, and use a manifest without [sim: ...] directives.
source "$(dirname "$0")/_env.sh"
cd "$ROOT"
install_occoord ""
OCC="$VENV/bin/occoord"
SPOOL="${OCCOORD_SPOOL:-$ROOT/spool}"
MANIFEST="${1:-contrib/examples/simulated.yaml}"
export OCCOORD_SPOOL="$SPOOL"

"$OCC" init
"$OCC" validate "$MANIFEST"
"$OCC" watch --simulate --settle-seconds 0.5 &
WATCHER=$!
trap 'kill "$WATCHER" 2>/dev/null; wait "$WATCHER" 2>/dev/null || true' EXIT
sleep 1

before=$(ls "$SPOOL/runs")
echo "--- cp $MANIFEST $SPOOL/incoming/"
cp "$MANIFEST" "$SPOOL/incoming/"
RUN=""
for _ in $(seq 100); do
  RUN=$(comm -13 <(echo "$before") <(ls "$SPOOL/runs") | tail -n 1)
  [ -n "$RUN" ] && break
  sleep 0.1
done
[ -n "$RUN" ] || { echo "the manifest was not accepted; see $SPOOL/rejected/" >&2; exit 1; }

# A demo display, not part of occoord: show the listing whenever it changes.
last=""
for _ in $(seq 600); do
  now=$(ls "$SPOOL/runs/$RUN/tasks" | tr '\n' ' ')
  if [ "$now" != "$last" ]; then
    echo "$(date +%T)  ls tasks/: $now"
    last="$now"
  fi
  [ -f "$SPOOL/runs/$RUN/summary.json" ] && break
  sleep 0.1
done
echo "--- $SPOOL/runs/$RUN/summary.md"
cat "$SPOOL/runs/$RUN/summary.md"
"$OCC" status "$RUN"
