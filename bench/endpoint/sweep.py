"""Endpointing policies, swept: false cut-offs against latency (eot-bench's measures).

Every policy is judged at the same pauses (``features.Pause``):

- a ``hold`` pause is a **false cut-off** when the policy takes the turn before
  the user's next candidate onset;
- at an ``eot`` pause the **latency** is the silence from the VAD's end of speech
  to the decision (dead air, including the VAD's own stop time and the analysis
  the policy waits for); a policy that has not decided by the time the silence
  ends is charged the whole silence.

A policy family is swept over its knobs; each setting is one operating point
(mean latency, false cut-off rate). Reported, as eot-bench does: the false
cut-off rate at a latency budget (the lowest rate among settings whose mean
latency is within it) and the latency at a cut-off budget, plus the frontier.

Families:
- ``silence``: take the turn after a fixed silence (the VAD alone);
- ``smart_turn``: Smart Turn v3.2 alone, eot-bench's three knobs: its
  probability at or over ``threshold`` takes the turn once ``action_delay`` of
  silence has passed and the model has answered, else ``timeout``;
- ``text``: the transcript's completeness cues alone (``voice.turn.completeness``),
  same three knobs;
- ``lm``: a language model's end-of-utterance probability alone
  (``bench.endpoint.lm``), same three knobs;
- ``controller``: our ``TurnController``, replayed tick by tick
  (``replay.replay``) over a grid of its own settings.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from bench.endpoint.features import Pause, Recording
from bench.endpoint.replay import decisions_by_pause, replay
from voice.turn.completeness import completeness
from voice.turn.controller import TurnConfig

LATENCY_BUDGETS = (0.3, 0.6)
CUTOFF_BUDGETS = (0.05, 0.10)


@dataclass
class Point:
    family: str
    params: dict[str, Any]
    cutoff_rate: float
    mean_latency: float
    median_latency: float
    n_hold: int
    n_eot: int
    cutoffs: int


def score(family: str, params: dict[str, Any], pauses: list[Pause], fire: dict[int, float]) -> Point:
    """One operating point from the decision time of each pause ({pause index: t}; absent = never)."""
    holds = [p for p in pauses if p.label == "hold"]
    eots = [p for p in pauses if p.label == "eot"]
    cutoffs = sum(1 for p in holds if p.index in fire and fire[p.index] < p.resume - 1e-9)
    lat = []
    for p in eots:
        limit = (p.resume - p.end) if p.resume is not None else math.inf
        t = fire.get(p.index)
        lat.append(min(limit, t - p.end) if t is not None else limit)
    lat = [x for x in lat if math.isfinite(x)]
    return Point(family, params, cutoffs / len(holds) if holds else math.nan,
                 statistics.fmean(lat) if lat else math.nan, statistics.median(lat) if lat else math.nan,
                 len(holds), len(eots), cutoffs)


Table = dict[tuple[str, int], float]  # (recording name, pause index) -> decision time


def score_table(family: str, params: dict[str, Any], recs: list[Recording], table: Table) -> Point:
    """``score`` over every labelled pause of ``recs``, the decisions keyed by recording and pause."""
    pauses, fire = [], {}
    for r in recs:
        for p in r.pauses:
            if p.label is None:
                continue
            q = replace(p, index=len(pauses))
            pauses.append(q)
            if (r.name, p.index) in table:
                fire[q.index] = table[(r.name, p.index)]
    return score(family, params, pauses, fire)


def policy_table(recs: list[Recording], fire_at: Callable[[Pause], float]) -> Table:
    return {(r.name, p.index): fire_at(p) for r in recs for p in r.pauses if p.label is not None}


def fire_table(recs: list[Recording], config: TurnConfig) -> Table:
    """When the replayed controller takes the turn in each pause (absent: it does not)."""
    table = {}
    for r in recs:
        for index, t in decisions_by_pause(replay(r.events, r.duration, config), r.pauses).items():
            table[(r.name, index)] = t
    return table


def _threshold_policy(recs: list[Recording], family: str, score_of: Callable[[Pause], float | None],
                      ready_at: Callable[[Pause], float]) -> list[Point]:
    points = []
    for threshold, delay, timeout in itertools.product(
            [round(0.05 * k, 2) for k in range(1, 20)], (0.0, 0.1, 0.2, 0.3, 0.5, 0.8),
            (1.0, 1.5, 2.0, 2.5, 3.0)):
        def fire_at(p: Pause) -> float:
            s = score_of(p)
            if s is not None and s >= threshold:
                return max(p.end + delay, ready_at(p))
            return max(p.end + timeout, p.stop_at)

        points.append(score_table(family, {"threshold": threshold, "action_delay": delay, "timeout": timeout},
                                  recs, policy_table(recs, fire_at)))
    return points


def silence_points(recs: list[Recording]) -> list[Point]:
    points = []
    for k in range(0, 60):
        wait = round(0.05 * k, 2)
        table = policy_table(recs, lambda p: max(p.end + wait, p.stop_at))
        points.append(score_table("silence", {"wait": wait}, recs, table))
    return points


def smart_turn_points(recs: list[Recording]) -> list[Point]:
    # Alone, Smart Turn runs as soon as the VAD reports the pause (no transcript to wait for).
    return _threshold_policy(recs, "smart_turn", lambda p: p.smart_p, lambda p: p.stop_at + p.smart_s)


def text_points(recs: list[Recording]) -> list[Point]:
    return _threshold_policy(recs, "text", lambda p: completeness(p.text) if p.text.strip() else None,
                             lambda p: p.stop_at + p.asr_s)


def lm_points(recs: list[Recording]) -> list[Point]:
    # Scored after the transcript, on the analysis thread's queue like Smart Turn.
    return _threshold_policy(recs, "lm", lambda p: p.lm_p, lambda p: p.stop_at + p.asr_s + p.lm_s)


# The controller's waits, scaled together; and its fusion settings.
WAIT_FIELDS = ("endpoint_silence_s", "statement_wait_s", "mid_wait_s", "max_wait_s", "monologue_max_wait_s",
               "monologue_wait_per_s")
CONTROLLER_GRID = {
    "scale": (0.2, 0.3, 0.4, 0.55, 0.7, 0.85, 1.0, 1.2, 1.4, 1.7, 2.0),
    "smart_turn_veto_p": (0.0, 0.05),
    "smart_turn_confident_p": (1.01, 0.95, 0.8, 0.6, 0.4),
}


def controller_config(base: TurnConfig, scale: float = 1.0, **overrides: Any) -> TurnConfig:
    scaled = {f: getattr(base, f) * scale for f in WAIT_FIELDS}
    return replace(base, **{**scaled, **overrides})


def controller_points(recs: list[Recording], base: TurnConfig,
                      grid: dict[str, tuple] | None = None) -> list[Point]:
    grid = grid or CONTROLLER_GRID
    names = list(grid)
    points = []
    for values in itertools.product(*(grid[n] for n in names)):
        params = dict(zip(names, values))
        overrides = {k: v for k, v in params.items() if k != "scale"}
        cfg = controller_config(base, params.get("scale", 1.0), **overrides)
        points.append(score_table("controller", params, recs, fire_table(recs, cfg)))
    return points


def default_point(recs: list[Recording], base: TurnConfig) -> Point:
    params = {f.name: getattr(base, f.name) for f in fields(base)
              if f.name in WAIT_FIELDS + ("smart_turn_weight", "smart_turn_veto_p", "smart_turn_confident_p")}
    return score_table("controller (settings)", params, recs, fire_table(recs, base))


def frontier(points: list[Point]) -> list[Point]:
    """The Pareto frontier: no other point has both fewer cut-offs and less latency."""
    ok = [p for p in points if not math.isnan(p.cutoff_rate) and not math.isnan(p.mean_latency)]
    ok.sort(key=lambda p: (p.mean_latency, p.cutoff_rate))
    out, best = [], math.inf
    for p in ok:
        if p.cutoff_rate < best - 1e-12:
            out.append(p)
            best = p.cutoff_rate
    return out


def cutoff_at_latency(points: list[Point], budget: float) -> Point | None:
    ok = [p for p in points if p.mean_latency <= budget + 1e-9]
    return min(ok, key=lambda p: (p.cutoff_rate, p.mean_latency)) if ok else None


def latency_at_cutoff(points: list[Point], budget: float) -> Point | None:
    ok = [p for p in points if p.cutoff_rate <= budget + 1e-9]
    return min(ok, key=lambda p: (p.mean_latency, p.cutoff_rate)) if ok else None
