#!/usr/bin/env bash
# kcat (Debian's kcat package, C on librdkafka) for `make bench`'s kcat contender: installed when
# missing. Prints its path.
set -euo pipefail
if ! command -v kcat >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-kcat: kcat is missing; install Debian's 'kcat' package (as root)" >&2
    exit 1
  fi
  echo "ensure-kcat: installing Debian's kcat package" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kcat >&2
fi
command -v kcat
