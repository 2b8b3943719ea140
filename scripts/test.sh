#!/usr/bin/env bash
# Set up (as scripts/setup.sh) plus what the tests drive for real (Debian chromium for the browser
# tests), check lint, format and the import contracts, then run the whole test suite. Extra
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "warning: could not install Debian chromium; browser tests will fail" >&2
  else
    echo "warning: chromium is not installed (sudo apt-get install chromium); browser tests will fail" >&2
  fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
