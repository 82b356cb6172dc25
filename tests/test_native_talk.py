"""The native engine behind the same pipeline, through `voice talk`, with tiny random models."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.conftest import speak
from voice.audio import read_wav
from voice.talk import talk_file

pytestmark = pytest.mark.slow


def _native(settings, spec):
    return settings.model_copy(update={"pipeline": "native",
                                       "native": settings.native.model_copy(update={"model": spec})})


def _first_loud(audio, thresh=1e-4, hop=160):
    n = len(audio) // hop
    loud = np.flatnonzero(np.abs(audio[: n * hop]).reshape(n, hop).max(axis=1) > thresh)
    return loud[0] * hop / 16000 if len(loud) else None


def test_moshi_tiny_streams_frame_by_frame_on_the_input_clock(tmp_path, settings):
    wav = speak("Hello there, how are you?", tmp_path / "q.wav", tail_s=1.0)
    result = asyncio.run(talk_file(wav, tmp_path / "o.wav", tmp_path / "e.jsonl", _native(settings, "moshi:tiny")))
    user, agent = read_wav(wav), read_wav(tmp_path / "o.wav")
    assert len(user) <= len(agent) <= len(user) + int(2.6 * 16000)
    # Full duplex: the model answers every 80 ms frame from the start, not after the turn.
    start = _first_loud(agent)
    assert start is not None and start < 1.0
    kinds = {e["event"] for e in result.events.events}
    assert {"user_speech_start", "asr_text", "agent_audio_start"} <= kinds


def test_mini_omni_tiny_answers_after_the_turn_ends(tmp_path, settings):
    wav = speak("What is your favourite colour?", tmp_path / "q.wav", tail_s=3.0)
    result = asyncio.run(talk_file(wav, tmp_path / "o.wav", tmp_path / "e.jsonl", _native(settings, "mini-omni:tiny")))
    agent = read_wav(tmp_path / "o.wav")
    endpoint = result.events.of("endpoint")[0]
    start = _first_loud(agent)
    assert start is not None and start >= endpoint["speech_end"], "half duplex: it speaks after the user"
    replies = result.events.of("native_reply_start")
    assert len(replies) == 1
    first = result.events.of("native_first_audio")[0]
    print(f"mini-omni:tiny first audio {first['latency_s']}s after the turn end")
