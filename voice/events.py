"""Structured per-session events on the input clock.

Every event carries the session id, the turn id (when there is one) and ``t``:
seconds since the session's first input audio frame. Events go to loguru (one
structured line each), to an optional JSONL file, and to any listeners (the
browser's data channel, the session store).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from loguru import logger


def new_session_id() -> str:
    return uuid.uuid4().hex[:12]


class SessionClock:
    """The input clock: starts at the first input frame, advances with wall time."""

    def __init__(self) -> None:
        self._t0: float | None = None

    def start(self, at: float | None = None) -> None:
        if self._t0 is None:
            self._t0 = time.monotonic() if at is None else at

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def now(self) -> float:
        if self._t0 is None:
            return 0.0
        return time.monotonic() - self._t0


class EventLog:
    def __init__(self, session_id: str, clock: SessionClock | None = None,
                 jsonl_path: str | Path | None = None) -> None:
        self.session_id = session_id
        self.clock = clock or SessionClock()
        self.events: list[dict[str, Any]] = []
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._file: TextIO | None = None
        if jsonl_path is not None:
            Path(jsonl_path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(jsonl_path, "w", encoding="utf-8")

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self._listeners.append(listener)

    def emit(self, kind: str, *, turn: int | None = None, t: float | None = None, **fields: Any) -> dict[str, Any]:
        event = {"t": round(self.clock.now() if t is None else t, 4), "event": kind,
                 "session": self.session_id, "turn": turn, **fields}
        self.events.append(event)
        logger.bind(session=self.session_id, turn=turn).info(
            "{event} {fields}", event=kind, fields=json.dumps(fields, default=str))
        if self._file is not None:
            self._file.write(json.dumps(event, default=str) + "\n")
            self._file.flush()
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception as e:  # a broken listener must not break the audio path
                logger.warning(f"event listener failed: {e}")
        return event

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
