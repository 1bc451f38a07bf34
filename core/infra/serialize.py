"""Pickle-free (de)serialisation of result dataclasses: one JSON document plus raw arrays.

A dataclass is written as {"__dataclass__": "<module>.<Class>", "fields": {...}} and only classes marked with
`@serializable` inside the `core` package are ever rebuilt, so reading a cached or exported result can never run
arbitrary code. numpy arrays are referenced from the JSON by key.

Format (`dumps`): MAGIC, the header length (8 bytes, little endian), the header JSON {"object": the document,
"arrays": {key: {"dtype", "shape", "offset"}}}, then each array's raw bytes (C order) at a 64-byte aligned offset.
Arrays are stored uncompressed so that `loads` rebuilds them without a copy: they are read-only views
(`np.frombuffer`) on the bytes it was given (writable views when given a bytearray). Only plain numeric, bool and
fixed-width string dtypes are accepted, never object arrays. The earlier format (a ZIP of object.json and an .npz)
is still read.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import mmap
import struct
import zipfile
from typing import Any, TypeVar

import numpy as np

_REGISTRY: dict[str, type] = {}

T = TypeVar("T")

#: Modules of serialisable classes before core/ became layer packages (results cached or exported before then
#: name their classes by these paths); a stored name under an old module is read as the class in its new home.
LEGACY_MODULES: dict[str, str] = {
    "core.ablation": "core.steps.ablation",
    "core.attention": "core.steps.attention",
    "core.attribution": "core.steps.attribution",
    "core.compare": "core.studies.compare",
    "core.corpus": "core.studies.corpus",
    "core.dla": "core.steps.dla",
    "core.flow": "core.steps.flow",
    "core.logit_lens": "core.steps.logit_lens",
    "core.model_info": "core.model.info",
    "core.neurons": "core.steps.neurons",
    "core.patching": "core.studies.patching",
    "core.predictions": "core.steps.predictions",
    "core.qk": "core.steps.qk",
    "core.result": "core.analysis.result",
    "core.settings": "core.run.settings",
}


def serializable(cls: type) -> type:
    """Class decorator: allow this dataclass to be rebuilt by `loads`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass")
    _REGISTRY[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _lookup(name: str) -> type:
    """The registered class of that name. A result module imports the modules of its sections, so loading an
    AnalysisResult (core.analysis.result imported) finds every class it holds; anything else is refused."""
    module, _, qualname = name.rpartition(".")
    if name not in _REGISTRY and module in LEGACY_MODULES:
        name = f"{LEGACY_MODULES[module]}.{qualname}"
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
        return {
            "__dataclass__": name,
            "fields": {
                f.name: _encode(getattr(obj, f.name), arrays)
                for f in dataclasses.fields(obj)
                if f.metadata.get("serialize", True)
            },
        }
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


MAGIC = b"TMA-RESULT-2\n"
_ALIGN = 64
#: dtype kinds an array may have: bool, signed / unsigned int, float, complex, bytes, unicode (never objects).
_ARRAY_KINDS = "biufcSU"


def _array_dtype(spec: str) -> np.dtype:
    dt = np.dtype(spec)
    if dt.kind not in _ARRAY_KINDS or dt.hasobject or dt.fields is not None:
        raise ValueError(f"refusing array dtype {spec!r}")
    return dt


def dumps(obj: Any) -> bytes:
    """Serialise a @serializable dataclass (and what it holds) to bytes (format: see the module docstring)."""
    arrays: dict[str, np.ndarray] = {}
    doc = _encode(obj, arrays)
    table: dict[str, dict[str, Any]] = {}
    offset = 0
    blobs: list[tuple[int, np.ndarray]] = []
    for key, arr in arrays.items():
        a = np.ascontiguousarray(arr)
        _array_dtype(a.dtype.str)
        offset = -(-offset // _ALIGN) * _ALIGN
        table[key] = {"dtype": a.dtype.str, "shape": list(a.shape), "offset": offset}
        blobs.append((offset, a))
        offset += a.nbytes
    header = json.dumps({"object": doc, "arrays": table}, ensure_ascii=False).encode("utf-8")
    head = MAGIC + struct.pack("<Q", len(header)) + header
    start = -(-len(head) // _ALIGN) * _ALIGN
    parts: list[Any] = [head, bytes(start - len(head))]
    pos = 0
    for off, a in blobs:
        parts += [bytes(off - pos), a.reshape(-1).view(np.uint8).data]
        pos = off + a.nbytes
    return b"".join(parts)  # the one copy of the arrays


def loads(data: bytes | bytearray | memoryview | mmap.mmap) -> Any:
    """Inverse of `dumps` (and of the earlier ZIP format). Never unpickles.

    Arrays are views on `data` without a copy: read-only for bytes, writable for a bytearray.
    """
    buf = memoryview(data)
    if bytes(buf[: len(MAGIC)]) != MAGIC:
        return _loads_zip(bytes(buf))
    n = len(MAGIC)
    (hlen,) = struct.unpack("<Q", bytes(buf[n : n + 8]))
    if n + 8 + hlen > len(buf):
        raise ValueError("truncated serialised object (header)")
    header = json.loads(bytes(buf[n + 8 : n + 8 + hlen]).decode("utf-8"))
    start = -(-(n + 8 + hlen) // _ALIGN) * _ALIGN
    arrays: dict[str, np.ndarray] = {}
    for key, spec in header["arrays"].items():
        dt = _array_dtype(spec["dtype"])
        shape = tuple(int(x) for x in spec["shape"])
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        off = start + int(spec["offset"])
        if off < start or off + count * dt.itemsize > len(buf):
            raise ValueError(f"truncated serialised object (array {key})")
        arrays[key] = np.frombuffer(buf, dtype=dt, count=count, offset=off).reshape(shape)
    return _decode(header["object"], arrays)


def loads_as(data: bytes | bytearray | memoryview | mmap.mmap, cls: type[T]) -> T:
    """`loads`, then TypeError ("the data does not hold a <cls>") unless the object rebuilt is a `cls`."""
    obj = loads(data)
    if not isinstance(obj, cls):
        raise TypeError(f"the data does not hold a {cls.__name__}")
    return obj


class Stored:
    """Base of a @serializable result that is stored whole (the result cache, exports): `to_bytes` and
    `from_bytes` over `dumps` / `loads_as`."""

    def to_bytes(self) -> bytes:
        return dumps(self)

    @classmethod
    def from_bytes(cls: type[T], data: bytes | bytearray | memoryview | mmap.mmap) -> T:
        return loads_as(data, cls)


def _loads_zip(data: bytes) -> Any:
    """The earlier format: a ZIP of object.json and arrays.npz (loaded with allow_pickle=False)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        doc = json.loads(zf.read("object.json"))
        with np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    return _decode(doc, arrays)
