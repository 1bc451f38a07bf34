"""The result cache never makes an analysis fail: each fault (corrupt database, unreadable value, missing or
read-only folder, full disk) → the analysis returns its result with exactly one cache warning, and the log says so;
a corrupt folder is moved aside (not deleted) and a fresh cache takes its place; the size bound holds."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3

import pytest

from core.analysis.pipeline import analyze
from core.run.cache import ResultCache

TEXT = "The cat sat on the mat."


def _run(model, cache, text=TEXT):
    return analyze(model, text, cache=cache, compute_gradients=False)


def _cache_warnings(result):
    return [w for w in result.warnings if "cache" in w]


def _logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "core.run.cache" and r.levelno >= logging.WARNING]


def test_corrupt_database_is_moved_aside_and_rebuilt(tiny_gpt2, tmp_path, caplog):
    folder = tmp_path / "cache"
    folder.mkdir()
    junk = b"this is not an sqlite database, it was half written when the disk filled up" * 100
    (folder / "cache.db").write_bytes(junk)
    with caplog.at_level(logging.WARNING):
        cache = ResultCache(folder, size_limit_mb=16)
        result = _run(tiny_gpt2, cache)
    assert result.n_tokens > 0 and not result.cache_hit
    warnings = _cache_warnings(result)
    assert len(warnings) == 1 and "corrupt" in warnings[0] and "moved aside" in warnings[0]
    assert str(tmp_path) not in warnings[0]  # the user is not told server paths
    assert any("corrupt" in m for m in _logged(caplog))
    aside = tmp_path / "cache.corrupt"
    assert (aside / "cache.db").read_bytes() == junk  # moved, not deleted
    # the fresh cache works: the same analysis is now a hit without warnings
    again = _run(tiny_gpt2, cache)
    assert again.cache_hit and not _cache_warnings(again)
    cache.close()


def test_database_corrupted_while_open_is_replaced(tiny_gpt2, tmp_path, monkeypatch):
    cache = ResultCache(tmp_path / "cache", size_limit_mb=16)
    first = _run(tiny_gpt2, cache)
    assert not _cache_warnings(first)

    def malformed(*_a, **_k):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(type(cache._cache), "get", malformed)
    result = _run(tiny_gpt2, cache)
    monkeypatch.undo()
    assert not result.cache_hit and result.n_tokens == first.n_tokens
    warnings = _cache_warnings(result)
    assert len(warnings) == 1 and "corrupt" in warnings[0]
    assert (tmp_path / "cache.corrupt").is_dir() and cache.available
    assert _run(tiny_gpt2, cache).cache_hit  # the fresh cache stored the recomputed result
    cache.close()


def test_unreadable_value_is_dropped_and_recomputed(tiny_gpt2, tmp_path, caplog):
    cache = ResultCache(tmp_path / "cache", size_limit_mb=16)
    first = _run(tiny_gpt2, cache)
    cache._cache.set(first.cache_key, b"\x00garbage, not a result")  # a damaged entry under the right key
    with caplog.at_level(logging.WARNING):
        result = _run(tiny_gpt2, cache)
    assert not result.cache_hit and result.tokens == first.tokens
    warnings = _cache_warnings(result)
    assert len(warnings) == 1 and "could not be read" in warnings[0]
    assert any("unreadable" in m for m in _logged(caplog))
    assert _run(tiny_gpt2, cache).cache_hit  # the good result replaced the damaged one
    cache.close()


def test_value_file_removed_or_replaced_on_disk(tmp_path):
    """Large values live in their own files: a missing one, or one replaced by a folder, is a miss, not a crash."""
    cache = ResultCache(tmp_path / "cache", size_limit_mb=16)
    blob = os.urandom(100_000)
    assert cache.set_bytes("a", blob) and cache.set_bytes("b", blob)
    files = sorted((tmp_path / "cache").rglob("*.val"))
    assert len(files) == 2, "values above diskcache's inline limit are stored as files"
    files[0].unlink()
    files[1].unlink()
    files[1].mkdir()  # reading it raises IsADirectoryError
    assert cache.get_bytes("a") is None and cache.get_bytes("b") is None
    assert cache.set_bytes("c", blob) and cache.get_bytes("c") == blob
    cache.close()


def test_folder_that_cannot_be_created(tiny_gpt2, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING):
        cache = ResultCache(blocker / "cache", size_limit_mb=16)  # its parent is a file: it can never exist
        result = _run(tiny_gpt2, cache)
    assert result.n_tokens > 0 and not cache.available
    warnings = _cache_warnings(result)
    assert len(warnings) == 1 and "cannot be used" in warnings[0] and str(tmp_path) not in warnings[0]
    assert any("unavailable" in m for m in _logged(caplog))
    # a second analysis: still one warning, still a result
    assert len(_cache_warnings(_run(tiny_gpt2, cache, "The dog sat on the log."))) == 1


def test_read_only_database(tiny_gpt2, tmp_path, caplog):
    """Writes fail as on a read-only mount ('attempt to write a readonly database'); LRU reads write too."""
    cache = ResultCache(tmp_path / "cache", size_limit_mb=16)
    stored = _run(tiny_gpt2, cache)
    cache._cache._sql("PRAGMA query_only = ON")  # this thread's connection refuses every write from now on
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        cache._cache._sql("DELETE FROM Cache")  # the fault is real, not a mock
    with caplog.at_level(logging.WARNING):
        result = _run(tiny_gpt2, cache)
    assert result.n_tokens > 0 and result.tokens == stored.tokens
    warnings = _cache_warnings(result)
    assert len(warnings) == 1 and "read-only" in warnings[0]  # one warning, though reading and writing failed
    assert len(_logged(caplog)) == 2  # both faults are in the log
    cache._cache._sql("PRAGMA query_only = OFF")
    assert _run(tiny_gpt2, cache).cache_hit
    cache.close()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_folder_permissions(tiny_gpt2, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        cache = ResultCache(folder / "cache", size_limit_mb=16)
        result = _run(tiny_gpt2, cache)
        assert result.n_tokens > 0 and len(_cache_warnings(result)) == 1
    finally:
        folder.chmod(0o755)


def test_full_disk(tiny_gpt2, tmp_path, monkeypatch, caplog):
    cache = ResultCache(tmp_path / "cache", size_limit_mb=16)

    def no_space(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(type(cache._cache), "set", no_space)
    with caplog.at_level(logging.WARNING):
        result = _run(tiny_gpt2, cache)
    assert result.n_tokens > 0
    warnings = _cache_warnings(result)
    assert len(warnings) == 1 and "No space left" in warnings[0]
    assert any("failed" in m for m in _logged(caplog))
    cache.close()


def test_folder_deleted_while_open(tiny_gpt2, tmp_path):
    import shutil

    cache = ResultCache(tmp_path / "cache", size_limit_mb=16)
    _run(tiny_gpt2, cache)
    shutil.rmtree(tmp_path / "cache")
    result = _run(tiny_gpt2, cache, "A bird flew over the house.")
    assert result.n_tokens > 0 and len(_cache_warnings(result)) <= 1
    cache.close()


def test_size_bound_holds_also_after_recovery(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "cache.db").write_bytes(b"garbage" * 1000)
    cache = ResultCache(folder, size_limit_mb=1)
    assert cache.take_warnings()  # the recovery was reported
    blob = os.urandom(200_000)
    for i in range(40):  # 8 MB written into a 1 MB cache
        assert cache.set_bytes(f"k{i}", blob)
    assert cache.volume() <= 1.5 * 1024 * 1024
    assert cache.get_bytes("k39") == blob  # the newest survives, the oldest were evicted
    assert cache.get_bytes("k0") is None
    assert not cache.take_warnings()
    cache.close()


def test_bytes_api_faults_are_warnings(tmp_path, monkeypatch):
    cache = ResultCache(tmp_path / "cache", size_limit_mb=4)
    assert cache.set_bytes("a", b"payload") and cache.get_bytes("a") == b"payload"

    def broken(*_a, **_k):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(type(cache._cache), "get", broken)
    monkeypatch.setattr(type(cache._cache), "set", broken)
    assert cache.get_bytes("a") is None and cache.set_bytes("b", b"x") is False
    warnings = cache.take_warnings()
    assert len(warnings) == 1 and "disk I/O error" in warnings[0]
    assert cache.take_warnings() == []  # handed out once
    cache.close()


def test_warnings_belong_to_the_calling_thread(tmp_path, monkeypatch):
    import threading

    cache = ResultCache(tmp_path / "cache", size_limit_mb=4)
    monkeypatch.setattr(
        type(cache._cache),
        "set",
        lambda *_a, **_k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")),
    )
    seen: dict[str, list[str]] = {}

    def other():
        cache.set_bytes("x", b"1")
        seen["other"] = cache.take_warnings()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(seen["other"]) == 1 and cache.take_warnings() == []
    cache.close()
