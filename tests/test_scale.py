"""Per-process sharing and the load benchmark's audio measures."""

from __future__ import annotations

import numpy as np

from bench.load import _statement_waits, verdict, voice_to_voice
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


def test_load_report_separates_questions_heard_as_statements():
    """A question taken only after the statement wait counts apart; the plain p90 still counts it."""
    rows = [
        {"v2v": [0.7, 1.33, 0.8], "endpoint_delays": [0.46, 1.22, 0.46]},  # the second heard as a statement
        {"v2v": [0.9, 1.0], "endpoint_delays": [0.46, 0.46]},
        {"v2v": [0.6, 0.7], "endpoint_delays": [0.46]},  # an agent turn short: not paired, left out
    ]
    out = _statement_waits(rows)
    assert out["held_as_statements"] == 1 and out["paired_questions"] == 5
    assert out["v2v_p90_question_wait"] == round(float(np.percentile([0.7, 0.8, 0.9, 1.0], 90)), 3)
    assert _statement_waits([{"v2v": [0.7]}]) == {}  # no agent-side metrics: nothing to say


def _level(transport, n, p90, rss, answered=12):
    return {"transport": transport, "n": n, "v2v_p90": p90, "peak_rss_mb": rss, "answered": answered,
            "questions": 12, "late_input_pct": 0, "late_output_pct": 0}


def test_load_verdict_against_the_target():
    results = [_level("inproc", 1, 0.8, 1000), _level("inproc", 2, 0.9, 1020), _level("inproc", 4, 1.1, 1090),
               _level("webrtc", 1, 0.9, 1000), _level("webrtc", 4, 1.29, 1080),
               _level("other", 1, 0.8, 1000), _level("other", 4, 1.0, 1300)]
    v = verdict(results)
    assert v["inproc"]["met"] is True and v["inproc"]["largest_n_within_p90"] == 4
    assert v["inproc"]["line"] == "met at N=4: p90 1.1 s, 30.0 MB per extra session"
    assert v["webrtc"]["met"] is False and v["webrtc"]["largest_n_within_p90"] == 1
    assert v["other"]["met"] is False  # fast enough, but 100 MB per extra session
    broke = verdict([_level("webrtc", 1, 0.9, 1000), _level("webrtc", 2, 2.5, 1010)])
    assert broke["webrtc"]["met"] is False and "real time broke at N=2" in broke["webrtc"]["line"]
    assert verdict([_level("webrtc", 1, 0.9, 1000)])["webrtc"]["met"] is None
