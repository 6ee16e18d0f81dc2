#!/usr/bin/env bash
# Build the real captioned data: every emoji in the Twemoji (CC-BY 4.0) and Noto (Apache-2.0) styles,
# composited on white, as imagefolders data/emoji32 and data/emoji64 (train/ + validation/).
# The npm packs are cached in data/npm_cache; a rerun rebuilds the folders from the cache.
#   bash scripts/get_emoji.sh            # both resolutions
#   RESOLUTIONS=32 bash scripts/get_emoji.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v npm >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  else
    echo "npm is missing: install Node.js and npm (e.g. apt-get install npm), then rerun." >&2
    exit 1
  fi
fi
PYTHON="${PYTHON:-.venv/bin/python}"
for resolution in ${RESOLUTIONS:-32 64}; do
  "$PYTHON" -m minidalle.emoji_data --out "data/emoji$resolution" --resolution "$resolution" --cache_dir data/npm_cache
done
