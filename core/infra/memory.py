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
