"""One batched model step per tick for every live session of a native model.

``BatchedDuplex`` (full duplex, Moshi) is described here; ``BatchedReplies``
(half duplex, Mini-Omni: concurrent replies in one decoding batch) at its class.

``BatchedDuplex`` wraps a full-duplex ``DuplexModel`` that can build a batch
engine (``model.batch_engine(slots)``, e.g. ``MoshiBatch``) and is itself a
``DuplexModel``: ``new_state`` takes a slot, ``step`` hands the session's frame
to the next tick and waits for that tick's output, ``close_state`` frees the
slot. The pipeline code (``voice/native.py``) does not know it is batched.

A tick steps every slot that has a frame waiting, in one batched call over a
fixed pool of ``slots``; slots without a frame (a late session, one sending no
audio, a free slot) are masked: they compute but do not advance, so a session's
output depends only on its own frames, never on who else is in the batch or on
when its frames arrived. A session joining gets its slot reset inside the next
tick that carries its first frame.

When does a tick run? As soon as every *live* session has a frame waiting, or
when the oldest waiting frame has waited ``max_wait_s`` (default: one frame,
80 ms for Moshi). A live session is one that sent a frame in the last two
frame periods, so a session that stops sending holds nobody up for longer
than that. One session alone is stepped as soon as its frame arrives; sessions
in real time, whatever their phases, share one tick per frame period.

Admission: ``new_state`` raises ``ModelBusy`` when every slot is taken or when
recent ticks leave no real-time margin (``margin_refusal``: a tick's p90, or the
share of the last 2 s spent in ticks, over ``admit_max_load`` of a frame).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.native.base import DuplexModel, ModelBusy, StepOutput, as_float_frame

__all__ = ["BatchedDuplex", "BatchedReplies", "Slot", "margin_refusal"]


def margin_refusal(ticks: list[tuple[float, int, float]], now: float, frame_s: float,
                   max_load: float) -> str | None:
    """Why recent ticks leave no real-time margin for another session, or None.

    ``ticks``: (milliseconds, frames, end time in ``time.time()`` seconds), oldest
    first. Two readings, each over ``max_load`` of the frame refuses: the p90 of the
    last 20 ticks (from 5 on: one tick must fit in a frame), and the share of the
    last 2 s spent in ticks (with ``max_wait_s`` under a frame, several ticks share
    one frame period).
    """
    frame_ms = 1000.0 * frame_s
    recent = [ms for ms, _, _ in ticks[-20:]]
    if len(recent) >= 5:
        p90 = float(np.percentile(recent, 90))
        if p90 > max_load * frame_ms:
            return (f"the native model step takes {p90:.0f} ms of its {frame_ms:.0f} ms frame "
                    f"(p90 of the last {len(recent)} ticks): no real-time margin for another session")
    window = 2.0
    busy_ms = sum(ms for ms, _, end in ticks if end > now - window)
    if busy_ms > max_load * 1000.0 * window:
        return (f"the native model stepped {100 * busy_ms / (1000.0 * window):.0f} % of the last "
                f"{window:.0f} s: no real-time margin for another session")
    return None


class _TickThread:
    """The tick thread's life, shared by both pools: ``_loop`` runs on a daemon thread
    under ``_cv`` until :meth:`stop`. Subclasses set ``_thread_name`` and ``_join_s``, and
    may fail waiting work in ``_on_stop`` (called under the lock) or ``_after_stop``."""

    _thread_name = "native"
    _join_s = 5.0
    _cv: threading.Condition
    _thread: threading.Thread | None
    _stopped: bool

    def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        with self._cv:
            if self._thread is not None or self._stopped:
                return
            self._thread = threading.Thread(target=self._loop, name=self._thread_name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the tick loop; waiting work gets an error, new sessions are refused."""
        with self._cv:
            self._stopped = True
            thread, self._thread = self._thread, None
            self._on_stop()
            self._cv.notify_all()
        if thread is not None:
            thread.join(timeout=self._join_s)
        self._after_stop()

    def _on_stop(self) -> None:
        pass

    def _after_stop(self) -> None:
        pass


def _one_line(e: Exception) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


@dataclass(eq=False)
class Slot:
    """One session's place in the pool (its streaming state lives in the batch engine)."""

    index: int
    opened: float
    fresh: bool = True  # reset the slot's state in the next tick that steps it
    closed: bool = False
    last_frame: float | None = None
    steps: int = 0
    pending: tuple[np.ndarray, Future, float] | None = None
    text_pieces: list[str] = field(default_factory=list)


class BatchedDuplex(_TickThread, DuplexModel):
    full_duplex = True
    _thread_name = "native-ticks"

    def __init__(self, model: DuplexModel, slots: int = 8, *, max_wait_s: float | None = None,
                 admit_max_load: float = 0.9, history: int = 50, autostart: bool = True,
                 step_timeout_s: float = 30.0, warm_up: int = 3) -> None:
        if not model.full_duplex:
            raise ValueError(f"{model.name} is half-duplex: only full-duplex models are batched per tick")
        if slots < 1:
            raise ValueError(f"native slots must be at least 1, got {slots}")
        self.model = model
        self.name = f"{model.name} x{slots}"
        self.sample_rate = model.sample_rate
        self.input_rate = model.input_rate
        self.frame_size = model.frame_size
        self.slots = int(slots)
        self.engine = model.batch_engine(self.slots)
        self.frame_s = model.frame_ms / 1000.0
        self.max_wait_s = self.frame_s if max_wait_s is None else float(max_wait_s)
        self.live_window_s = 2 * self.frame_s
        self.admit_max_load = admit_max_load
        self.step_timeout_s = step_timeout_s
        self._free = list(range(self.slots))
        self._slots: dict[int, Slot] = {}  # index -> open slot
        self._cv = threading.Condition()
        self._tick_lock = threading.Lock()  # one tick at a time (the loop's or a caller's)
        self._ticks: deque[tuple[float, int, float]] = deque(maxlen=history)  # (ms, frames, end time)
        self._n_ticks = 0
        self._refused = 0
        self._autostart = autostart
        self._thread: threading.Thread | None = None
        self._stopped = False
        # A model's first steps are slow (lazy initialisation; CUDA graphs are captured on
        # the second call): take them here, not in a session's first ticks, where they
        # would also fill the admission window with a false lack of margin. Slot 0 is
        # reset when a session takes it, like any slot.
        for k in range(warm_up):  # the first step only encodes; the decoder runs from the second
            self.engine.step({0: np.zeros(self.input_frame_size, np.float32)}, reset=[0] if k == 0 else [])

    # -- sessions ---------------------------------------------------------------------------
    def admits(self, record: bool = False) -> str | None:
        """Why a new session would be refused now (None: it would be admitted).

        ``record``: the caller refuses a session for that reason (counted in ``status``).
        """
        with self._cv:
            why = self._refusal()
            if why is not None and record:
                self._refused += 1
            return why

    def _refusal(self) -> str | None:
        if self._stopped:
            return "the native model is shutting down"
        if not self._free:
            return f"all {self.slots} native model slots are in use"
        return margin_refusal(list(self._ticks), time.time(), self.frame_s, self.admit_max_load)

    def new_state(self) -> Slot:
        with self._cv:
            why = self._refusal()
            if why is not None:
                self._refused += 1
                raise ModelBusy(why)
            slot = Slot(index=self._free.pop(0), opened=time.monotonic())
            self._slots[slot.index] = slot
        if self._autostart:
            self.start()
        return slot

    def reset(self, state: Slot) -> None:
        with self._cv:
            state.fresh = True
            state.steps = 0
            state.text_pieces.clear()

    def close_state(self, state: Slot) -> None:
        """Free the slot; a frame still waiting gets silence back. Safe to call twice."""
        with self._cv:
            if state.closed:
                return
            state.closed = True
            if state.pending is not None:
                _, fut, _ = state.pending
                state.pending = None
                if not fut.done():
                    fut.set_result(StepOutput(audio=self.silence()))
            if self._slots.get(state.index) is state:
                del self._slots[state.index]
                self._free.append(state.index)
                self._free.sort()

    # -- frames ------------------------------------------------------------------------------
    def submit(self, state: Slot, pcm: np.ndarray) -> Future:
        """Queue one input frame for the next tick; the future gets that tick's StepOutput."""
        frame = as_float_frame(pcm, self.input_frame_size)
        fut: Future = Future()
        with self._cv:
            if state.closed:
                raise RuntimeError("this native session has ended")
            if self._stopped:
                raise RuntimeError("the native model is shutting down")
            if state.pending is not None:
                raise RuntimeError("a native session steps one frame at a time")
            now = time.monotonic()
            state.pending = (frame, fut, now)
            state.last_frame = now
            self._cv.notify_all()
        return fut

    def step(self, state: Slot, pcm: np.ndarray) -> StepOutput:
        fut = self.submit(state, pcm)
        if self._thread is None and not self._autostart:
            self.tick()  # no loop running: this caller runs the tick itself
        return fut.result(timeout=self.step_timeout_s)

    # -- ticks -------------------------------------------------------------------------------
    def tick(self) -> int:
        """Step every slot that has a frame waiting, in one batched call; returns how many."""
        with self._tick_lock:
            with self._cv:
                batch = [(s, *s.pending) for s in self._slots.values() if s.pending is not None]
                for s, *_ in batch:
                    s.pending = None
                reset = [s.index for s, *_ in batch if s.fresh]
                for s, *_ in batch:
                    s.fresh = False
            if not batch:
                return 0
            t0 = time.perf_counter()
            try:
                outs = self.engine.step({s.index: frame for s, frame, _, _ in batch}, reset=reset)
            except BaseException as e:
                for _, _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(e)
                raise
            ms = 1000.0 * (time.perf_counter() - t0)
            with self._cv:
                self._ticks.append((ms, len(batch), time.time()))
                self._n_ticks += 1
                for s, _, fut, _ in batch:
                    out = outs[s.index]
                    if not s.closed:
                        s.steps += 1
                        if out.text:
                            s.text_pieces.append(out.text)
                    if not fut.done():
                        fut.set_result(out)
            return len(batch)

    def _ready(self, now: float) -> bool:
        """Every live session has a frame waiting, or the oldest waiting frame has waited enough."""
        waiting = [s.pending[2] for s in self._slots.values() if s.pending is not None]
        if not waiting:
            return False
        if now - min(waiting) >= self.max_wait_s:
            return True
        for s in self._slots.values():
            if s.pending is None:
                seen = s.last_frame if s.last_frame is not None else s.opened
                if now - seen < self.live_window_s:
                    return False  # a live session's frame is probably on its way
        return True

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopped:
                    now = time.monotonic()
                    if self._ready(now):
                        break
                    waiting = [s.pending[2] for s in self._slots.values() if s.pending is not None]
                    timeout = None if not waiting else max(1e-4, min(waiting) + self.max_wait_s - now)
                    self._cv.wait(timeout)
                if self._stopped:
                    return
            try:
                self.tick()
            except Exception as e:  # the futures carry the error to the sessions; keep serving
                from loguru import logger

                logger.error(f"native batch tick failed: {_one_line(e)}")

    def _on_stop(self) -> None:
        for s in self._slots.values():
            if s.pending is not None:
                _, fut, _ = s.pending
                s.pending = None
                if not fut.done():
                    fut.set_exception(RuntimeError("the native model is shutting down"))

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Slots used and recent tick times (for /health)."""
        with self._cv:
            ticks = list(self._ticks)
            used = self.slots - len(self._free)
            out: dict[str, Any] = {"model": self.model.name, "slots": self.slots, "slots_used": used,
                                   "frame_ms": round(1000 * self.frame_s, 1),
                                   "max_wait_ms": round(1000 * self.max_wait_s, 1), "ticks": self._n_ticks,
                                   "refused": self._refused}
        if ticks:
            ms = [t[0] for t in ticks]
            out["tick_ms_last"] = [round(t, 2) for t in ms[-10:]]
            out["tick_ms_p50"] = round(float(np.percentile(ms, 50)), 2)
            out["tick_ms_p90"] = round(float(np.percentile(ms, 90)), 2)
            out["tick_ms_max"] = round(max(ms), 2)
            out["frames_per_tick_last"] = [t[1] for t in ticks[-10:]]
        return out

    def tick_log(self) -> list[tuple[float, int]]:
        """(milliseconds, frames stepped) of the last ``history`` ticks, oldest first."""
        with self._cv:
            return [(ms, n) for ms, n, _ in self._ticks]

    def text_of(self, token: int) -> str:
        return self.model.text_of(token)  # type: ignore[attr-defined]


class BatchedReplies(_TickThread, DuplexModel):
    """Half-duplex replies (Mini-Omni) of every session decoded together, one LM step per tick.

    Wraps a half-duplex model whose ``batch_engine(slots)`` decodes up to ``slots``
    replies in one batch (``MiniOmniBatch``). ``respond`` computes the turn's
    features on the caller's thread, hands the reply to the batch and streams its
    outputs as the model's own ``respond`` would; a tick thread steps the batch
    while any reply is waiting or decoding. Replies beyond ``slots`` wait for a
    free row (they are not refused: a session uses the batch only while it answers).
    """

    full_duplex = False
    _thread_name = "native-replies"
    _join_s = 10.0

    def __init__(self, model: DuplexModel, slots: int = 8, *, history: int = 50) -> None:
        if model.full_duplex:
            raise ValueError(f"{model.name} is full-duplex: use BatchedDuplex")
        self.model = model
        self.name = f"{model.name} x{slots}"
        self.sample_rate = model.sample_rate
        self.input_rate = model.input_rate
        self.frame_size = model.frame_size
        self.slots = int(slots)
        self.engine = model.batch_engine(self.slots)
        self._cv = threading.Condition()
        self._ticks: deque[tuple[float, int, int]] = deque(maxlen=history)  # (ms, replies, prefilled)
        self._n_ticks = 0
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def max_input_s(self) -> float:
        return getattr(self.model, "max_input_s", 30.0)

    def new_state(self) -> Any:
        return self.model.new_state()

    def reset(self, state: Any) -> None:
        self.model.reset(state)

    def step(self, state: Any, pcm: np.ndarray) -> StepOutput:
        return self.model.step(state, pcm)

    def respond(self, state: Any, user_audio_16k: np.ndarray, max_steps: int | None = None):
        """The model's ``respond``, its LM steps taken in the shared batch (a generator, lazy
        like the model's: the turn's features are computed on the first ``next``)."""
        import queue as _queue

        if self._stopped:
            raise RuntimeError("the native model is shutting down")
        state.cancelled = False
        feats = self.model.audio_features(np.asarray(user_audio_16k, dtype=np.float32))  # type: ignore[attr-defined]
        reply = self.engine.add(feats, max_steps, state)
        self.start()
        with self._cv:
            self._cv.notify_all()

        def tokens():
            while True:
                try:
                    item = reply.out.get(timeout=1.0)
                except _queue.Empty:
                    if self._stopped:
                        raise RuntimeError("the native model is shutting down") from None
                    continue  # waiting for a free row, or a slow step
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise RuntimeError(f"native reply batch failed: {item}") from None
                yield item

        try:
            yield from self.model.stream_reply(state, tokens())  # type: ignore[attr-defined]
        finally:
            reply.gone = True  # read to the end, closed, or interrupted: its rows can go

    # -- ticks -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and not self.engine.pending():
                    self._cv.wait()
                if self._stopped:
                    return
            t0 = time.perf_counter()
            try:
                n = self.engine.step()
            except Exception as e:
                from loguru import logger

                logger.error(f"native reply batch failed: {_one_line(e)}")
                self.engine.fail(e)
                continue
            if n:
                with self._cv:
                    self._ticks.append((1000.0 * (time.perf_counter() - t0), n,
                                        getattr(self.engine, "last_joined", 0)))
                    self._n_ticks += 1

    def _after_stop(self) -> None:
        self.engine.fail(RuntimeError("the native model is shutting down"))

    def admits(self, record: bool = False) -> str | None:
        return "the native model is shutting down" if self._stopped else None

    def status(self) -> dict[str, Any]:
        with self._cv:
            ticks = list(self._ticks)
            out: dict[str, Any] = {"model": self.model.name, "slots": self.slots,
                                   "replies_decoding": self.engine.active(),
                                   "replies_waiting": max(0, self.engine.pending() - self.engine.active()),
                                   "ticks": self._n_ticks}
        if ticks:
            ms = [t[0] for t in ticks]
            out["tick_ms_last"] = [round(t, 2) for t in ms[-10:]]
            out["tick_ms_p50"] = round(float(np.percentile(ms, 50)), 2)
            out["tick_ms_p90"] = round(float(np.percentile(ms, 90)), 2)
            out["tick_ms_max"] = round(max(ms), 2)
            out["replies_per_tick_last"] = [t[1] for t in ticks[-10:]]
        return out

    def tick_log(self, with_joins: bool = False) -> list[tuple]:
        """(milliseconds, replies stepped[, replies prefilled in that tick]) of the last ticks."""
        with self._cv:
            return [t if with_joins else t[:2] for t in self._ticks]
