"""Speech first: the LLM yields the CPU to a running synthesis; Piper's leading silence is cut."""

from __future__ import annotations

import threading

import numpy as np

from models.cpu import SpeechFirst
from models.tts import LEAD_KEEP_S, trim_leading_silence


def test_llm_waits_while_a_synthesis_runs_and_goes_on_after_it():
    gate = SpeechFirst(max_wait_s=30.0)
    order: list[str] = []
    synthesis_started = threading.Event()
    release = threading.Event()

    def synthesis():
        with gate.speaking():
            synthesis_started.set()
            release.wait(10)
            order.append("synthesis done")

    def llm_token():
        gate.wait_turn()
        order.append("next token")

    t1 = threading.Thread(target=synthesis)
    t1.start()
    synthesis_started.wait(10)
    t2 = threading.Thread(target=llm_token)
    t2.start()
    t2.join(0.2)
    assert order == []  # the token waits for the synthesis
    release.set()
    t1.join(10)
    t2.join(10)
    assert order == ["synthesis done", "next token"]


def test_llm_never_waits_without_synthesis_and_a_stuck_one_cannot_starve_it():
    gate = SpeechFirst(max_wait_s=0.05)
    gate.wait_turn()  # returns at once
    with gate.speaking():
        gate.wait_turn()  # bounded: returns after max_wait_s although speech is still running


def test_leading_silence_is_cut_to_a_few_ms_and_speech_is_kept(runtime):
    rate = runtime.synth.sample_rate
    raw = np.concatenate([np.frombuffer(c, np.int16) for c in _piper_raw(runtime.synth, "Hello there, how are you?")])
    raw = raw.astype(np.float32) / 32768
    trimmed = np.frombuffer(runtime.synth.synthesize("Hello there, how are you?"), np.int16).astype(np.float32) / 32768
    assert 0 < len(raw) - len(trimmed) < len(raw) // 4   # something, not the speech, was removed
    assert np.array_equal(np.round(trimmed[-1000:], 3), np.round(raw[-1000:], 3))  # same speech tail
    # The first 5 ms window above -50 dBFS now starts within LEAD_KEEP_S (+ one window) of the start.
    again = trim_leading_silence(trimmed, rate)
    assert len(trimmed) - len(again) <= int(rate * (LEAD_KEEP_S + 0.005))


def test_trim_keeps_silent_and_empty_audio_unchanged():
    assert len(trim_leading_silence(np.zeros(0, np.float32), 22050)) == 0
    quiet = np.zeros(22050, np.float32)
    assert len(trim_leading_silence(quiet, 22050)) == len(quiet)


def _piper_raw(synth, text: str) -> list[bytes]:
    """Piper's own output, untrimmed, for comparison."""
    out = []
    for chunk in synth.voice.synthesize(text, syn_config=synth._syn):
        out.append((np.clip(np.nan_to_num(chunk.audio_float_array), -1, 1) * 32767).astype(np.int16).tobytes())
    return out
