#!/usr/bin/env bash
# Set up (as scripts/setup.sh) plus what the tests drive for real (Debian chromium for the browser
# tests, haproxy for the chat replicas), check lint, format and the import contracts, then run the
# whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Debian packages the tests run for real: chromium (browser tests), haproxy (chat replicas behind a proxy).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "warning: could not install Debian ${missing[*]}; the tests that run them will fail" >&2
  else
    echo "warning: not installed: ${missing[*]} (sudo apt-get install -y ${missing[*]}); the tests that run them will fail" >&2
  fi
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
