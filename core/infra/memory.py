"""The process's allocator for long texts: large buffers handed back to the system as soon as they are freed.

glibc's malloc serves a buffer from its heap below a threshold that it raises by itself (up to 32 MiB) each time a
larger mapped buffer is freed; a freed heap buffer stays in the process's resident memory until a later one fits
in its place. A long text's passes allocate and free buffers of a few to a few tens of MiB by the thousand (a
TinyLlama-shape block at 2048 tokens: 8 MiB hidden states, 22 MiB MLP activations, their float32 copies), and the
heap's holes added 0.5–0.8 GiB of resident memory that no tensor held to the analysis's peak (the same run
measured 3.81 and 4.05 GiB; 3.30 GiB with the threshold fixed). `map_large_buffers()` fixes the threshold at
MMAP_THRESHOLD: buffers from that size up are mapped and unmapped, so the resident memory follows what is alive.
The price is the page faults of every fresh buffer (about a tenth more CPU time in a long text's gradient pass),
so the capture switches it on for a long text only (core.model.capture); it then holds for the rest of the
process (glibc cannot restore its moving threshold). Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Buffers of at least this many bytes are mapped and returned to the system when freed (once switched on).
MMAP_THRESHOLD = 4 * 2**20
#: glibc's mallopt parameter M_MMAP_THRESHOLD (malloc.h).
_M_MMAP_THRESHOLD = -3

_lock = threading.Lock()
_state: dict[str, int | None] = {"threshold": None}


def map_large_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes for the rest of the process (a lower threshold set earlier
    is kept). Returns whether the threshold now in force is at most `threshold` (False where the C library is not
    glibc or refuses)."""
    with _lock:
        current = _state["threshold"]
        if current is not None and current <= threshold:
            return True
        if not sys.platform.startswith("linux"):
            return False
        import ctypes

        try:
            libc = ctypes.CDLL(None)
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # no mallopt: not glibc
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        if mallopt(_M_MMAP_THRESHOLD, int(threshold)) != 1:
            log.info("mallopt(M_MMAP_THRESHOLD, %d) was refused", threshold)
            return False
        _state["threshold"] = int(threshold)
        return True


def large_buffer_threshold() -> int | None:
    """The threshold `map_large_buffers` set in this process, or None when it was never switched on."""
    return _state["threshold"]


def env_count(name: str, default: int) -> int:
    """A non-negative integer from the environment variable `name`, `default` when it is unset, empty or not such
    a number (logged)."""
    import os

    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        log.warning("%s=%r is not a count (0, 1, 2 ...): %d is used", name, raw, default)
        return default
    return value


#: Requests smaller than this are served by plain np.empty (the heap recycles them by itself).
POOLED_MIN_BYTES = 32 * 2**20


class BufferPool:
    """Large numpy arrays whose memory is reused once nobody holds them.

    A fresh buffer of a hundred MiB costs its page faults on first touch, and on a virtual machine whose guest hands
    freed pages back to the host (free page reporting, DAMON reclaim) a fresh buffer's first touch cost far more:
    the capture pass of a 512-token GPT-2 text, which copies its attention maps (151 MB) into one array, took
    1.24-1.33 s instead of 0.58 s on a 2-core cloud VM, every time, while the same pass writing into memory it had
    used before stayed at the floor. `empty(shape, dtype)` hands out a view of a pooled buffer that no array uses
    any more (its only reference is the pool's: numpy collapses a view's base to the buffer, so every array made
    from it counts), else a new one. It keeps at most `keep` buffers; a buffer is reused for a request of at least
    half its size, and a request that no free buffer fits replaces the oldest free one (the texts got longer or
    shorter), so an idle process holds at most `keep` × the largest request."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised array of `shape` and `dtype` (C order), from a free pooled buffer when one fits (requests
        under POOLED_MIN_BYTES are plain np.empty)."""
        dt = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if n < POOLED_MIN_BYTES:
            return np.empty(shape, dtype=dt)
        with self._lock:
            free = [i for i in range(len(self._buffers)) if self._is_free(i)]
            for i in free:
                buf = self._buffers[i]
                if n <= buf.nbytes <= 2 * n:
                    return buf[:n].view(dt).reshape(shape)
            if free and len(self._buffers) >= self.keep:  # make room: drop the oldest free buffer
                del self._buffers[free[0]]
            buf = np.empty(n, dtype=np.uint8)
            if len(self._buffers) < self.keep:
                self._buffers.append(buf)
            return buf[:n].view(dt).reshape(shape)

    def _is_free(self, i: int) -> bool:
        # references to a free buffer: the pool's list and getrefcount's argument (every array made from it holds
        # one more: numpy collapses a view's base to the buffer)
        return sys.getrefcount(self._buffers[i]) == 2

    def held_bytes(self) -> int:
        """Bytes of the pooled buffers (in use or free)."""
        with self._lock:
            return sum(b.nbytes for b in self._buffers)
