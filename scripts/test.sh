#!/usr/bin/env bash
# Install what the tests need (venv, pip packages, Debian's chromium for the browser test) and run them offline.
# Lint and types first (ruff check, ruff format --check, mypy over core/, app/, pages/; SKIP_LINT=1 skips them), then pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" for the quick run. pytest runs in TEST_WORKERS
# processes (pytest-xdist; default 2, as CI runs: one process took 18.5 min, two ~14; TEST_WORKERS=0 for one
# process), each test module on one worker. A worker that crashes is not replaced (--max-worker-restart=0): the run
# then ends at once naming the test it crashed in, where pytest-xdist 3.8's file scheduler can wait forever after
# replacing a crashed worker (pytest-xdist #784/#1378; a CI run hung so for 90 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing chromium for the browser test (apt-get)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium is missing and cannot be installed here: the browser test will be skipped" >&2
  fi
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
if [ "${SKIP_LINT:-0}" != 1 ]; then  # lint and types first: settings in pyproject.toml
  echo "ruff check, ruff format --check, mypy (core/, app/, pages/)"
  .venv/bin/ruff check --quiet .
  .venv/bin/ruff format --check --quiet .
  .venv/bin/mypy --no-error-summary
fi
mkdir -p artifacts
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile --max-worker-restart=0 --durations=20 "$@"
