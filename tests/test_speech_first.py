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
    assert gate.wait_turn() is True  # nothing to wait for
    with gate.speaking():
        assert gate.wait_turn() is False  # bounded: gives up although speech is still running
    assert gate.wait_turn() is True


def test_leading_silence_is_cut_to_a_few_ms_and_speech_is_kept(runtime):
    rate = runtime.synth.sample_rate
    raw = np.frombuffer(_piper_raw(runtime.synth, "Hello there, how are you?")[0], np.int16)
    raw = raw.astype(np.float32) / 32768
    trimmed = trim_leading_silence(raw, rate)
    assert len(raw) - len(trimmed) < len(raw) // 4   # only the lead-in, never the speech, is removed
    assert np.array_equal(trimmed, raw[len(raw) - len(trimmed):])  # a cut at the front, nothing else
    assert _onset(trimmed, rate) <= LEAD_KEEP_S + 0.005
    # The synthesiser the pipeline uses applies it (Piper adds random noise, so another synthesis
    # is not sample-identical: check its onset).
    spoken = np.frombuffer(runtime.synth.synthesize("Hello there, how are you?"), np.int16).astype(np.float32) / 32768
    assert _onset(spoken, rate) <= LEAD_KEEP_S + 0.005


def _onset(audio: np.ndarray, rate: int) -> float:
    """Start of the first 5 ms window above -50 dBFS RMS (s)."""
    hop = int(rate * 0.005)
    n = len(audio) // hop
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1))
    return float(np.flatnonzero(rms > 10 ** (-50 / 20))[0] * hop / rate)


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
