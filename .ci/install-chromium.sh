#!/usr/bin/env bash
# Installs Debian's Chromium and its WebDriver (chromedriver) when either is missing, for the
# browser test of the usage page (tests/tests/usage_page.rs). Idempotent and quiet: does nothing
# when both are installed; otherwise runs `apt-get update` once, then installs what is missing.
set -euo pipefail

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
installed chromium || missing+=(chromium)
installed chromium-driver || missing+=(chromium-driver)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi

echo "install-chromium: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null
"${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
command -v chromedriver >/dev/null || { echo "install-chromium: chromedriver still missing" >&2; exit 1; }
