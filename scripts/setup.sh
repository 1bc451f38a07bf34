#!/usr/bin/env bash
# Create .venv (once) and install the locked requirements into it: requirements.lock for the app,
# requirements-dev.lock (the app's plus the tests' and linters') with `dev`. The locks hold exact versions of every
# package, so a fresh machine installs what CI tested; refresh them with `bash scripts/lock.sh`.
# Usage: scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
lock=requirements.lock
[ "${1:-}" = "dev" ] && lock=requirements-dev.lock
stamp=".venv/.installed-$(cat "$lock" | sha256sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$lock"
  touch "$stamp"
fi
