#!/bin/sh
# An occoord hook that tells you when a task or a run ends: a desktop notification (notify-send,
# if there is one) and, given a URL, a plain HTTP POST of the same text (ntfy.sh and most push
# services take a text body). Use it from a manifest, with an absolute path:
#
#   hooks:
#     on_task_end: [/path/to/contrib/hooks/notify.sh]
#     on_run_end: [/path/to/contrib/hooks/notify.sh, "https://ntfy.sh/my-private-topic"]
#
# occoord passes the facts in OCCOORD_* variables only, never in the command line; they are
# quoted here and go into the message body, never into a shell command or a header (a task's
# reason can hold any text). A hook runs with a timeout (60 s by default).
set -u

url="${1:-}"
if [ -n "${OCCOORD_TASK:-}" ]; then
    title="occoord: ${OCCOORD_RUN}/${OCCOORD_TASK} ${OCCOORD_STATE}"
    body="attempt ${OCCOORD_ATTEMPT:-?}: ${OCCOORD_REASON:-}"
else
    title="occoord: run ${OCCOORD_RUN} ${OCCOORD_STATE}"
    body="summary: ${OCCOORD_RUN_DIR}/summary.md"
fi
urgency=normal
[ "${OCCOORD_STATE:-}" = failed ] && urgency=critical

if command -v notify-send >/dev/null 2>&1; then
    notify-send --app-name=occoord --urgency="$urgency" -- "$title" "$body" || true
fi
if [ -n "$url" ]; then
    printf '%s\n%s\n' "$title" "$body" |
        curl --fail --silent --show-error --max-time 20 --data-binary @- -- "$url"
fi
