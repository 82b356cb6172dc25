"""The endpointing benchmark: replay and metrics on hand-built event streams."""

from __future__ import annotations

import json
import math

import pytest

from bench.endpoint import sweep
from bench.endpoint.features import Pause, Recording, label_pause, turn_end_marks
from bench.endpoint.replay import decisions_by_pause, from_event_log, replay
from voice.turn.controller import TurnConfig


def turn_events(onset: float, end: float, text: str, *, p: float | None = None, asr_s: float = 0.1,
                stop_s: float = 0.16) -> list[dict]:
    """One stretch of speech and its pause-time analysis, as the live pipeline delivers them."""
    events = [{"at": onset + 0.12, "event": "start", "onset": onset},
              {"at": end + stop_s, "event": "stop", "end": end},
              {"at": end + stop_s + asr_s, "event": "transcript", "text": text, "audio_end": end + 0.15}]
    if p is not None:
        events.append({"at": end + stop_s + asr_s + 0.05, "event": "probability", "p": p, "audio_end": end})
    return events


def test_a_question_is_taken_after_the_short_wait():
    cfg = TurnConfig(backchannels=False)
    events = turn_events(0.5, 2.0, "What time is it?")
    decisions = replay(events, 5.0, cfg)
    assert len(decisions) == 1
    d = decisions[0]
    assert d["speech_end"] == 2.0 and d["text"] == "What time is it?"
    # The first 20 ms tick at or after end + endpoint_silence_s.
    assert d["t"] == pytest.approx(2.0 + cfg.endpoint_silence_s, abs=0.021)


def test_a_pause_after_an_unfinished_clause_is_held_through():
    cfg = TurnConfig(backchannels=False)
    events = (turn_events(0.5, 2.0, "Yesterday I went to the") + [{"at": 3.0, "event": "pending", "onset": 3.0}]
              + turn_events(3.0, 4.0, "Yesterday I went to the market."))
    decisions = replay(events, 8.0, cfg)
    assert [d["speech_end"] for d in decisions] == [4.0]
    assert decisions[0]["t"] >= 4.0 + cfg.statement_wait_s - 1e-6


def test_independent_replay_judges_every_pause_after_a_cut_off():
    # A complete-looking statement, then 1.6 s of silence, then more: the controller cuts in
    # (statement wait 1.0 s), and the later turn end must still be judged on its own.
    cfg = TurnConfig(backchannels=False, monologue_wait_per_s=0.0)
    events = (turn_events(0.5, 2.0, "I went home.") + [{"at": 3.6, "event": "pending", "onset": 3.6}]
              + turn_events(3.6, 5.0, "I went home. Then I slept."))
    independent = replay(events, 9.0, cfg)
    assert [d["speech_end"] for d in independent] == [2.0, 5.0]
    assert independent[0]["t"] == pytest.approx(3.0, abs=0.021)
    assert independent[1]["t"] == pytest.approx(6.0, abs=0.021)
    # Played straight through, the cut-off makes the next speech a barge-in (a new turn).
    live = replay(events, 9.0, cfg, independent=False)
    assert live[0] == independent[0]


def test_smart_turn_is_dropped_where_the_live_pipeline_would_not_run_it():
    # With the veto on, Smart Turn's "not finished" turns a complete question into mixed evidence.
    events = turn_events(0.5, 2.0, "What time is it?", p=0.01)
    veto = TurnConfig(backchannels=False, smart_turn_veto_p=0.05)
    off = TurnConfig(backchannels=False, smart_turn_veto_p=0.0)
    assert replay(events, 6.0, veto)[0]["t"] == pytest.approx(2.0 + veto.mid_wait_s, abs=0.021)
    assert replay(events, 6.0, off)[0]["t"] == pytest.approx(2.0 + off.endpoint_silence_s, abs=0.021)


def test_decisions_are_assigned_to_their_pause():
    pauses = [Pause(0, 0, 2.0, 2.16, 3.0, "hold"), Pause(1, 0, 4.0, 4.16, None, "eot")]
    decisions = [{"t": 2.5, "speech_end": 2.0, "text": "a"}, {"t": 5.0, "speech_end": 4.0, "text": "b"}]
    assert decisions_by_pause(decisions, pauses) == {0: 2.5, 1: 5.0}
    # A decision after the user resumed does not count for that pause.
    assert decisions_by_pause([{"t": 3.5, "speech_end": 2.0, "text": "a"}], pauses) == {}


def test_score_counts_cut_offs_and_latency():
    pauses = [Pause(0, 0, 1.0, 1.16, 2.0, "hold"), Pause(1, 0, 3.0, 3.16, 3.5, "hold"),
              Pause(2, 0, 5.0, 5.16, 9.0, "eot"), Pause(3, 1, 10.0, 10.16, 12.0, "eot"),
              Pause(4, 1, 13.0, 13.16, None, None)]
    # Cuts into the first pause only; answers the turn ends after 0.4 s and never (charged 2 s).
    point = sweep.score("x", {}, pauses, {0: 1.5, 1: 3.6, 2: 5.4})
    assert point.cutoff_rate == 0.5 and point.cutoffs == 1 and point.n_hold == 2 and point.n_eot == 2
    assert point.mean_latency == pytest.approx((0.4 + 2.0) / 2)
    assert point.median_latency == pytest.approx(1.2)


def test_budgets_and_frontier():
    P = sweep.Point
    pts = [P("f", {"k": 1}, 0.50, 0.20, 0.2, 10, 5, 5), P("f", {"k": 2}, 0.20, 0.30, 0.3, 10, 5, 2),
           P("f", {"k": 3}, 0.25, 0.40, 0.4, 10, 5, 2), P("f", {"k": 4}, 0.05, 0.70, 0.7, 10, 5, 0),
           P("f", {"k": 5}, 0.00, 1.50, 1.5, 10, 5, 0)]
    assert [p.params["k"] for p in sweep.frontier(pts)] == [1, 2, 4, 5]
    assert sweep.cutoff_at_latency(pts, 0.3).params == {"k": 2}
    assert sweep.cutoff_at_latency(pts, 0.6).params == {"k": 2}
    assert sweep.cutoff_at_latency(pts, 0.1) is None
    assert sweep.latency_at_cutoff(pts, 0.05).params == {"k": 4}
    assert sweep.latency_at_cutoff(pts, 0.10).params == {"k": 4}
    assert sweep.latency_at_cutoff(pts, 0.0).params == {"k": 5}


def test_silence_policy_on_hand_built_pauses():
    rec = Recording("r", "pause_handling", 10.0, [], [
        Pause(0, 0, 1.0, 1.16, 1.5, "hold"), Pause(1, 0, 2.0, 2.16, 3.0, "hold"),
        Pause(2, 0, 4.0, 4.16, 9.0, "eot")])
    points = {p.params["wait"]: p for p in sweep.silence_points([rec])}
    assert points[0.4].cutoffs == 2 and points[0.4].mean_latency == pytest.approx(0.4)
    assert points[0.6].cutoffs == 1
    assert points[1.0].cutoffs == 0 and points[1.0].mean_latency == pytest.approx(1.0)
    # Never before the VAD has reported the pause.
    assert points[0.0].mean_latency == pytest.approx(0.16)


def test_labels_from_fdb_metadata():
    ends, onsets = turn_end_marks("smooth_turn_taking", [{"timestamp": [5.12, 11.2]}])
    assert (ends, onsets) == ([5.12], [])
    assert label_pause(5.18, None, ends, onsets) == "eot"        # the VAD ends a little after the label
    assert label_pause(3.76, 4.34, ends, onsets) == "hold"
    ends, onsets = turn_end_marks("user_interruption", [{"timestamp": [5.97, 7.22]}])
    assert label_pause(1.38, 5.94, ends, onsets) == "eot"        # the quiet before the interruption
    assert label_pause(7.38, None, ends, onsets) == "eot"
    assert label_pause(6.5, 6.8, ends, onsets) == "hold"
    assert label_pause(16.9, None, [], []) is None               # a pause set's last word: unknown


def test_event_log_round_trip(tmp_path):
    log = tmp_path / "events.jsonl"
    lines = [
        {"t": 0.5, "event": "user_speech_start", "at": 0.62},
        {"t": 0.5, "event": "user_speech_pending", "onset": 0.5},
        {"t": 2.0, "event": "user_speech_stop", "at": 2.16},
        {"t": 2.27, "event": "asr_text", "text": "What time is it?", "revision": 1, "audio_end": 2.15,
         "asr_time": 0.1},
        {"t": 2.46, "event": "endpoint", "text": "What time is it?", "speech_end": 2.0},
        {"t": 3.0, "event": "agent_audio_start"},
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    inputs, endpoints = from_event_log(log)
    assert [e["event"] for e in inputs] == ["start", "pending", "stop", "transcript"]
    assert endpoints == [{"t": 2.46, "speech_end": 2.0, "text": "What time is it?"}]
    replayed = replay(inputs, 4.0, TurnConfig(backchannels=False), independent=False)
    assert replayed[0]["t"] == pytest.approx(endpoints[0]["t"], abs=0.021)


def test_point_rates_are_nan_without_pauses():
    point = sweep.score("x", {}, [], {})
    assert math.isnan(point.cutoff_rate) and math.isnan(point.mean_latency)
