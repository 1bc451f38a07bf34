"""Cost of the information-flow routes (issue 24) against a plain `torch.matmul` of the same shapes, before (the
einsum loop kept in tests/flow_reference.py) and after (core.steps.flow.compute_flow: one baddbmm + one L1
reduction per chunk of queries), float32 on this CPU.

    python bench/bench_flow.py [--tokens 128 512] [--repeat 1] [--threads N] [--cpu]

Shapes: GPT-2 small (random weights, 12 layers × 12 heads, 768 wide) and TinyLlama-1.1B's width (32 heads, 4 kv
heads, 2048 wide) with 2 of its 22 layers — the routes cost the same per layer, so its "× 22" column is the
whole model's routes. "matmul peak" is torch.matmul of exactly the products the routes need (A [J, I, H] by
v W_O [J, H, D] over the same query chunks, causal triangle skipped); "fraction" = matmul peak / routes time.
"""

from __future__ import annotations

import argparse

from common import CACHE, add_clock_args, load_gpt2_small, text_of_tokens, timeit, use_clock_args


def tinyllama_width(n_layers: int = 2):
    """TinyLlama-1.1B's attention geometry and width with `n_layers` layers (random weights, float32)."""
    import torch
    from tiny_models import _bpe_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.model.loading import load_model

    folder = CACHE / f"tinyllama-width-{n_layers}-layers"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        tok = _bpe_tokenizer(bos=True)
        cfg = LlamaConfig(
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=n_layers,
            num_attention_heads=32,
            num_key_value_heads=4,
            vocab_size=32000,
            max_position_embeddings=2048,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
        LlamaForCausalLM(cfg).eval().save_pretrained(folder)
        tok.save_pretrained(folder)
    return load_model(str(folder), dtype="float32", device="cpu")


def matmul_peak(dec, chunk_floats: int) -> float:
    """Seconds of torch.matmul over the same [J, I, H] × [J, H, D] chunks as compute_flow (no L1, no head rows)."""
    import torch

    P = dec.parts
    H = P.heads.n_heads
    kv_of = torch.tensor([P.heads.kv_head(h) for h in range(H)])
    prepared = []
    for l, b in enumerate(P.blocks):
        W = P.head_out_weights(b).detach().float()
        vW = torch.einsum("thd,hde->the", dec.values[l][:, kv_of], W).contiguous()
        A = dec.attentions[l].float()
        reach = A.amax(0) > 0
        T, D = A.shape[-1], vW.shape[-1]
        per_query = max(1, chunk_floats // (T * D))
        chunks = []
        for i0 in range(0, T, per_query):
            i1 = min(T, i0 + per_query)
            J = int(reach[i0:i1].nonzero()[:, 1].max()) + 1
            chunks.append((A.permute(2, 1, 0)[:J, i0:i1].contiguous(), vW[:J]))
        prepared.append(chunks)

    def run() -> None:
        with torch.inference_mode():
            for chunks in prepared:
                for a, w in chunks:
                    torch.matmul(a, w)

    return run


def measure(name: str, loaded, tokens: int, repeat: int, layers_of_model: int) -> list[tuple]:
    from flow_reference import compute_flow_reference

    from core.model.capture import capture
    from core.run.settings import AnalysisSettings
    from core.steps.dla import decomposition_pass
    from core.steps.flow import CHUNK_FLOATS, compute_flow

    text = text_of_tokens(loaded, tokens)
    cap = capture(loaded, text, AnalysisSettings(max_tokens=tokens, compute_gradients=False))
    T = cap.input_ids.shape[1]
    dec = decomposition_pass(loaded, cap.input_ids, cap.attention_mask)
    scale = layers_of_model / dec.parts.n_layers
    peak = timeit(matmul_peak(dec, CHUNK_FLOATS), repeat)
    new = timeit(lambda: compute_flow(dec, cap.tokens, T - 1), repeat)
    old = timeit(lambda: compute_flow_reference(dec, cap.tokens, T - 1), repeat)
    return [(name, T, old * scale, new * scale, peak * scale, peak / new)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--repeat", type=int, default=1)
    add_clock_args(ap)
    args = ap.parse_args()
    use_clock_args(args)
    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        f"{'shape':34s} {'tokens':>6s} {'before s':>9s} {'after s':>8s} {'matmul s':>9s} {'fraction':>9s}", flush=True
    )
    gpt2, tl = load_gpt2_small(), tinyllama_width()
    for T in args.tokens:
        for name, lm, layers in (("GPT-2 small", gpt2, 12), ("TinyLlama width (2 layers, × 22)", tl, 22)):
            for label, T_, old, new, peak, frac in measure(name, lm, T, args.repeat, layers):
                print(f"{label:34s} {T_:6d} {old:9.2f} {new:8.2f} {peak:9.2f} {frac:9.0%}", flush=True)


if __name__ == "__main__":
    main()
