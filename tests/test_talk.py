"""End to end: real speech in, the agent's real speech out, checked by transcribing it back."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, concat, speak
from voice.audio import read_wav, write_wav
from voice.talk import talk_file

pytestmark = pytest.mark.slow


def _speech_spans(audio: np.ndarray, rate: int = 16000, thresh: float = 0.01) -> list[tuple[float, float]]:
    win = rate // 50
    n = len(audio) // win
    loud = np.sqrt(np.mean(audio[: n * win].reshape(n, win) ** 2, axis=1)) > thresh
    spans, start = [], None
    for i, v in enumerate(loud):
        if v and start is None:
            start = i
        elif not v and start is not None:
            spans.append((start / 50, i / 50))
            start = None
    if start is not None:
        spans.append((start / 50, n / 50))
    return spans


def test_question_gets_a_spoken_answer_time_synchronous(tmp_path, settings, runtime, transcriber):
    wav = speak("What is the capital of France?", tmp_path / "q.wav", voice="en-us+f3", tail_s=6.0)
    out, events_path = tmp_path / "out.wav", tmp_path / "events.jsonl"
    result = asyncio.run(talk_file(wav, out, events_path, settings, runtime=runtime))

    user = read_wav(wav)
    agent = read_wav(out)
    assert len(agent) >= len(user), "output must be at least as long as the input"
    user_end = _speech_spans(user)[-1][1]
    spans = _speech_spans(agent)
    assert spans, "the agent said nothing"
    assert spans[0][0] > user_end, "the agent must not start talking before the question ends"
    reply = transcriber.transcribe(agent[int(spans[0][0] * 16000):])
    assert len(reply.split()) >= 2, f"reply not intelligible: {reply!r}"

    lines = [json.loads(x) for x in events_path.read_text().splitlines()]
    kinds = [e["event"] for e in lines]
    for needed in ("user_speech_start", "user_speech_stop", "endpoint", "asr_text", "llm_first_token",
                   "tts_first_audio", "agent_audio_start", "turn_metrics"):
        assert needed in kinds, f"missing event {needed}"
    assert all("session" in e and "t" in e for e in lines)
    asr = [e for e in lines if e["event"] == "asr_text"][-1]["text"].lower()
    assert "capital" in asr and "france" in asr
    metrics = result.turn_metrics()[0]
    # Event times are on the input clock: agent audio starts after the user's speech ends.
    assert metrics["voice_to_voice"] > 0
    assert abs(metrics["voice_to_voice"] - (spans[0][0] - user_end)) < 0.5


def test_two_turns_keep_context_and_order(tmp_path, settings, runtime, transcriber):
    first = read_wav(speak("Hello, my name is Anna.", tmp_path / "a.wav", voice="en+f2", lead_s=0.3, tail_s=0))
    second = read_wav(speak("Can you tell me a fun fact about the ocean?", tmp_path / "b.wav", voice="en+f2", lead_s=0, tail_s=0))
    wav = tmp_path / "two.wav"
    write_wav(wav, concat([0.5, first, 6.0, second, 7.0]), 16000)
    result = asyncio.run(talk_file(wav, tmp_path / "out.wav", None, settings, runtime=runtime))
    endpoints = result.events.of("endpoint")
    assert len(endpoints) == 2
    assert "anna" in endpoints[0]["text"].lower()
    assert "ocean" in endpoints[1]["text"].lower()
    starts = result.events.of("agent_audio_start")
    assert len({e["turn"] for e in starts}) == 2, "each turn gets its own reply"
    assert len(result.events.of("agent_text")) >= 2


def test_silent_input_gives_silent_output_of_same_length(tmp_path, settings, runtime):
    from pipecat.processors.frame_processor import FrameProcessor

    class LiveCount(FrameProcessor):  # what the models see while the session runs
        seen: set[int] = set()

        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            self.seen.add(runtime.sessions.count)
            await self.push_frame(frame, direction)

    wav = tmp_path / "silence.wav"
    write_wav(wav, np.zeros(16000 * 3, np.float32), 16000)
    result = asyncio.run(talk_file(wav, tmp_path / "out.wav", None, settings, runtime=runtime, probe=LiveCount()))
    out = read_wav(tmp_path / "out.wav")
    assert abs(len(out) - 16000 * 3) <= 16000 * 0.05
    assert float(np.max(np.abs(out))) == 0.0
    assert not result.events.of("endpoint")
    assert LiveCount.seen == {1}, "the running session counts as live"
    assert runtime.sessions.count == 0, "and no longer once it ended"


def test_cli_talk_writes_output_and_events(tmp_path):
    wav = speak("How are you doing today?", tmp_path / "q.wav", voice="en-gb", rate=44100, tail_s=5.0)
    out, ev = tmp_path / "o.wav", tmp_path / "e.jsonl"
    proc = subprocess.run([sys.executable, "-m", "voice.cli", "talk", str(wav), "-o", str(out), "--events", str(ev)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "v2v" in proc.stdout and "agent said:" in proc.stdout
    assert out.exists() and ev.exists()
    assert len(read_wav(out)) >= len(read_wav(wav)) - 160
