"""Replay the live turn controller on recorded inputs, one 20 ms tick at a time.

The events are the controller's inputs with their arrival times (``at``, on the
input clock): from ``features.extract``, or read back from a live session's
event log (``voice talk --events``; ``from_event_log``). The replay calls the
same ``TurnController`` the pipeline does, in the pipeline's order: at every
frame end T the tick, then the VAD's events of that frame; a transcript or a
Smart Turn probability that arrived between two frames is handed over at the
earlier frame's time, which is what the turn processor's clock reads then.

Each pause is judged on its own, as eot-bench does: when the controller takes
the turn in a pause, the time is recorded and the controller is put back to
where it was before that tick, so it goes on listening as if it had not
(otherwise a false cut-off would change every later decision). Where the live
session would not have run Smart Turn (the text alone decides,
``TurnController.smart_turn_matters``), its probability is dropped.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from bench.endpoint.features import FRAME_S
from voice.turn.controller import State, TurnConfig, TurnController

_TAKES = ("commit", "confirm")


def _grid(t: float) -> float:
    """The last frame end at or before t (the turn processor's clock between frames)."""
    return math.floor(round(t / FRAME_S, 6)) * FRAME_S


def replay(events: list[dict[str, Any]], duration: float, config: TurnConfig,
           *, independent: bool = True) -> list[dict[str, Any]]:
    """Decisions to take the turn: ``[{"t", "speech_end", "text"}]``, in time order.

    ``independent``: judge each pause as if no earlier one had been taken (see
    the module docstring); False plays the controller straight through, as live.
    """
    state = {"c": TurnController(config), "decided_for": None}
    decisions: list[dict[str, Any]] = []

    def run(call, t: float) -> None:
        c = state["c"]
        # Only a paused user's turn can be taken: copy the controller only then.
        before = copy.copy(c) if independent and c.state == State.USER_PAUSED else None
        actions = call(c)
        if not any(a.kind in _TAKES for a in actions):
            return
        if not independent:
            decisions.append({"t": round(t, 4), "speech_end": before_end(actions), "text": taken_text(actions)})
            return
        # Listen on as if the turn had not been taken; the pause is decided once.
        assert before is not None, "a turn taken while the user was not paused"
        state["c"] = before
        if state["decided_for"] != before.speech_end:
            state["decided_for"] = before.speech_end
            decisions.append({"t": round(t, 4), "speech_end": before_end(actions), "text": taken_text(actions)})

    pending = sorted(events, key=lambda e: e["at"])
    k = 0
    vad_kinds = ("start", "stop", "pending")
    n_frames = int(math.ceil(round(duration / FRAME_S, 6)))
    for i in range(n_frames + 1):
        now = (i + 1) * FRAME_S
        # Analysis results that arrived before this frame ended, at the clock's reading then.
        while k < len(pending) and pending[k]["event"] not in vad_kinds and pending[k]["at"] < now - 1e-9:
            e, k = pending[k], k + 1
            t = max(_grid(e["at"]), i * FRAME_S)
            if e["event"] == "transcript":
                run(lambda c: c.on_transcript(t, e["text"], e.get("revision", k), e["audio_end"]), t)
            elif config.smart_turn_veto_p > 0 or state["c"].smart_turn_matters(state["c"].transcript):
                run(lambda c: c.on_turn_probability(t, e["p"], e["audio_end"]), t)
        run(lambda c: c.on_tick(now), now)
        # The VAD's events of this frame come after the tick (the VAD pushes the audio first).
        while k < len(pending) and pending[k]["event"] in vad_kinds and pending[k]["at"] <= now + 1e-9:
            e, k = pending[k], k + 1
            if e["event"] == "start":
                run(lambda c: c.on_speech_started(now, e["onset"]), now)
            elif e["event"] == "stop":
                run(lambda c: c.on_speech_stopped(now, e["end"]), now)
            else:
                run(lambda c: c.on_speech_pending(now, e["onset"]), now)
    return decisions


def before_end(actions) -> float:
    return next(a.data["speech_end"] for a in actions if a.kind in _TAKES)


def taken_text(actions) -> str:
    return next(a.text for a in actions if a.kind in _TAKES)


def decisions_by_pause(decisions: list[dict[str, Any]], pauses) -> dict[int, float]:
    """The first decision time in each pause: {pause index: t}."""
    out: dict[int, float] = {}
    for p in pauses:
        stop = p.resume if p.resume is not None else math.inf
        for d in decisions:
            if abs(d["speech_end"] - p.end) < 1e-6 and p.end <= d["t"] <= stop + FRAME_S:
                out[p.index] = d["t"]
                break
    return out


# ---------------------------------------------------------------- live event logs

def from_event_log(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(controller inputs, the live endpoint decisions) from a ``voice talk --events`` JSONL file."""
    inputs: list[dict[str, Any]] = []
    endpoints: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            e = json.loads(line)
            kind = e["event"]
            if kind == "user_speech_start" and "at" in e:
                inputs.append({"at": e["at"], "event": "start", "onset": e["t"]})
            elif kind == "user_speech_stop" and "at" in e:
                inputs.append({"at": e["at"], "event": "stop", "end": e["t"]})
            elif kind == "user_speech_pending":
                inputs.append({"at": e["t"], "event": "pending", "onset": e.get("onset")})
            elif kind == "asr_text":
                inputs.append({"at": e["t"], "event": "transcript", "text": e["text"],
                               "revision": e["revision"], "audio_end": e["audio_end"]})
            elif kind == "turn_probability":
                inputs.append({"at": e["t"], "event": "probability", "p": e["p"], "audio_end": e["audio_end"]})
            elif kind == "endpoint":
                endpoints.append({"t": e["t"], "speech_end": e["speech_end"], "text": e["text"]})
    return inputs, endpoints


