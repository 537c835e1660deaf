#!/usr/bin/env bash
# promtool (Debian's prometheus package) for the alert-rule tests: installed when missing.
# Prints its path.
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-promtool: promtool is missing; install Debian's 'prometheus' package (as root)" >&2
    exit 1
  fi
  echo "ensure-promtool: installing Debian's prometheus package for promtool" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
fi
command -v promtool
