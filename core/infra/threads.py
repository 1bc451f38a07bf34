"""Thread-pool control for the small numpy / scikit-learn work that follows a torch pass."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

_ST_LOCK = threading.Lock()
_ST_STATE: dict[str, Any] = {"depth": 0, "limiter": None}
_CONTROLLERS: dict[tuple[int, int], Any] = {}


def _loaded_library_count() -> int:
    """How many shared libraries the process has loaded (Linux: dl_iterate_phdr, ~0.05 ms for 250 libraries;
    elsewhere -1). A thread-pool library can arrive without a new Python module (a C extension that dlopens it on
    first use), so the module count alone cannot tell when the libraries must be looked up again."""
    if not sys.platform.startswith("linux"):
        return -1
    import ctypes

    count = [0]

    def visit(info: Any, size: int, data: Any) -> int:
        count[0] += 1
        return 0

    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    try:
        ctypes.CDLL(None).dl_iterate_phdr(callback_type(visit), None)
    except (OSError, AttributeError):
        return -1
    return count[0]


def _release_openblas_control() -> None:
    """threadpoolctl 3.8 lets only one live thread set OpenBLAS (pthreads) limits: the first thread to set them owns
    them until it ends, and the others' settings are dropped without a word. A job-runner thread lives as long as the
    app, so after it once entered `single_threaded` the limits of every other thread (Streamlit's script threads)
    were ignored and their small numpy work ran on all threads again. Our own lock already serialises the changes,
    so each change first hands control back."""
    from threadpoolctl import OpenBLASController

    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Context manager: one BLAS and one OpenMP thread (threadpoolctl) for small numpy / scikit-learn work.

    Right after a torch pass, torch's OpenMP threads keep spinning and contend with OpenBLAS / scikit-learn's own
    thread pools: on a 2-core machine a 128×128 matmul chain ran 100× slower (300 ms instead of 3 ms). These
    problems are far too small to gain from threads anyway. The limit is process-wide (BLAS) and shared by
    concurrent users: the first to enter sets it, the last to leave restores the previous limits.
    """
    with _ST_LOCK:
        if _ST_STATE["depth"] == 0:
            # finding the thread pools costs 5-10 ms: redo it only when modules or libraries were loaded
            key = (len(sys.modules), _loaded_library_count())
            controller = _CONTROLLERS.get(key)
            if controller is None:
                from threadpoolctl import ThreadpoolController

                _CONTROLLERS.clear()
                controller = _CONTROLLERS[key] = ThreadpoolController()
            _release_openblas_control()
            _ST_STATE["limiter"] = controller.limit(limits=1)
        _ST_STATE["depth"] += 1
    try:
        yield
    finally:
        with _ST_LOCK:
            _ST_STATE["depth"] -= 1
            if _ST_STATE["depth"] == 0:
                _release_openblas_control()
                _ST_STATE["limiter"].restore_original_limits()
                _ST_STATE["limiter"] = None
                _release_openblas_control()


_GC_LOCK = threading.Lock()
_GC_STATE: dict[str, Any] = {"depth": 0, "was_enabled": True}


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Context manager: Python's cyclic garbage collector paused while the enclosed work runs (a bundle's figures).

    With torch and transformers loaded a process tracks over 600 000 objects, and the collections that thousands of
    new matplotlib objects set off walked them again and again: 0.7 s of a 5 s GPT-2 bundle. Nothing is collected
    late for good: the figures' garbage is collected by the next automatic collection after the block. Shared by
    concurrent users like `single_threaded`: the first to enter pauses, the last to leave restores the earlier state.
    """
    import gc

    with _GC_LOCK:
        if _GC_STATE["depth"] == 0:
            _GC_STATE["was_enabled"] = gc.isenabled()
            gc.disable()
        _GC_STATE["depth"] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_STATE["depth"] -= 1
            if _GC_STATE["depth"] == 0 and _GC_STATE["was_enabled"]:
                gc.enable()
