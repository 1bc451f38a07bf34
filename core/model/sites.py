"""Named activation sites of a model, in TransformerLens's names, mapped onto the modules of the architecture map.

A site name is `blocks.{l}.<hook>` with <hook> one of
    hook_resid_pre   the residual stream entering block l (the block's first input)        width D
    hook_resid_post  the residual stream leaving block l (the block's main output)         width D
    hook_attn_out    the attention update of block l (out_proj's output; Gemma-2: after its update norm)  width D
    hook_mlp_out     the MLP update of block l (mlp_out's output; Gemma-2: after its update norm)        width D
    attn.hook_z      the per-head attention output before W_O (out_proj's input, head-major)  width H·d_h
These are the names sparse autoencoders are trained on (SAELens's `hook_name`); `core.model.arch.model_parts` says
which module each is, so every family the map knows has every site. `site(parts, name)` resolves a name (one-line
InputError for a name the model does not have); `recorders(parts, names, store)` gives hook registrations for
`core.model.hooks.hooked` that copy each site's activation [T, width] (float32, CPU, batch row 0) into `store`;
`replacer(site, fn)` gives one registration that replaces a site's activation by fn(activation) (for patching a
feature). Hooks are registered only through `hooked`, so they are always removed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.infra.errors import InputError
from core.model.hooks import Registration, first_input, main_output, replace_output, with_first_input

if TYPE_CHECKING:
    import torch
    from torch import nn

    from core.model.arch import ModelParts

HOOKS = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "attn.hook_z")
_NAME = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(h) for h in HOOKS) + r")$")


@dataclass(frozen=True)
class Site:
    """One resolved site: the module to hook, whether its input or output is the activation, and its width."""

    name: str
    layer: int
    hook: str
    module: nn.Module
    reads_input: bool  # True: the module's first input (resid_pre, hook_z); False: its main output
    width: int


def parse(name: str) -> tuple[int, str]:
    """(layer, hook) of a site name, or a one-line InputError naming the accepted forms."""
    m = _NAME.match(str(name).strip())
    if m is None:
        raise InputError(
            f"unknown hook '{str(name)[:80]}': expected blocks.<layer>.<hook> with <hook> one of {', '.join(HOOKS)}"
        )
    return int(m.group(1)), m.group(2)


def site(parts: ModelParts, name: str) -> Site:
    """The module and width behind `name` on this model (InputError when the model has no such layer)."""
    layer, hook = parse(name)
    if layer >= parts.n_layers:
        raise InputError(f"hook '{name}' names block {layer}, but the model has {parts.n_layers} blocks (0…)")
    b = parts.blocks[layer]
    hl = parts.heads
    D = _hidden_width(parts)
    if hook == "hook_resid_pre":
        return Site(name, layer, hook, b.module, True, D)
    if hook == "hook_resid_post":
        return Site(name, layer, hook, b.module, False, D)
    if hook == "hook_attn_out":
        return Site(name, layer, hook, b.attn_update_norm or b.out_proj, False, D)
    if hook == "hook_mlp_out":
        return Site(name, layer, hook, b.mlp_update_norm or b.mlp_out, False, D)
    return Site(name, layer, hook, b.out_proj, True, hl.n_heads * hl.head_dim)  # attn.hook_z


def _hidden_width(parts: ModelParts) -> int:
    from core.model.arch import weight

    return int(weight(parts.embed_tokens).shape[1])  # [V, D]


def _flat(x: torch.Tensor) -> torch.Tensor:
    """[1, T, W] (or [T, W]) → [T, W]."""
    return x[0] if x.dim() == 3 else x


def recorders(parts: ModelParts, names: Iterable[str], store: dict[str, Any]) -> list[Registration]:
    """Registrations that copy each named site's activation into store[name]: torch float32 [T, width] on the CPU.
    A name recorded twice (two SAEs on one site) is hooked once."""
    regs: list[Registration] = []
    for name in dict.fromkeys(names):
        s = site(parts, name)
        regs.append(_recorder(s, store))
    return regs


def _recorder(s: Site, store: dict[str, Any]) -> Registration:
    if s.reads_input:

        def pre(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            store[s.name] = _flat(first_input(args, kwargs)).detach().float().cpu()

        return (s.module, "pre_kwargs", pre)

    def post(_m: Any, _args: Any, out: Any) -> None:
        store[s.name] = _flat(main_output(out)).detach().float().cpu()

    return (s.module, "post", post)


def replacer(s: Site, fn: Callable[[torch.Tensor], torch.Tensor]) -> Registration:
    """A registration that replaces the site's activation x [1, T, W] by fn(x) (same shape, any dtype: cast back)."""
    if s.reads_input:

        def pre(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
            x = first_input(args, kwargs)
            return with_first_input(args, kwargs, fn(x).to(x.dtype))

        return (s.module, "pre_kwargs", pre)

    def post(_m: Any, _args: Any, out: Any) -> Any:
        x = main_output(out)
        return replace_output(out, fn(x).to(x.dtype))

    return (s.module, "post", post)
