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
if [ $# -gt 0 ]; then  # a chosen subset: as given, in one process
  exec .venv/bin/python -m pytest -q "$@"
fi
# The suite in two worker processes (pytest-xdist): most tests wait on a child process or on one core,
# so two at a time take about 6 min where one at a time took 9 (2 cores). Passive OpenMP waiting keeps a
# worker's idle threads from spinning on the core the other is using. Work stealing lets an idle worker
# take tests queued on the busy one, so a few 20-55 s tests left at the end do not run alone. The browser
# test drives chromium against a launched app under a 60 s page timeout: it runs after, alone.
OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m pytest -q -n 2 --dist worksteal -m "not browser"
exec .venv/bin/python -m pytest -q -m browser
