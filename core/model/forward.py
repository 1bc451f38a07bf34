"""Forward passes that read the logits at one position of a batch (patching, head ablation), and the batch size that
keeps such a pass's activations within a memory budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from core.model.arch import encoder_head

if TYPE_CHECKING:
    import torch

    from core.model.loading import LoadedModel


#: Bytes of activations per batch row are estimated as 4 · T · (12 · D + 2 · H · T) + 4 · V (no gradients kept);
#: a layer's T + 1 rows run in chunks that keep under this budget.
PATCH_MEMORY_BUDGET = 512_000_000


def target_logits(
    loaded: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, position: int, *, grad: bool = False
) -> torch.Tensor:
    """Logits at `position` for a batch: input_ids [B, T] → float32 [B, V] (no gradients unless `grad`: then the
    pass records autograd, for attribution patching's backward pass).

    Causal LMs run the prefix 0..position and compute the head at that one position; BERT-style masked LMs run the
    encoder and apply the head at `position` only (encoder and head from the architecture map); anything else runs
    the whole model."""
    import torch

    model = loaded.model
    B = input_ids.shape[0]
    with torch.enable_grad() if grad else torch.inference_mode():
        if loaded.family == "causal_lm":
            kw = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
            out = model(
                input_ids=input_ids[:, : position + 1],
                attention_mask=attention_mask[:, : position + 1].expand(B, -1),
                use_cache=False,
                **kw,
            )
            return out.logits[:, -1].float()
        mask = attention_mask.expand(B, -1)
        split = encoder_head(model)
        if split is not None:
            encoder, head = split
            h = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
            return head(h[:, position : position + 1])[:, 0].float()
        return model(input_ids=input_ids, attention_mask=mask).logits[:, position].float()


def chunk_rows(loaded: LoadedModel, T: int) -> int:
    V = int(getattr(loaded.model.config, "vocab_size", 0) or 0)
    per_row = 4 * T * (12 * loaded.hidden_size + 2 * loaded.n_heads * T) + 4 * V
    return int(max(1, PATCH_MEMORY_BUDGET // max(per_row, 1)))


def supports_logits_to_keep(model: Any) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
