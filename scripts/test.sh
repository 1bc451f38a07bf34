#!/usr/bin/env bash
# Install what the tests need (venv, pip packages, Debian's chromium for the browser test) and run them offline.
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" for the quick run.
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
mkdir -p artifacts
exec .venv/bin/python -m pytest "$@"
