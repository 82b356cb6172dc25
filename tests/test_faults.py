"""Faults in every stage: the session apologises out loud, logs the error, recovers on the next turn,
and other sessions in the process are not affected.

No mocks of the thing under test: the LLM is a real local HTTP server that is
slow or scripted; TTS and ASR faults are fault injection around the real,
loaded models (a subclass that delegates to the real object and raises on a
chosen word / call — that is the injected fault, everything else is real).
The kill -9 test runs a real ``voice talk`` subprocess with the store on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.conftest import ROOT, concat, session_record, speak
from voice.audio import read_wav, write_wav

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------- the fake-free LLM


class _ScriptedLLM(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible streaming endpoint that answers by keyword in the last user message.

    ``slow_words``: a question with one of these words is answered only after
    ``delay_s`` (past the client's timeout). Every request body is kept in ``requests``.
    """

    answers = {"italy": "The capital of Italy is Rome.", "france": "The capital of France is Paris.",
               "joke": "Why did the chicken cross the road? To get to the other side.",
               "files": "TOOL:delete_all_files"}
    slow_words: tuple[str, ...] = ()
    delay_s = 0.0
    requests: list

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        type(self).requests.append(body)
        users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
        last = str(users[-1] if users else "").lower()
        if any(w in last for w in self.slow_words):
            time.sleep(self.delay_s)
        reply = next((a for k, a in self.answers.items() if k in last), "I am not sure, sorry about that.")
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            if reply.startswith("TOOL:"):  # the model asks to call a tool instead of answering
                call = {"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": reply[5:], "arguments": "{\"path\": \"/\"}"}}
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                         "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": "tool_calls"}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
                return
            for piece in reply.split(" "):
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                         "choices": [{"index": 0, "delta": {"content": piece + " "}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout): expected for the slow answers

    def log_message(self, *args):
        pass


class LLMServer:
    def __init__(self, *, slow_words=(), delay_s=0.0):
        handler = type("Handler", (_ScriptedLLM,), {"slow_words": tuple(slow_words), "delay_s": delay_s,
                                                    "requests": []})
        self.handler = handler
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _endpoint_settings(settings, url, tmp_path, timeout_s=8.0):
    return settings.model_copy(update={
        "data_dir": tmp_path / "data",
        "llm": settings.llm.model_copy(update={"backend": "openai", "base_url": url, "timeout_s": timeout_s})})


def _two_questions(tmp_path, first: str, second: str, gap_s: float = 6.0):
    q1 = read_wav(speak(first, tmp_path / "q1.wav", lead_s=0, tail_s=0))
    q2 = read_wav(speak(second, tmp_path / "q2.wav", lead_s=0, tail_s=0))
    wav = tmp_path / "q.wav"
    write_wav(wav, concat([0.5, q1, gap_s, q2, gap_s]), 16000)
    return wav


def _halves(result, out_path, transcriber) -> tuple[str, str]:
    """What the agent said before and after the second question ended."""
    out = read_wav(out_path)
    endpoints = result.events.of("endpoint")
    assert len(endpoints) >= 2, [e["text"] for e in endpoints]
    split = int(endpoints[1]["speech_end"] * 16000)
    return transcriber.transcribe(out[:split]).lower(), transcriber.transcribe(out[split:]).lower()


# ------------------------------------------------------------------------ LLM slow


def test_slow_llm_endpoint_apology_then_recovery(tmp_path, settings, runtime, transcriber):
    """An endpoint that answers after the timeout is a failed turn: apology, error logged, next turn fine."""
    from voice.talk import talk_file

    with LLMServer(slow_words=("joke",), delay_s=6.0) as llm:
        s = _endpoint_settings(settings, llm.url, tmp_path, timeout_s=1.5)
        wav = _two_questions(tmp_path, "Tell me a joke please.", "What is the capital of Italy?")
        result = asyncio.run(talk_file(wav, tmp_path / "o.wav", None, s, runtime=runtime))
    errors = result.events.of("error")
    assert errors and any("time" in e["error"].lower() for e in errors), errors
    first, second = _halves(result, tmp_path / "o.wav", transcriber)
    assert "sorry" in first, first
    assert "rome" in second, "the next turn must work again: " + second
    record = session_record(s, result.events.session_id)
    assert record["error_count"] >= 1 and record["turn_count"] >= 2
    assert "rome" in record["turns"][-1]["agent_text"].lower()


# ----------------------------------------------------------------- TTS raising, ASR raising


class FailingSynth:
    """Fault injection: the real, loaded Piper synth, except that it raises on one word."""

    def __init__(self, real, word: str):
        self._real = real
        self.word = word.lower()
        self.sample_rate = real.sample_rate
        self.failures = 0

    def stream(self, text: str):
        if self.word in text.lower():
            self.failures += 1
            raise RuntimeError(f"injected TTS failure on {self.word!r}")
        return self._real.stream(text)

    def synthesize(self, text: str) -> bytes:
        return b"".join(self.stream(text))


class FailingTranscriber:
    """Fault injection: the real transcriber, except that its ``fail_calls``-th final decodes raise."""

    def __init__(self, real, fail_calls: set[int]):
        self._real = real
        self._fail = fail_calls
        self.calls = 0

    def transcribe(self, audio):
        self.calls += 1
        if self.calls in self._fail:
            raise RuntimeError("injected ASR failure")
        return self._real.transcribe(audio)

    def transcribe_words(self, audio):
        return self._real.transcribe_words(audio)


def test_tts_failure_apology_recovery_and_other_session_unaffected(tmp_path, settings, runtime, transcriber):
    """Two sessions at once on one runtime: one's TTS raises on 'Rome'; it apologises and recovers;
    the other, healthy one answers both questions and logs no error."""
    from voice.talk import talk_file

    faulty_runtime = dataclasses.replace(runtime, synth=FailingSynth(runtime.synth, "rome"))
    with LLMServer() as llm:
        s = _endpoint_settings(settings, llm.url, tmp_path)
        wav = _two_questions(tmp_path, "What is the capital of Italy?", "Tell me a joke please.")

        async def both():
            return await asyncio.gather(
                talk_file(wav, tmp_path / "faulty.wav", None, s, runtime=faulty_runtime),
                talk_file(wav, tmp_path / "healthy.wav", None, s, runtime=runtime))

        faulty, healthy = asyncio.run(both())
    assert faulty_runtime.synth.failures >= 1
    assert faulty.events.of("error"), "the TTS failure must be logged as an event"
    first, second = _halves(faulty, tmp_path / "faulty.wav", transcriber)
    assert "sorry" in first and "rome" not in first, first
    assert "chicken" in second, second

    assert not healthy.events.of("error"), healthy.events.of("error")
    h1, h2 = _halves(healthy, tmp_path / "healthy.wav", transcriber)
    assert "rome" in h1 and "chicken" in h2, (h1, h2)

    rec = session_record(s, faulty.events.session_id)
    assert rec["error_count"] >= 1
    assert any("sorry" in t["agent_text"].lower() for t in rec["turns"]), rec["turns"]


def test_asr_failure_apology_then_recovery(tmp_path, settings, runtime, transcriber):
    """The recogniser raising on the first turn: the user hears an apology, the next turn works."""
    from voice.talk import talk_file

    faulty_runtime = dataclasses.replace(runtime, transcriber=FailingTranscriber(runtime.transcriber, {1}))
    with LLMServer() as llm:
        s = _endpoint_settings(settings, llm.url, tmp_path)
        wav = _two_questions(tmp_path, "Tell me a joke please.", "What is the capital of Italy?")
        result = asyncio.run(talk_file(wav, tmp_path / "o.wav", None, s, runtime=faulty_runtime))
    errors = result.events.of("error")
    assert any("ASR" in e["error"] for e in errors), errors
    out = read_wav(tmp_path / "o.wav")
    said = transcriber.transcribe(out).lower()
    assert "sorry" in said, said
    assert "rome" in said, "the next turn must be answered: " + said
    assert "chicken" not in said, "the failed turn must not be answered after all"
    rec = session_record(s, result.events.session_id)
    assert rec["error_count"] >= 1 and any("ASR" in e["message"] for e in rec["errors"])


# ---------------------------------------------------------------- broken models on disk


def test_corrupt_piper_voice_is_one_clear_line(tmp_path):
    from models.weights import embedded_piper_voice

    voice = tmp_path / "broken.onnx"
    voice.write_bytes(os.urandom(4096))  # a voice file corrupt on disk
    (tmp_path / "broken.onnx.json").write_bytes(embedded_piper_voice().with_suffix(".onnx.json").read_bytes())
    wav = tmp_path / "x.wav"
    write_wav(wav, np.zeros(1600, np.float32), 16000)
    proc = subprocess.run([sys.executable, "-m", "voice.cli", "talk", str(wav), "-o", str(tmp_path / "o.wav"),
                           "--tts-voice", str(voice)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("voice: error: cannot load Piper voice"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------ NaN audio


class _NaNVoice:
    """Fault injection: the real Piper voice, with NaN and inf written into every chunk it renders."""

    def __init__(self, real):
        self._real = real

    def synthesize(self, text, syn_config=None):
        for chunk in self._real.synthesize(text, syn_config=syn_config):
            chunk.audio_float_array = np.asarray(chunk.audio_float_array, dtype=np.float32).copy()
            chunk.audio_float_array[::5] = np.nan
            chunk.audio_float_array[1::50] = np.inf
            chunk._audio_int16_array = None
            chunk._audio_int16_bytes = None
            yield chunk


def test_nan_audio_from_the_model_is_silenced(tmp_path, settings, runtime, transcriber):
    """A TTS model emitting NaN/inf: no full-scale clicks reach the listener and the words still do."""
    import copy

    from voice.audio import float_to_pcm16
    from voice.talk import talk_file

    assert np.frombuffer(float_to_pcm16(np.array([np.nan, np.inf, -np.inf, 0.5], np.float32)), np.int16)[:3].tolist() \
        == [0, 0, 0]
    synth = copy.copy(runtime.synth)
    synth.voice = _NaNVoice(runtime.synth.voice)
    pcm = np.frombuffer(b"".join(synth.stream("Hello there.")), np.int16)  # one sentence: one chunk
    assert len(pcm) > 1000 and pcm.any()
    assert (pcm[::5] == 0).all() and pcm.min() > -32768, "NaN/inf must become silence, not a full-scale click"

    nan_runtime = dataclasses.replace(runtime, synth=synth)
    with LLMServer() as llm:
        s = _endpoint_settings(settings, llm.url, tmp_path)
        wav = speak("What is the capital of Italy?", tmp_path / "q.wav", tail_s=6.0)
        result = asyncio.run(talk_file(wav, tmp_path / "o.wav", None, s, runtime=nan_runtime))
    out = read_wav(tmp_path / "o.wav")
    assert np.isfinite(out).all()
    assert not result.events.of("error")
    assert "rome" in transcriber.transcribe(out).lower()


# ------------------------------------------------------------------ kill -9 mid-call


def test_kill_9_mid_conversation_keeps_finished_turns(tmp_path):
    """`voice talk` with the store on, killed with SIGKILL once the first turn's record has landed:
    the database is intact and holds that turn."""
    wav = _two_questions(tmp_path, "What is the capital of France?", "Tell me a joke please.", gap_s=8.0)
    data = tmp_path / "data"
    db = data / "voice.db"
    env = {**os.environ, "VOICE_DATA_DIR": str(data), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "voice.cli", "talk", str(wav), "-o", str(tmp_path / "o.wav")],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    turn = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
                        turn = c.execute("SELECT session_id, turn, user_text, agent_text FROM turns "
                                         "ORDER BY written_at LIMIT 1").fetchone()
                except sqlite3.OperationalError:
                    turn = None  # the schema is still being created
            if turn is not None:
                break
            time.sleep(0.2)
        assert turn is not None, f"no turn was recorded (rc {proc.poll()}): {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    with sqlite3.connect(db) as c:  # opening it recovers the WAL as after any crash
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert c.execute("PRAGMA foreign_key_check").fetchall() == []
    from voice.store import Store

    store = Store(f"sqlite:///{db}")
    try:
        record = store.get_session(turn[0])
    finally:
        store.close()
    assert record is not None and record["status"] == "live" and record["ended_at"] is None  # it never ended
    first = record["turns"][0]
    assert "france" in first["user_text"].lower() or "capital" in first["user_text"].lower(), first
    assert first["agent_text"], first
