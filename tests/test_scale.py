"""Per-process sharing and the load benchmark's audio measures."""

from __future__ import annotations

import numpy as np

from bench.load import voice_to_voice
from voice.settings import load_settings, redacted
from voice.vad import SpeechDetector, shared_silero


def test_sessions_share_one_silero_session_with_their_own_state():
    a, b = shared_silero(), shared_silero()
    assert a.session is b.session
    rng = np.random.default_rng(0)
    speechy = (0.3 * np.sin(2 * np.pi * 220 * np.arange(512) / 16000)).astype(np.float32)[None, :]
    for _ in range(20):
        a(speechy, 16000)
    assert not np.array_equal(a._state, b._state)  # b never ran: its LSTM state is still zero
    assert not b._state.any()
    noise = (0.01 * rng.standard_normal((1, 512))).astype(np.float32)
    b(noise, 16000)
    d1 = SpeechDetector(aggressiveness=2, threshold=0.5, start_s=0.12, stop_s=0.15)
    d2 = SpeechDetector(aggressiveness=2, threshold=0.5, start_s=0.12, stop_s=0.15)
    assert d1._silero.session is d2._silero.session is a.session


def test_voice_to_voice_reads_the_audio():
    rate = 16000
    out = np.zeros(rate * 10, np.float32)
    out[int(2.5 * rate):int(3.5 * rate)] = 0.2  # reply to the first question, 0.5 s after it ends
    spans = [(1.0, 2.0), (5.0, 6.0)]  # the second question gets no reply
    assert voice_to_voice(out, spans) == [0.5, None]


def test_livekit_secret_is_redacted():
    s = load_settings(livekit={"url": "ws://h:7880", "api_key": "k", "api_secret": "shh"})
    assert s.livekit.enabled
    assert redacted(s)["livekit"]["api_secret"] == "***"
    assert not load_settings().livekit.enabled
