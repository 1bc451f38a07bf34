#!/usr/bin/env bash
# GPU check (issue 14): the `gpu` tests (CUDA vs CPU for tiny GPT-2 / BERT / Llama in float32 and bfloat16, the
# device-map path, layers split between GPU and CPU), then the benchmark table on the GPU. Under 5 minutes on one
# GPU; no download (random-weight models built from configs). Run from anywhere:
#     bash bench/gpu_check.sh            # uses .venv/bin/python when present, else python3
# Writes artifacts/gpu_check.log and artifacts/bench-gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
mkdir -p artifacts
"$PY" - <<'PYEOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA GPU (torch %s; a CPU-only wheel?)" % torch.__version__)
print("gpu_check: %s, torch %s, CUDA %s" % (torch.cuda.get_device_name(0), torch.__version__, torch.version.cuda))
PYEOF
"$PY" -c "import accelerate" 2>/dev/null || { echo "gpu_check: pip install -r requirements.txt (accelerate)"; exit 1; }
start=$(date +%s)
echo "== pytest -m gpu"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee artifacts/gpu_check.log
status=${PIPESTATUS[0]}
echo "== benchmark on the GPU"
# GPT-2, BERT and TinyLlama shapes at 128 and 512 tokens, 3 repeats; the deeper views are checked by the gpu tests
# above and left out of the table (their NMF runs on the CPU), so the check stays under 5 minutes.
timeout 300 "$PY" -m bench --device cuda --shapes gpt2,bert,tinyllama --tokens 128,512 --repeat 3 --no-memory --no-views \
    --out artifacts/bench-gpu.md 2>&1 | tee -a artifacts/gpu_check.log
bench_status=${PIPESTATUS[0]}
echo "gpu_check: pytest exit $status, bench exit $bench_status, $(( $(date +%s) - start )) s"
[ "$status" -eq 0 ] && [ "$bench_status" -eq 0 ]
