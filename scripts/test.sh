#!/usr/bin/env bash
# Set up, then run the whole test suite: ruff (format + lint) and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The UI's browser test drives Debian's chromium; install it when we can (root with apt), else it is skipped.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium: the browser test will be skipped"
fi
.venv/bin/ruff format --check .
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
