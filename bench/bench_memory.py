"""Peak memory of a TinyLlama-shaped model (1.1 B parameters, random weights, no download) through load + analyze.

    python bench/bench_memory.py [--dtype bfloat16] [--tokens 128]

Builds the model once under $TMPDIR/tma-bench (2.2 GB of safetensors in bfloat16), then in a fresh process loads
it with core.load_model and runs core.analyze, reporting the peak resident memory (ru_maxrss) after each stage.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from common import CACHE, text_of_tokens

FOLDER = CACHE / "tinyllama-shape-random"


def build() -> None:
    if (FOLDER / "config.json").is_file():
        return
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiny_models import _bpe_tokenizer

    torch.manual_seed(0)
    tok = _bpe_tokenizer(bos=True)
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
                      dtype="bfloat16")
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(FOLDER)
    tok.save_pretrained(FOLDER)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(dtype: str, tokens: int, gradients: bool) -> dict:
    from core import analyze, load_model

    out = {"baseline_mb": peak_mb()}
    t = time.perf_counter()
    lm = load_model(str(FOLDER), dtype=dtype, device="cpu")
    out["load_s"] = time.perf_counter() - t
    out["after_load_mb"] = peak_mb()
    text = text_of_tokens(lm, tokens)
    t = time.perf_counter()
    r = analyze(lm, text, max_tokens=tokens, compute_gradients=gradients)
    out["analyze_s"] = time.perf_counter() - t
    out["after_analyze_mb"] = peak_mb()
    out["tokens"] = r.n_tokens
    out["params_b"] = sum(p.numel() for p in lm.model.parameters()) / 1e9
    out["timings"] = {k: round(v, 3) for k, v in r.timings.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--gradients", action="store_true")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.dtype, args.tokens, args.gradients)))
        return
    build()
    cmd = [sys.executable, __file__, "--child", "--dtype", args.dtype, "--tokens", str(args.tokens)]
    if args.gradients:
        cmd.append("--gradients")
    res = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
