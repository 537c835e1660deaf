#!/usr/bin/env bash
# Debian's chromium for the fleet board's browser test (tests/integration/test_ui.py), driven by
# Playwright from PyPI with executable_path=/usr/bin/chromium: never `playwright install`.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ensure-chromium: /usr/bin/chromium is missing; run as root: apt-get install -y chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
test -x /usr/bin/chromium
