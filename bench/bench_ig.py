"""Integrated gradients: completeness gap and error against a reference, for α = u (p = 1) and α = u³ (p = 3) with
Gauss–Legendre nodes, on tiny GPT-2 / BERT / Llama models with realistic (init) and large (×8) weights.

The reference is captum's IntegratedGradients with 4000 Gauss–Legendre steps on the same function
(inputs_embeds → log p(y*) at the target, zero baseline, attributions summed over the hidden dimension) when captum
is installed, else our own rule with 4000 nodes. Run: python bench/bench_ig.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from core.model.loading import load_model  # noqa: E402
from core.steps.attribution import integrated_gradients, target_logprob_fn, token_embeddings  # noqa: E402

TEXTS = {
    "gpt2": "Paris is the capital of",
    "llama": "Paris is the capital of",
    "bert": "Paris is the [MASK] of France.",
}
REF_STEPS = 4000


def reference(lm, ids, mask, pos, y):
    x = token_embeddings(lm, ids)
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        ig, _, _ = integrated_gradients(lm, ids, mask, pos, y, steps=REF_STEPS, power=1.0)
        return ig, "ours (captum missing)"
    f = target_logprob_fn(lm, mask, pos, y)
    with torch.inference_mode(False), torch.enable_grad():
        attr = IntegratedGradients(f).attribute(
            x.clone(), baselines=torch.zeros_like(x), n_steps=REF_STEPS, method="gausslegendre", internal_batch_size=250
        )
    return attr[0].sum(-1).double().numpy(), "captum"


def main() -> None:
    """argv: [kinds, comma-separated] [steps, comma-separated] [powers, comma-separated]."""
    from tiny_models import build_tiny

    kinds = sys.argv[1].split(",") if len(sys.argv) > 1 else ["gpt2", "bert", "llama"]
    ms = [int(v) for v in sys.argv[2].split(",")] if len(sys.argv) > 2 else [8, 16, 32, 64, 128]
    powers = [float(v) for v in sys.argv[3].split(",")] if len(sys.argv) > 3 else [1.0, 3.0]

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    print(
        f"{'model':14} {'p':>3} " + " ".join(f"{'m=' + str(m):>16}" for m in ms) + "   (relative "
        "completeness gap / max |IG − ref| ÷ max |ref|)"
    )
    for kind in kinds:
        folder = build_tiny(kind, tmp / kind)
        for scale in (1.0, 8.0):
            lm = load_model(str(folder), dtype="float32", device="cpu")
            with torch.no_grad():
                for p in lm.model.parameters():
                    if p.dim() == 2:
                        p.mul_(scale)
            enc = lm.tokenizer(TEXTS[kind], return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
            pos = ids.shape[1] - 1 if kind != "bert" else ids[0].tolist().index(lm.tokenizer.mask_token_id)
            with torch.no_grad():
                y = int(lm.model(**enc).logits[0, pos].argmax())
            t = time.perf_counter()
            ref, src = reference(lm, ids, mask, pos, y)
            t_ref = time.perf_counter() - t
            with torch.no_grad():
                f = target_logprob_fn(lm, mask, pos, y)
                x = token_embeddings(lm, ids)
                ends = f(torch.cat([x, torch.zeros_like(x)]))
            ref_gap = abs(ref.sum() - float(ends[0] - ends[1])) / abs(float(ends[0] - ends[1]))
            for power in powers:
                cells = []
                for m in ms:
                    ig, fx, f0 = integrated_gradients(lm, ids, mask, pos, y, steps=m, power=power)
                    gap = abs(ig.sum() - (fx - f0)) / abs(fx - f0)
                    err = np.abs(ig - ref).max() / np.abs(ref).max()
                    cells.append(f"{100 * gap:6.2f}%/{100 * err:6.2f}%")
                print(f"{kind + ' x' + str(int(scale)):14} {power:3g} " + " ".join(f"{c:>16}" for c in cells))
            print(f"{'':14} reference: {src}, {REF_STEPS} steps, {t_ref:.1f} s, its relative gap {100 * ref_gap:.2f}%")


if __name__ == "__main__":
    main()
