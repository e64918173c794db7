#!/usr/bin/env bash
# Install the pinned opencode-ai release into <repo>/.opencode/ for the end-to-end tests.
#
# Why a private prefix and --ignore-scripts: the tests must run the exact version occoord was checked
# against, without touching a global npm install or running package install hooks. With hooks skipped,
# the `opencode-ai/bin` entry is a stub, so the runnable file is the platform package's binary.
#
# Progress goes to stderr; the LAST stdout line is the absolute path of the binary, so callers can do
#   OCCOORD_OPENCODE_BIN="$(contrib/install-opencode.sh | tail -n 1)"
# Environment: OCCOORD_OPENCODE_DIR overrides the install prefix (default <repo>/.opencode).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="$(tr -d '[:space:]' < "$ROOT/contrib/opencode.version")"
PREFIX="${OCCOORD_OPENCODE_DIR:-$ROOT/.opencode}"

say() { echo "install-opencode: $*" >&2; }
die() { echo "install-opencode: ERROR: $*" >&2; exit 1; }

[ -n "$VERSION" ] || die "contrib/opencode.version is empty"

case "$(uname -s)" in
  Linux) os=linux ;;
  Darwin) os=darwin ;;
  *) die "unsupported OS $(uname -s) (opencode ships linux and darwin builds)" ;;
esac
case "$(uname -m)" in
  x86_64 | amd64) arch=x64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) die "unsupported CPU architecture $(uname -m)" ;;
esac

PLATFORM_PKG="opencode-$os-$arch"
BIN="$PREFIX/node_modules/$PLATFORM_PKG/bin/opencode"
PKG_JSON="$PREFIX/node_modules/opencode-ai/package.json"

installed_version() {
  # Read the version of the installed opencode-ai package without trusting the binary yet.
  [ -f "$PKG_JSON" ] || return 0
  sed -n 's/^[[:space:]]*"version":[[:space:]]*"\([^"]*\)".*/\1/p' "$PKG_JSON" | head -n 1
}

# Two installs at once (two test runs) would write one binary together: take turns.
mkdir -p "$PREFIX"
exec 9> "$PREFIX/.install.lock"
flock 9

install_package() {
  command -v npm > /dev/null 2>&1 || die "npm not found on PATH; install Node.js (>= 18) with npm, then rerun"
  say "installing opencode-ai@$VERSION into $PREFIX (takes ~20 s cold) ..."
  t0=$(date +%s)
  if ! npm install --prefix "$PREFIX" --ignore-scripts --no-audit --no-fund \
      "opencode-ai@$VERSION" >&2; then
    die "npm install of opencode-ai@$VERSION failed (see npm output above)"
  fi
  say "npm install took $(( $(date +%s) - t0 )) s"
  [ "$(installed_version)" = "$VERSION" ] \
    || die "after npm install, $PKG_JSON reports version '$(installed_version)', expected $VERSION"
}

check_binary() {
  # Prints the version the binary reports; fails if it cannot run at all.
  [ -f "$BIN" ] || { echo "platform binary missing: $BIN"; return 1; }
  [ -x "$BIN" ] || chmod +x "$BIN" || { echo "cannot make $BIN executable"; return 1; }
  env HOME="$SCRATCH/home" XDG_CONFIG_HOME="$SCRATCH/config" XDG_DATA_HOME="$SCRATCH/data" \
    XDG_CACHE_HOME="$SCRATCH/cache" XDG_STATE_HOME="$SCRATCH/state" \
    OPENCODE_DISABLE_AUTOUPDATE=1 OPENCODE_DISABLE_MODELS_FETCH=1 \
    "$BIN" --version 2>&1 | tail -n 1 | tr -d '[:space:]'
}

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/occoord-opencode-check.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT

if [ "$(installed_version)" = "$VERSION" ] && [ -x "$BIN" ]; then
  say "opencode-ai@$VERSION already installed in $PREFIX"
  got="$(check_binary)" || got=""
  if [ "$got" != "$VERSION" ]; then
    # A damaged install (an interrupted download, a truncated binary) is replaced, once.
    say "the installed binary does not run ('$got'); installing it again"
    rm -rf "$PREFIX/node_modules" "$PREFIX/package.json" "$PREFIX/package-lock.json"
    install_package
  fi
else
  install_package
fi

got="$(check_binary)" || die "$BIN --version failed: $got"
[ "$got" = "$VERSION" ] || die "$BIN --version printed '$got', expected $VERSION"
say "verified $BIN --version = $got"

echo "$BIN"
