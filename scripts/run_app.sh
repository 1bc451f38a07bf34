#!/usr/bin/env bash
# Install what the app needs (first run only) and start it on port 7860.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m streamlit run app/main.py --server.port 7860 "$@"
