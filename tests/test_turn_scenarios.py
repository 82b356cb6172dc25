"""Turn-taking with real synthesized speech through `voice talk`: when the agent speaks and when not."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.conftest import concat, speak
from voice.audio import read_wav, write_wav
from voice.talk import talk_file

pytestmark = pytest.mark.slow
RATE = 16000


def _say(tmp_path, name, text, voice="en-us+m3", speed=160):
    return read_wav(speak(text, tmp_path / f"{name}.wav", voice=voice, speed=speed, lead_s=0, tail_s=0))


def _agent_spans(audio, thresh=0.01, hop=320, min_gap=0.25):
    n = len(audio) // hop
    loud = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1)) > thresh
    spans, start, quiet = [], None, 0
    for i, v in enumerate(loud):
        if v:
            if start is None:
                start = i
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet * hop / RATE >= min_gap:
                spans.append((start * hop / RATE, (i - quiet + 1) * hop / RATE))
                start, quiet = None, 0
    if start is not None:
        spans.append((start * hop / RATE, n * hop / RATE))
    return spans


def _run(tmp_path, audio, settings, runtime, **kw):
    wav = tmp_path / "in.wav"
    write_wav(wav, audio, RATE)
    result = asyncio.run(talk_file(wav, tmp_path / "out.wav", tmp_path / "events.jsonl", settings,
                                   runtime=runtime, **kw))
    return result, read_wav(tmp_path / "out.wav")


def test_mid_sentence_pause_is_not_a_turn_end(tmp_path, settings, runtime):
    a = _say(tmp_path, "a", "I want to order a large pizza with mushrooms and")
    b = _say(tmp_path, "b", "extra cheese for tonight please.")
    audio = concat([0.5, a, 1.5, b, 5.0])
    result, out = _run(tmp_path, audio, settings, runtime)
    pause = (0.5 + len(a) / RATE, 0.5 + len(a) / RATE + 1.5)
    spans = _agent_spans(out)
    assert not any(s < pause[1] for s, _ in spans), f"the agent spoke in the user's pause: {spans}"
    endpoints = result.events.of("endpoint")
    assert len(endpoints) == 1 and "cheese" in endpoints[0]["text"].lower()
    assert spans, "and answered once the user finished"


def test_monologue_gets_backchannels_and_no_takeover(tmp_path, settings, runtime):
    sentences = [
        "Last summer my sister and I drove all the way up the coast to visit our grandparents.",
        "The first day we got stuck in traffic for almost three hours near the bridge.",
        "Then the car started making a strange noise so we stopped at a small garage.",
        "The mechanic was really friendly and fixed it in about twenty minutes.",
        "By the time we arrived it was dark and everyone had already eaten dinner.",
    ]
    parts: list = [0.5]
    for i, s in enumerate(sentences):
        parts += [_say(tmp_path, f"s{i}", s, voice="en-us+f3", speed=170), 0.8]
    audio = concat(parts)
    end_of_monologue = len(audio) / RATE - 0.8
    result, out = _run(tmp_path, concat([audio, 0.2]), settings, runtime, max_tail_s=0.0)
    spans = [sp for sp in _agent_spans(out) if sp[0] < end_of_monologue]
    assert result.events.of("backchannel"), "a long turn gets at least one acknowledgement"
    assert all(e - s <= 1.0 for s, e in spans), f"only short acknowledgements during the monologue: {spans}"
    assert not [e for e in result.events.of("endpoint") if e["t"] < end_of_monologue]


def test_interruption_stops_agent_and_gets_answered(tmp_path, settings, runtime, transcriber):
    q = _say(tmp_path, "q", "Can you tell me a long story about a dragon and a knight?")
    interrupt = _say(tmp_path, "i", "Wait, stop. What is the capital of Spain?", voice="en-us+f3")
    at = 0.5 + len(q) / RATE + 2.6  # well inside the agent's reply
    audio = concat([0.5, q, 2.6, interrupt, 6.0])
    result, out = _run(tmp_path, audio, settings, runtime)
    barge = result.events.of("barge_in")
    assert barge, "user speech over the agent must stop it"
    # The agent is silent for the rest of the interruption (its queued audio was flushed).
    during = out[int((at + 0.5) * RATE): int((at + len(interrupt) / RATE) * RATE)]
    assert float(np.sqrt(np.mean(during ** 2))) < 0.01
    last = result.events.of("endpoint")[-1]
    assert "spain" in last["text"].lower()
    reply = out[int((at + len(interrupt) / RATE) * RATE):]
    assert len(transcriber.transcribe(reply).split()) >= 2, "and answers the interruption"


def test_backchannel_over_agent_is_a_false_interruption_and_agent_resumes(tmp_path, settings, runtime):
    q = _say(tmp_path, "q", "Tell me how to make a cup of tea.")
    yeah = _say(tmp_path, "y", "yeah", voice="en-us+f3")
    audio = concat([0.5, q, 2.4, yeah, 6.0])
    result, out = _run(tmp_path, audio, settings, runtime)
    if not result.events.of("barge_in"):
        pytest.skip("the agent had already finished before the 'yeah'")
    false = result.events.of("false_interruption")
    assert false, "a lone 'yeah' is not a bid for the turn"
    assert len(result.events.of("endpoint")) == 1, "no new user turn was answered"
    yeah_end = 0.5 + len(q) / RATE + 2.4 + len(yeah) / RATE
    assert any(s > yeah_end for s, _ in _agent_spans(out)), "the agent carries on after it"


def test_echo_guard_keeps_agent_from_interrupting_itself(tmp_path, settings, runtime):
    q = _say(tmp_path, "q", "What is a good recipe for pancakes?")
    audio = concat([0.5, q, 7.0])
    unguarded, _ = _run(tmp_path, audio, settings, runtime, simulate_echo_db=-10.0, max_tail_s=2.0)
    guarded, out = _run(tmp_path, audio, settings, runtime, simulate_echo_db=-10.0, echo_guard=True)
    assert unguarded.events.of("barge_in"), "without the guard the agent's own voice barges in"
    assert not guarded.events.of("barge_in"), "with the guard it does not"
    assert guarded.events.of("agent_text")
