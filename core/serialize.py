"""Pickle-free (de)serialisation of result dataclasses: one JSON document plus one .npz of arrays.

A dataclass is written as {"__dataclass__": "<module>.<Class>", "fields": {...}} and only classes marked with
`@serializable` inside the `core` package are ever rebuilt, so reading a cached or exported result can never run
arbitrary code. numpy arrays go into the .npz (loaded with allow_pickle=False) and are referenced by key.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import zipfile
from typing import Any

import numpy as np

_REGISTRY: dict[str, type] = {}


def serializable(cls: type) -> type:
    """Class decorator: allow this dataclass to be rebuilt by `loads`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass")
    _REGISTRY[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _lookup(name: str) -> type:
    """The registered class of that name. A result module imports the modules of its sections, so loading an
    AnalysisResult (core.result imported) finds every class it holds; anything else is refused."""
    if name not in _REGISTRY:
        raise ValueError(f"refusing to rebuild unregistered class {name!r}")
    return _REGISTRY[name]


def _encode(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__ndarray__": key}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        if name not in _REGISTRY:
            raise TypeError(f"{name} is not marked @serializable")
        return {"__dataclass__": name,
                "fields": {f.name: _encode(getattr(obj, f.name), arrays) for f in dataclasses.fields(obj)
                           if f.metadata.get("serialize", True)}}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("only dicts with string keys can be serialised")
        return {"__dict__": {k: _encode(v, arrays) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, arrays) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return {"__float__": repr(v)} if not math.isfinite(v) else v
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _decode(obj: Any, arrays: Any) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return arrays[obj["__ndarray__"]]
        if "__float__" in obj:
            return float(obj["__float__"])
        if "__dict__" in obj:
            return {k: _decode(v, arrays) for k, v in obj["__dict__"].items()}
        if "__dataclass__" in obj:
            cls = _lookup(obj["__dataclass__"])
            names = {f.name: f for f in dataclasses.fields(cls)}
            kwargs = {k: _decode(v, arrays) for k, v in obj["fields"].items() if k in names}
            for k, f in names.items():  # tuples declared as such come back as tuples
                if k in kwargs and isinstance(kwargs[k], list) and str(f.type).startswith("tuple"):
                    kwargs[k] = tuple(kwargs[k])
            return cls(**kwargs)
        raise ValueError("malformed serialised object")
    return obj


def dumps(obj: Any) -> bytes:
    """Serialise a @serializable dataclass (and what it holds) to bytes."""
    arrays: dict[str, np.ndarray] = {}
    doc = _encode(obj, arrays)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("object.json", json.dumps(doc, ensure_ascii=False))
        npz = io.BytesIO()
        np.savez(npz, **arrays)
        zf.writestr("arrays.npz", npz.getvalue())
    return buf.getvalue()


def loads(data: bytes) -> Any:
    """Inverse of `dumps`. Never unpickles."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        doc = json.loads(zf.read("object.json"))
        with np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    return _decode(doc, arrays)
