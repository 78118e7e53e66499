#!/usr/bin/env bash
# Screenshot a local HTML file with headless Chromium, so a report can be checked by eye
# (or attached to a review) without a desktop session.
#
#   scripts/screenshot.sh HTML PNG [WIDTHxHEIGHT]     (default 1280x2400)
#
# Uses chromium / chromium-browser / google-chrome if one is on PATH; otherwise installs
# Debian's `chromium` with apt-get (needs root).
set -euo pipefail

usage() { echo "usage: $0 HTML PNG [WIDTHxHEIGHT]" >&2; exit 2; }
[[ $# -ge 2 && $# -le 3 ]] || usage
html="$1"
png="$2"
size="${3:-1280x2400}"
[[ "$size" =~ ^([0-9]+)x([0-9]+)$ ]] || { echo "error: size must be WIDTHxHEIGHT, got '$size'" >&2; exit 2; }
width="${BASH_REMATCH[1]}"
height="${BASH_REMATCH[2]}"
[[ -f "$html" ]] || { echo "error: no such HTML file: $html" >&2; exit 2; }

find_browser() {
  local name
  for name in chromium chromium-browser google-chrome google-chrome-stable; do
    if command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}

if ! browser="$(find_browser)"; then
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "error: no chromium/chromium-browser/google-chrome on PATH, and not root to install one" >&2
    exit 1
  fi
  echo "no Chromium found; installing Debian's chromium with apt-get ..." >&2
  start=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update >&2
  apt-get install -y chromium >&2
  echo "chromium installed in $((SECONDS - start)) s" >&2
  browser="$(find_browser)" || { echo "error: apt-get installed chromium but no browser is on PATH" >&2; exit 1; }
fi

abs_html="$(cd "$(dirname "$html")" && pwd)/$(basename "$html")"
mkdir -p "$(dirname "$png")"
abs_png="$(cd "$(dirname "$png")" && pwd)/$(basename "$png")"
rm -f "$abs_png"

# Chromium writes its profile under HOME; a throwaway one keeps runs independent.
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT

"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --user-data-dir="$profile" --no-first-run --disable-extensions \
  --screenshot="$abs_png" --window-size="$width,$height" \
  "file://$abs_html" >"$profile/browser.log" 2>&1 || true  # dbus noise can fail the exit code; the PNG decides

if [[ ! -s "$abs_png" ]]; then
  echo "error: $browser did not produce $abs_png; its last output:" >&2
  tail -n 20 "$profile/browser.log" >&2
  exit 1
fi
echo "$abs_png"
