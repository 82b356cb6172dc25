"""The speech detector on real audio: starts, stops, and the undecided onset before a start."""

from __future__ import annotations

import numpy as np

from tests.conftest import concat, speak
from voice.audio import read_wav
from voice.vad import SpeechDetector


def _events(audio: np.ndarray) -> list[tuple[str, float | None]]:
    d = SpeechDetector(aggressiveness=2, threshold=0.5, start_s=0.12, stop_s=0.15)
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes()
    events = []
    for i in range(0, len(pcm), 640):  # 20 ms frames, as the transports deliver them
        events += d.process(pcm[i:i + 640])
    return events


def test_an_onset_is_pending_before_it_is_speech(tmp_path):
    words = read_wav(speak("What time is it in Tokyo?", tmp_path / "q.wav", lead_s=0, tail_s=0))
    events = _events(concat([0.5, words, 0.6]))
    kinds = [k for k, _ in events]
    assert "start" in kinds and "stop" in kinds
    start = kinds.index("start")
    # The start's onset was announced as pending first, with the same time.
    pending = [t for k, t in events[:start] if k == "pending"]
    assert pending and pending[-1] == events[start][1]
    assert 0.4 <= events[start][1] <= 0.7


def test_a_short_sound_is_pending_then_dropped_without_a_start(tmp_path):
    # 150 ms from the middle of a vowel: both detectors hear speech, but for less than start_s.
    vowel = read_wav(speak("Ah.", tmp_path / "ah.wav", lead_s=0, tail_s=0))
    mid = len(vowel) // 2
    blip = vowel[mid - 1200:mid + 1200]
    events = _events(concat([0.5, blip, 0.6]))
    assert [k for k, _ in events] == ["pending", "pending"]
    assert 0.5 <= events[0][1] <= 0.65 and events[1][1] is None
