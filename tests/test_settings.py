from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from voice.settings import ConfigError, load_settings, redacted


def test_defaults_are_the_embedded_models():
    s = load_settings()
    assert s.host == "127.0.0.1"
    assert s.asr.model == "embedded" and s.tts.voice == "embedded" and s.llm.backend == "llama-cpp"


def test_env_overrides_toml_and_nested(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('port = 9001\n[llm]\nbackend = "openai"\nbase_url = "http://x/v1"\nmodel = "m1"\n')
    monkeypatch.setenv("VOICE_LLM__MODEL", "m2")
    s = load_settings(cfg)
    assert s.port == 9001 and s.llm.backend == "openai" and s.llm.model == "m2"


def test_secrets_are_masked(monkeypatch):
    monkeypatch.setenv("VOICE_LLM__API_KEY", "sk-very-secret")
    s = load_settings()
    assert s.llm.api_key.get_secret_value() == "sk-very-secret"
    assert "sk-very-secret" not in json.dumps(redacted(s))


def test_unknown_key_rejected(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("no_such_setting = 1\n")
    with pytest.raises(ConfigError, match="no_such_setting"):
        load_settings(cfg)


def test_cli_flags_win_and_config_prints_effective(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "voice.cli", "config", "--llm-base-url", "http://127.0.0.1:1/v1",
                           "--llm-model", "qwen", "--llm-api-key", "k-123"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["llm"]["backend"] == "openai" and data["llm"]["model"] == "qwen"
    assert data["llm"]["api_key"] == "***"
