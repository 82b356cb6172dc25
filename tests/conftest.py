"""Shared fixtures: real models loaded once, real speech synthesised at test time."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("NO_TORCH_COMPILE", "1")

ROOT = Path(__file__).resolve().parents[1]
TEST_OUTPUT = ROOT / "test-output"


def speak(text: str, path: Path, *, voice: str = "en-us+m3", speed: int = 165, pitch: int = 50,
          rate: int = 16000, lead_s: float = 0.5, tail_s: float = 3.0) -> Path:
    """Synthesise ``text`` with espeak-ng (a voice unlike the agent's) into a WAV with silence around it."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed (make test installs it)")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), text],
                   check=True, capture_output=True)
    from voice.audio import read_wav, write_wav

    audio = read_wav(raw, rate)
    raw.unlink()
    out = np.concatenate([np.zeros(int(lead_s * rate), np.float32), audio, np.zeros(int(tail_s * rate), np.float32)])
    write_wav(path, out, rate)
    return path


def concat(parts: list[np.ndarray | float], rate: int = 16000) -> np.ndarray:
    """Join audio arrays and silences (floats, in seconds)."""
    out = [np.zeros(int(p * rate), np.float32) if isinstance(p, (int, float)) else p for p in parts]
    return np.concatenate(out)


@pytest.fixture(scope="session")
def settings():
    from voice.settings import load_settings

    return load_settings()


@pytest.fixture(scope="session")
def runtime(settings):
    from voice.talk import shared_runtime

    return shared_runtime(settings)


@pytest.fixture(scope="session")
def transcriber(runtime):
    return runtime.transcriber


@pytest.fixture(scope="session")
def output_dir() -> Path:
    TEST_OUTPUT.mkdir(exist_ok=True)
    return TEST_OUTPUT


def session_record(settings, session_id):
    """The session's record from the store, once every writer has flushed."""
    from voice.store import Store, flush_writers

    assert flush_writers(30)
    store = Store.from_settings(settings)
    try:
        return store.get_session(session_id)
    finally:
        store.close()
