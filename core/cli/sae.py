"""`python -m core sae-ablate`: remove (or rescale) one SAE feature at its hook and see what changes.

    python -m core sae-ablate --model M --text T --sae DIR --feature F [--scale 0] [--remove-error] --out OUT

One forward pass with the feature's contribution a_f · W_dec[f] scaled by --scale at every position (0 = ablation,
core.steps.sae.intervene), optionally the SAE's error term removed as well, against the clean pass. Writes
sae_ablation.csv (per position: the token, the feature's activation, the clean top-1 prediction, its clean and
changed logit and log-probability, and KL(clean ‖ changed)) and sae_ablation.json (the settings and the totals) to a
.zip or a folder. Bad input (a folder that is not an SAE, a feature out of range): one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli.common import add_load_options, add_model_options, add_text_options, fail, out_path, read_text

CSV_HEADER = [
    "position",
    "token",
    "activation",
    "clean_top_token",
    "clean_logit",
    "changed_logit",
    "delta_logit",
    "delta_logprob",
    "kl",
]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "sae-ablate",
        help="ablate or rescale one sparse-autoencoder feature and measure the change of the predictions",
        description="Remove (or scale) one SAE feature's contribution at its hook in one forward pass and write "
        "sae_ablation.csv and sae_ablation.json (a .zip file or a folder).",
    )
    add_model_options(p)
    add_text_options(p)
    p.add_argument("--sae", required=True, metavar="DIR", help="the SAE folder (SAELens format)")
    p.add_argument("--feature", type=int, default=None, help="the feature to change (omit with --remove-error only)")
    p.add_argument("--scale", type=float, default=0.0, help="new size of the feature's contribution (0 = ablate)")
    p.add_argument("--remove-error", action="store_true", help="also replace the activation by its reconstruction")
    p.add_argument("--max-tokens", type=int, default=128, help="truncate the text to this many tokens (default 128)")
    p.add_argument("--out", required=True, type=out_path, help="output: a path ending in .zip, or a folder")
    add_load_options(p)
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from core.infra.formats import csv_bytes, json_bytes, write_files
    from core.model.arch import model_parts
    from core.model.loading import load_model
    from core.model.sae import load_sae
    from core.model.tokens import tokenize
    from core.steps.sae import intervene

    text = read_text(args)
    assert text is not None
    if args.feature is None and not args.remove_error:
        fail("give --feature F, or --remove-error to remove the SAE's error term")
    if not 2 <= args.max_tokens <= 4096:
        fail("--max-tokens must be between 2 and 4096")
    sae = load_sae(args.sae)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    if loaded.family != "causal_lm" and loaded.family != "masked_lm":
        fail("sae-ablate needs a model with a language-model head")
    for w in sae.check_model(model_parts(loaded.model), loaded.model_id):
        sys.stderr.write(f"warning: {w}\n")
    enc = tokenize(loaded, text, args.max_tokens)
    ids, mask = enc.input_ids.to(loaded.device), enc.attention_mask.to(loaded.device)
    with loaded.lock:
        store: dict[str, torch.Tensor] = {}
        from core.model.hooks import hooked
        from core.model.sites import recorders

        with torch.inference_mode(), hooked(recorders(model_parts(loaded.model), [sae.hook_name], store)):
            clean = loaded.model(input_ids=ids, attention_mask=mask, return_dict=True).logits[0].float().cpu()
        changed = intervene(
            loaded, ids, mask, sae, feature=args.feature, scale=float(args.scale), remove_error=args.remove_error
        )
    with torch.inference_mode():
        acts = sae.encode(store[sae.hook_name])[:, args.feature] if args.feature is not None else None
        lp_c, lp_x = clean.log_softmax(-1), changed.log_softmax(-1)
        kl = (lp_c.exp() * (lp_c - lp_x)).sum(-1)
    tok = loaded.tokenizer
    tokens = tok.convert_ids_to_tokens(ids[0].tolist())
    rows = []
    for t in range(len(tokens)):
        y = int(clean[t].argmax())
        rows.append(
            [
                t,
                tokens[t],
                float(acts[t]) if acts is not None else 0.0,
                tok.decode([y]),
                float(clean[t, y]),
                float(changed[t, y]),
                float(changed[t, y] - clean[t, y]),
                float(lp_x[t, y] - lp_c[t, y]),
                float(kl[t]),
            ]
        )
    summary = {
        "model_id": loaded.model_id,
        "sae": sae.name,
        "hook_name": sae.hook_name,
        "feature": args.feature,
        "scale": float(args.scale),
        "remove_error": bool(args.remove_error),
        "text": text,
        "token_count": len(tokens),
        "max_kl": float(kl.max()),
        "last_position_delta_logprob": rows[-1][7],
    }
    path = write_files({"sae_ablation.csv": csv_bytes(CSV_HEADER, rows), "sae_ablation.json": json_bytes(summary)},
                       Path(args.out))  # fmt: skip
    if not args.quiet:
        sys.stdout.write(
            f"wrote {path} ({sae.hook_name} feature {args.feature} × {args.scale:g}; largest KL {float(kl.max()):.4g}, "
            f"Δ log p of the last position's top token {rows[-1][7]:+.4g})\n"
        )
    return 0
