"""A session record as JSON or as a readable transcript (``voice sessions export``)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from voice.store.recorder import METRICS


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def to_json(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, default=str)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def to_text(record: dict[str, Any]) -> str:
    r = record
    duration = "" if r.get("ended_at") is None else f" ({r['ended_at'] - r['started_at']:.1f}s)"
    lines = [
        f"session {r['id']}  {r.get('transport') or '?'} / {r.get('pipeline') or '?'}  {r['status']}",
        f"started {when(r['started_at'])}  ended {when(r.get('ended_at'))}{duration}",
    ]
    if r.get("caller") or r.get("callee"):
        lines.append(f"caller {r.get('caller') or '-'}  callee {r.get('callee') or '-'}")
    if r.get("audio_dir"):
        lines.append(f"audio {r['audio_dir']}")
    lines.append(f"{r['turn_count']} turns, {r['error_count']} errors")
    tools_by_turn: dict[Any, list[str]] = {}
    for c in r.get("tool_calls", []):
        outcome = "ok" if c["ok"] else "error"
        took = "" if c.get("seconds") is None else f" ({_ms(c['seconds'])})"
        tools_by_turn.setdefault(c["turn"], []).append(
            f"{c['name']} {c['arguments']} -> {outcome}{took}: {(c.get('result') or '')[:120]}")
    errors_by_turn: dict[Any, list[str]] = {}
    for e in r.get("errors", []):
        errors_by_turn.setdefault(e["turn"], []).append(e["message"])
    for t in r.get("turns", []):
        lines.append("")
        lines.append(f"[turn {t['turn']}]")
        if t["user_text"]:
            lines.append(f"  user:  {t['user_text']}")
        for call in tools_by_turn.pop(t["turn"], []):
            lines.append(f"  tool: {call}")
        if t["agent_text"]:
            flag = "  (interrupted)" if t["interrupted"] else ""
            lines.append(f"  agent: {t['agent_text']}{flag}")
        latencies = "  ".join(f"{k} {_ms(t.get(k))}" for k in METRICS if t.get(k) is not None)
        if latencies:
            lines.append(f"  latency: {latencies}")
        for msg in errors_by_turn.pop(t["turn"], []):
            lines.append(f"  error: {msg}")
    for turn, calls in tools_by_turn.items():
        for call in calls:
            lines.append(f"tool (turn {turn if turn is not None else '-'}): {call}")
    for turn, msgs in errors_by_turn.items():
        for msg in msgs:
            lines.append(f"error (turn {turn if turn is not None else '-'}): {msg}")
    return "\n".join(lines) + "\n"
