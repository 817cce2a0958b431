#!/usr/bin/env bash
# Install the browser that tests/test_report_browser.py drives: Debian's chromium package
# (/usr/bin/chromium), never a browser build that a test tool downloads from its own CDN.
# Does nothing when chromium is already there, or when PSYJUDGE_CHROMIUM names a browser.
# Usage: bash scripts/install_test_browser.sh
set -euo pipefail

browser=/usr/bin/chromium
if [ -n "${PSYJUDGE_CHROMIUM:-}" ] && [ -x "$PSYJUDGE_CHROMIUM" ]; then
  echo "chromium: PSYJUDGE_CHROMIUM=$PSYJUDGE_CHROMIUM"
  exit 0
fi
if [ -x "$browser" ]; then
  echo "chromium: $("$browser" --version 2>/dev/null || echo "$browser")"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "error: $browser is missing and installing it needs root (no sudo here)." >&2
  echo "       Install Debian's chromium package: apt-get install -y --no-install-recommends chromium" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: $browser is missing and there is no apt-get to install Debian's chromium package." >&2
  echo "       Install chromium another way and set PSYJUDGE_CHROMIUM to its path." >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
install() { ${as_root[@]+"${as_root[@]}"} apt-get install -y --no-install-recommends chromium; }
# The package lists may be stale or absent on a fresh machine: refresh them only when the install fails.
if ! install; then
  echo "apt-get install failed; refreshing the package lists and trying again" >&2
  ${as_root[@]+"${as_root[@]}"} apt-get update
  install
fi

if [ ! -x "$browser" ]; then
  echo "error: the chromium package installed, but $browser is not there" >&2
  exit 1
fi
echo "chromium: $("$browser" --version 2>/dev/null || echo "$browser")"
