"""Shared pieces of the browser tests: Debian's chromium with the flags that work offline, and a real
`streamlit run` server on a free (or given) port, polled on /_stcore/health and stopped by its PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
EXCEPTION = '[data-testid="stException"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def need_browser() -> None:
    """Skip the calling test module when chromium or playwright is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to run the browser test")
    pytest.importorskip("playwright.sync_api", reason="playwright (python package) is not installed")


@contextmanager
def streamlit_server(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
    start_timeout: float = 120,
) -> Iterator[tuple[str, Path]]:
    """Run app/main.py offline with its own result cache and runs folder; yields (url, server log path)."""
    port = port or free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TMA_CACHE_DIR=str(tmp_path_factory.mktemp(f"{name}-cache")),
        TMA_RUNS_DIR=str(tmp_path_factory.mktemp(f"{name}-runs")),
        TOKENIZERS_PARALLELISM="false",
    )
    log_path = tmp_path_factory.mktemp(f"{name}-server") / "streamlit.log"
    args = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app/main.py",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        *extra_args,
    ]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + start_timeout
            while True:
                try:
                    with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("the streamlit server did not start:\n" + log_path.read_text()[-3000:])
                time.sleep(0.5)
            yield url, log_path
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
