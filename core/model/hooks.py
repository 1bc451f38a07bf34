"""Forward hooks on a model's modules, registered in one place.

`hooked(registrations)` adds each (module, kind, fn) for the duration of a with-block and always removes them in a
`finally` (TransformerLens's `hooks()` context manager is the model), so an exception inside the block never leaves
a hook behind on a model that other sessions share. Kinds:
    "pre"         fn(module, args) before forward; may return new args
    "pre_kwargs"  fn(module, args, kwargs) before forward; may return new (args, kwargs)
    "post"        fn(module, args, output) after forward; may return a new output
`attention_function(model, name)` swaps the model's attention function the same way (restored in its `finally`).
The helpers below read and replace a block's first input and main output, whatever the architecture passes
positionally or by keyword. Which module to hook (blocks, attention output, MLP output, norms, the head) comes from
the one architecture map, core.model.arch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

KINDS = ("pre", "pre_kwargs", "post")

Registration = tuple[Any, str, Callable[..., Any]]


@contextmanager
def hooked(registrations: Iterable[Registration]) -> Iterator[None]:
    """Register each (module, kind, fn) for the duration of the block; always removed afterwards."""
    handles = []
    try:
        for module, kind, fn in registrations:
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(fn))
            elif kind == "pre_kwargs":
                handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
            elif kind == "post":
                handles.append(module.register_forward_hook(fn))
            else:
                raise ValueError(f"hook kind must be one of {KINDS}, got {kind!r}")
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def attention_function(model: Any, name: str | None) -> Iterator[None]:
    """Run `model` with the attention function registered under `name` in transformers' AttentionInterface (the
    model's `config._attn_implementation`, which every attention module and the mask builder read at each forward)
    for the duration of the block; the previous implementation is always restored in a `finally`. None: unchanged.
    Call under the model's lock: the setting is the shared model's."""
    if name is None:
        yield
        return
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before


def first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The hidden states a block receives (first positional argument, or the `hidden_states` keyword)."""
    return args[0] if args else kwargs["hidden_states"]


def with_first_input(
    args: tuple[Any, ...], kwargs: dict[str, Any], value: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) with the block's hidden states replaced by `value`."""
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


def main_output(out: Any) -> Any:
    """A module's main output (the first element when it returns a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def replace_output(out: Any, value: Any) -> Any:
    """`out` with its main output replaced by `value`."""
    return (value, *out[1:]) if isinstance(out, tuple) else value
