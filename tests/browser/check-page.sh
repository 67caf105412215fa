#!/usr/bin/env bash
# Loads a page in headless Chromium (Debian's `chromium`) and leaves, in OUT_DIR:
#   dom.html       the DOM after the page's scripts ran (--dump-dom)
#   console.txt    every console message and uncaught error the page produced (empty = none)
#   screenshot.png the rendered page
# Usage: tests/browser/check-page.sh URL OUT_DIR [WIDTHxHEIGHT]
# Used by tests/status_page.rs; also handy by hand against a running gateway:
#   tests/browser/check-page.sh http://127.0.0.1:9090/ /tmp/status && xdg-open /tmp/status/screenshot.png
set -euo pipefail
url=$1
out=$2
size=${3:-1280,1000}
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [[ -z $browser ]]; then
  echo "chromium not found (apt-get install -y chromium)" >&2
  exit 127
fi
mkdir -p "$out"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# The flags keep Chromium off the network (this machine's is closed) and out of the sandbox
# (root in a container); the virtual time budget lets the page fetch and render its data.
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
  --disable-component-update --disable-sync --disable-extensions --user-data-dir="$profile"
  --enable-logging=stderr --v=0 --virtual-time-budget=4000 --window-size="$size")
timeout 60 "$browser" "${flags[@]}" --dump-dom "$url" >"$out/dom.html" 2>"$out/dom.log"
timeout 60 "$browser" "${flags[@]}" --screenshot="$out/screenshot.png" "$url" >/dev/null 2>"$out/screenshot.log"
# Chromium logs console messages (console.*, uncaught errors, CSP refusals) as INFO:CONSOLE lines.
grep -h ':CONSOLE' "$out/dom.log" "$out/screenshot.log" >"$out/console.txt" || true
