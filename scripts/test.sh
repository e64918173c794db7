#!/usr/bin/env bash
# Install occoord with its test tools (and the pinned real OpenCode server) and run every check:
# ruff format, ruff lint, mypy, the import contracts, pytest. Extra arguments go to pytest.
source "$(dirname "$0")/_env.sh"
cd "$ROOT"

stage_start "install occoord + test tools"
install_occoord "[test]"
stage_end

if [ "${OCCOORD_SKIP_OPENCODE:-0}" != "1" ] && [ -x contrib/install-opencode.sh ]; then
  stage_start "install the pinned opencode-ai (real server for e2e tests)"
  OCCOORD_OPENCODE_BIN="$(contrib/install-opencode.sh | tail -n 1)"
  export OCCOORD_OPENCODE_BIN
  # From here on a missing binary FAILS the real-server tests instead of skipping them.
  export OCCOORD_REQUIRE_OPENCODE=1
  echo "opencode: $OCCOORD_OPENCODE_BIN"
  stage_end
fi

if ! command -v tmux >/dev/null 2>&1; then
  # The live view (occoord top) is tested in a real terminal.
  stage_start "install tmux (the live view's tests run in a real terminal)"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -qq tmux >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq tmux >/dev/null; } || echo "tmux unavailable: its tests will skip"
  else
    echo "tmux missing and not installable here: its tests will skip"
  fi
  stage_end
fi

stage_start "ruff format --check"
"$VENV/bin/ruff" format --check occoord tests
stage_end

stage_start "ruff check"
"$VENV/bin/ruff" check occoord tests
stage_end

stage_start "mypy"
"$VENV/bin/mypy" occoord
stage_end

stage_start "lint-imports (layers and forbidden imports: pyproject.toml)"
"$VENV/bin/lint-imports"
stage_end

stage_start "pytest"
"$VENV/bin/pytest" -p no:cacheprovider --durations=15 "$@"
stage_end
