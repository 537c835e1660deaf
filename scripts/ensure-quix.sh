#!/usr/bin/env bash
# Quix Streams in a virtual environment of its own, for `make bench`'s Quix contender (its pins,
# confluent-kafka and rocksdict among them, stay out of canarywatch's). Cached outside the clone,
# rebuilt when the pinned version changes. Prints the environment's python.
set -euo pipefail
QUIX_VERSION=3.28.1
cache="${CANARYWATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canarywatch}/quix-$QUIX_VERSION"
if [ ! -x "$cache/bin/python" ] || [ ! -f "$cache/.installed" ]; then
  echo "ensure-quix: installing quixstreams==$QUIX_VERSION into $cache" >&2
  rm -rf "$cache"
  python3 -m venv "$cache"
  "$cache/bin/python" -m pip install --quiet --upgrade pip >&2
  "$cache/bin/python" -m pip install --quiet "quixstreams==$QUIX_VERSION" >&2
  touch "$cache/.installed"
fi
echo "$cache/bin/python"
