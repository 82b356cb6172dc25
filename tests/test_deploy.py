"""The deployment files: docker-compose.yml validates offline, the Dockerfile is multi-stage and non-root.

No Docker daemon runs here: Compose v1 (Debian's docker-compose) validates the
file without one; the images themselves are not built or run by this test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def _compose(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose (Compose v1) is not installed: apt-get install docker-compose")
    return subprocess.run([binary, "-f", str(COMPOSE), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


SECRETS = {"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s" * 32, "VOICE_API_KEY": "v" * 24}


def test_compose_file_is_valid():
    r = _compose("config", "-q")
    assert r.returncode == 0, r.stderr
    r = _compose("config", "-q", env=SECRETS)
    assert r.returncode == 0, r.stderr


def test_compose_has_the_services():
    r = _compose("config", "--services", env=SECRETS)
    assert r.returncode == 0, r.stderr
    services = set(r.stdout.split())
    assert {"livekit", "sip", "redis", "agent", "llm", "web", "vllm", "agent-native"} <= services

    r = _compose("config", env=SECRETS)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    yaml = pytest.importorskip("yaml")

    cfg = yaml.safe_load(text)["services"]
    assert "livekit/livekit-server" in cfg["livekit"]["image"] and "livekit/sip" in cfg["sip"]["image"]
    assert cfg["agent"]["command"][0] == "worker" and cfg["web"]["command"][:3] == ["serve", "--host", "0.0.0.0"]
    assert cfg["web"]["environment"]["VOICE_SECURITY__API_KEY"] == SECRETS["VOICE_API_KEY"]
    assert int(cfg["agent"]["scale"]) >= 2
    for name in ("redis", "livekit", "sip", "llm", "agent", "web"):
        assert "healthcheck" in cfg[name], name
        assert cfg[name].get("mem_limit") and cfg[name].get("cpus"), name
    for name in ("vllm", "agent-native"):
        assert cfg[name]["profiles"] == ["gpu"] and cfg[name]["runtime"] == "nvidia"
    # secrets come from the environment, never from the file
    raw = COMPOSE.read_text()
    assert SECRETS["LIVEKIT_API_SECRET"] not in raw
    assert not re.search(r"(API_SECRET|API_KEY)[^\n]*:-[^}]", raw), "a secret has a default value"
    for f in ("deploy/livekit.yaml", "deploy/sip.yaml"):
        assert (ROOT / f).is_file()
        yaml.safe_load((ROOT / f).read_text())


def test_dockerfile_is_multi_stage_and_non_root():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE | re.IGNORECASE)
    assert len(stages) >= 2, "expected a builder and a runtime stage"
    assert "builder" in [s.lower() for s in stages]
    assert re.search(r"^COPY --from=builder", text, flags=re.MULTILINE)
    # the wheel is compiled in the builder, not in the runtime image
    builder, runtime = re.split(r"^FROM\s+\S+\s+AS\s+runtime", text, flags=re.MULTILINE | re.IGNORECASE)
    assert "pip wheel" in builder and "llama-cpp-python" in builder
    assert "build-essential" not in runtime
    users = re.findall(r"^USER\s+(\S+)", runtime, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "torch==2.13.0" in builder and "download.pytorch.org/whl/cpu" in builder
