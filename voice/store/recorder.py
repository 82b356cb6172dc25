"""SessionRecorder: a session's EventLog, turned into its record, turn by turn.

It subscribes to the session's :class:`voice.events.EventLog`, so every
transport (browser, phone, file, worker) is recorded the same way. Writes go
through the store's writer thread; a turn is written when it is finished:

* the reply finished playing (``agent_audio_stop``),
* the user barged in on it (``barge_in``: it is written as interrupted),
* the next turn ended (``endpoint`` of a later turn), or the session ended.

A turn that changes after it was written (a false interruption resumed its
reply) is written again. Errors are written when they happen. So a crash
loses at most the turn in flight.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from voice.store.writer import StoreWriter

METRICS = ("endpoint_delay", "asr_time", "llm_ttft", "tts_first_audio", "voice_to_voice")


@dataclass
class _Turn:
    turn: int
    user_text: str = ""
    agent_parts: list[str] = field(default_factory=list)
    interrupted: bool = False
    false_interruptions: int = 0
    speech_end: float | None = None
    endpoint_t: float | None = None
    agent_start_t: float | None = None
    agent_end_t: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    errors: int = 0
    dirty: bool = True

    def row(self) -> dict[str, Any]:
        return dict(user_text=self.user_text, agent_text=" ".join(p.strip() for p in self.agent_parts if p.strip()),
                    interrupted=self.interrupted, false_interruptions=self.false_interruptions,
                    speech_end=self.speech_end, endpoint_t=self.endpoint_t, agent_start_t=self.agent_start_t,
                    agent_end_t=self.agent_end_t, errors=self.errors,
                    **{k: self.metrics.get(k) for k in METRICS})


class SessionRecorder:
    """Subscribe with ``events.subscribe(recorder)``; call :meth:`close` when the session is over."""

    def __init__(self, writer: StoreWriter, session_id: str, *, audio_dir: str | None = None):
        self.writer = writer
        self.session_id = session_id
        self.audio_dir = audio_dir
        self.turns: dict[int, _Turn] = {}
        self.turns_written: set[int] = set()
        self._reply_turn: int | None = None  # the turn whose reply is playing (or last played)
        self._interrupted_turn: int | None = None
        self._started = False
        self._ended = False
        self._tool_args: dict[str, object] = {}  # tool call id -> its arguments, until the result

    # ------------------------------------------------------------------ helpers
    def _turn(self, n: int | None) -> _Turn | None:
        if n is None:
            return None
        t = self.turns.get(n)
        if t is None:
            t = self.turns[n] = _Turn(n)
        return t

    def _write(self, t: _Turn) -> None:
        if not t.dirty:
            return
        if not t.user_text and not t.agent_parts:
            return  # nothing said either way (e.g. a turn opened by a noise): no record
        t.dirty = False
        self.turns_written.add(t.turn)
        self.writer.submit("write_turn", self.session_id, t.turn, **t.row())

    def _write_before(self, n: int) -> None:
        for k in sorted(self.turns):
            if k < n:
                self._write(self.turns[k])

    def _ensure_started(self, event: dict[str, Any] | None = None) -> None:
        if self._started:
            return
        self._started = True
        event = event or {}
        self.writer.submit("start_session", self.session_id, started_at=time.time(),
                           transport=event.get("transport"), pipeline=event.get("pipeline"),
                           caller=event.get("caller"), callee=event.get("callee"), audio_dir=self.audio_dir)

    # ------------------------------------------------------------------- events
    def __call__(self, e: dict[str, Any]) -> None:
        kind = e.get("event")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is None:
            return
        if kind != "session_start":
            self._ensure_started()
        handler(e)

    def _on_session_start(self, e) -> None:
        self._ensure_started(e)

    def _on_endpoint(self, e) -> None:
        n = e["turn"]
        self._write_before(n)
        t = self._turn(n)
        t.user_text = e.get("text") or ""
        t.speech_end = e.get("speech_end")
        t.endpoint_t = e.get("t")
        t.dirty = True

    def _on_agent_audio_start(self, e) -> None:
        t = self._turn(e["turn"])
        if t is None:
            return
        self._reply_turn = t.turn
        if t.agent_start_t is None:
            t.agent_start_t = e.get("t")
            t.dirty = True

    def _on_agent_text(self, e) -> None:
        t = self._turn(e["turn"])
        if t is None or not (e.get("text") or "").strip():
            return
        self._reply_turn = t.turn
        t.agent_parts.append(e["text"])
        t.dirty = True

    def _on_turn_metrics(self, e) -> None:
        t = self._turn(e["turn"])
        if t is None:
            return
        t.metrics = {k: e.get(k) for k in METRICS}
        t.dirty = True

    def _on_agent_audio_stop(self, e) -> None:
        t = self._turn(e["turn"])
        if t is None:
            return
        t.agent_end_t = e.get("t")
        t.dirty = True
        self._write(t)

    def _on_barge_in(self, e) -> None:
        # The barge-in opens turn N; the reply it cut belongs to an earlier turn.
        n = self._reply_turn
        if n is None or n >= (e.get("turn") or 0):
            candidates = [k for k in self.turns if e.get("turn") is None or k < e["turn"]]
            n = max(candidates) if candidates else None
        if n is None:
            return
        t = self.turns[n]
        t.interrupted = True
        t.agent_end_t = e.get("t")
        t.dirty = True
        self._interrupted_turn = n
        self._write(t)

    def _on_false_interruption(self, e) -> None:
        n = self._interrupted_turn
        if n is None or n not in self.turns:
            return
        t = self.turns[n]
        t.interrupted = False  # the agent resumed: the reply was heard to the end after all
        t.false_interruptions += 1
        t.dirty = True
        self._interrupted_turn = None
        self._write(t)

    def _on_error(self, e) -> None:
        n = e.get("turn")
        t = self.turns.get(n) if n is not None else None
        if t is not None:
            t.errors += 1
            t.dirty = True
        self.writer.submit("add_error", self.session_id, str(e.get("error", "")), turn=n, t=e.get("t"))

    def _on_tool_call(self, e) -> None:
        self._tool_args[str(e.get("id"))] = e.get("arguments")

    def _on_tool_result(self, e) -> None:
        import json

        arguments = self._tool_args.pop(str(e.get("id")), {})
        self.writer.submit("add_tool_call", self.session_id, str(e.get("name", "")), turn=e.get("turn"),
                           t=e.get("t"), arguments=json.dumps(arguments, ensure_ascii=False, default=str),
                           ok=bool(e.get("ok")), result=e.get("result") if e.get("ok") else e.get("error"),
                           seconds=e.get("seconds"))

    def _on_session_end(self, e) -> None:
        self.close()

    # -------------------------------------------------------------------- close
    def close(self) -> None:
        """Write every turn not yet written and mark the session ended (idempotent)."""
        if self._ended:
            return
        self._ended = True
        self._ensure_started()
        for k in sorted(self.turns):
            self._write(self.turns[k])
        self.writer.submit("end_session", self.session_id, ended_at=time.time())
