"""Bad input gets one clear line (or a spoken fallback), never a traceback or a hang."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import ROOT, speak
from voice.audio import AudioError, read_wav


def _cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "voice.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _assert_one_line_error(proc, needle):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-1500:])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("voice: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_input(tmp_path):
    _assert_one_line_error(_cli("talk", str(tmp_path / "nope.wav"), "-o", str(tmp_path / "o.wav")), "not found")


def test_corrupt_wav(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage that is not audio")
    _assert_one_line_error(_cli("talk", str(bad), "-o", str(tmp_path / "o.wav")), "cannot read audio")


def test_empty_wav(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), 16000)
    _assert_one_line_error(_cli("talk", str(empty), "-o", str(tmp_path / "o.wav")), "empty")


def test_invalid_config_value(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[vad]\nwebrtc_aggressiveness = 9\n")
    _assert_one_line_error(_cli("config", "--config", str(cfg)), "vad.webrtc_aggressiveness")


def test_broken_toml(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[vad\n")
    _assert_one_line_error(_cli("config", "--config", str(cfg)), "not valid TOML")


def test_missing_weights_are_a_clear_error(tmp_path):
    wav = tmp_path / "x.wav"
    sf.write(str(wav), np.zeros(1600, np.float32), 16000)
    _assert_one_line_error(_cli("talk", str(wav), "-o", str(tmp_path / "o.wav"), "--tts-voice",
                                str(tmp_path / "none.onnx")), "Piper voice file not found")


@pytest.mark.parametrize("rate,channels", [(8000, 1), (44100, 2), (48000, 2), (22050, 1)])
def test_any_rate_and_stereo_are_resampled(tmp_path, rate, channels):
    t = np.arange(rate) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    data = np.stack([tone] * channels, axis=1) if channels > 1 else tone
    path = tmp_path / f"t{rate}.wav"
    sf.write(str(path), data, rate)
    audio = read_wav(path, 16000)
    assert audio.ndim == 1 and abs(len(audio) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16000 / len(audio) - 440) < 3


def test_nan_samples_rejected(tmp_path):
    path = tmp_path / "nan.wav"
    sf.write(str(path), np.array([0.0, np.nan, 0.1], np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        read_wav(path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_unreachable_llm_endpoint_gets_spoken_apology(tmp_path, settings, runtime, transcriber):
    from voice.talk import talk_file

    port = _free_port()  # nothing listens there
    bad = settings.model_copy(update={"llm": settings.llm.model_copy(update={
        "backend": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "timeout_s": 2.0})})
    wav = speak("What time is it in Tokyo?", tmp_path / "q.wav", tail_s=6.0)
    result = asyncio.run(talk_file(wav, tmp_path / "o.wav", None, bad, runtime=runtime))
    assert result.events.of("error"), "the failure must be logged as an event"
    said = transcriber.transcribe(read_wav(tmp_path / "o.wav")).lower()
    assert "sorry" in said, said


class _GarbageThenGoodLLM(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint whose first answer is garbage and later ones are valid streams."""

    calls = 0

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).calls += 1
        self.send_response(200)
        if type(self).calls == 1:
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{not json at all")
            return
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in ["The capital ", "of Italy ", "is Rome."]:
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_garbage_llm_endpoint_then_recovery_next_turn(tmp_path, settings, runtime, transcriber):
    from voice.talk import talk_file

    from tests.conftest import concat
    from voice.audio import write_wav

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _GarbageThenGoodLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        bad = settings.model_copy(update={"llm": settings.llm.model_copy(update={
            "backend": "openai", "base_url": f"http://127.0.0.1:{server.server_port}/v1", "timeout_s": 2.0})})
        q1 = read_wav(speak("Tell me a joke please.", tmp_path / "q1.wav", lead_s=0, tail_s=0))
        q2 = read_wav(speak("What is the capital of Italy?", tmp_path / "q2.wav", lead_s=0, tail_s=0))
        wav = tmp_path / "q.wav"
        write_wav(wav, concat([0.5, q1, 6.0, q2, 6.0]), 16000)
        result = asyncio.run(talk_file(wav, tmp_path / "o.wav", None, bad, runtime=runtime))
        assert result.events.of("error")
        out = read_wav(tmp_path / "o.wav")
        split = int(result.events.of("endpoint")[1]["speech_end"] * 16000)
        assert "sorry" in transcriber.transcribe(out[:split]).lower()
        assert "rome" in transcriber.transcribe(out[split:]).lower(), "the next turn must work again"
    finally:
        server.shutdown()
