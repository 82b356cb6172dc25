"""Call control as frames: an action travels with the reply's audio and runs once it has played.

The built-ins (builtins.py) do not hang up or transfer themselves: they queue a
:class:`CallAction` for the session. The LLM service pushes each one as a
:class:`CallActionFrame` in the reply's frame stream (``send_dtmf`` at once, in
order with the speech before it; ``end_call`` and ``transfer_call`` after the
reply's last word). Frames that are not system frames leave the output
transport only once the audio before them has been written, so
:class:`CallActionRunner`, placed after the output transport, runs the action
after the goodbye has been said. A reply that is held for a speculation and
dropped, or that the user talks over, drops its action with it: an end_call
whose goodbye is interrupted does not hang up.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from pipecat.frames.frames import DataFrame, Frame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

Action = Callable[..., Awaitable[Any] | Any]


@dataclass
class CallControl:
    """What the session's transport can do to its call; None where it cannot.

    Passed to ``build_session``/``run_session`` by the transport: SIP fills all
    three (BYE, REFER, RFC 4733), WebRTC and ``voice talk`` only ``hangup``.
    """

    hangup: Action | None = None
    transfer: Action | None = None  # transfer(uri)
    send_dtmf: Action | None = None  # send_dtmf(digits)


@dataclass
class CallAction:
    kind: str  # hangup | transfer | send_dtmf
    arg: str | None = None
    after_reply: bool = True  # False: in order with the speech so far (DTMF)


@dataclass
class CallActionFrame(DataFrame):
    action: CallAction | None = None


@dataclass
class PendingActions:
    """The actions the built-ins queued during the current reply (the LLM service drains them)."""

    items: list[CallAction] = field(default_factory=list)

    def add(self, action: CallAction) -> None:
        self.items.append(action)

    def take(self, *, after_reply: bool) -> list[CallAction]:
        taken = [a for a in self.items if a.after_reply == after_reply]
        self.items = [a for a in self.items if a.after_reply != after_reply]
        return taken

    def clear(self) -> None:
        self.items.clear()


class CallActionRunner(FrameProcessor):
    """After the output transport: runs each CallActionFrame's action on the call."""

    def __init__(self, control: CallControl, events, conversation, **kwargs):
        super().__init__(**kwargs)
        self._control = control
        self._events = events
        self._conv = conversation
        self._tasks: set[asyncio.Task] = set()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, CallActionFrame) and frame.action is not None:
            self._start(frame.action)
            return
        await self.push_frame(frame, direction)

    def _start(self, action: CallAction) -> None:
        fn = getattr(self._control, action.kind, None)
        self._events.emit("call_action", turn=self._conv.current_turn, action=action.kind, target=action.arg)
        if fn is None:
            logger.warning(f"call action {action.kind} is not supported by this transport")
            return
        # Its own task: a hang-up ends this pipeline, and must not cancel itself half-way.
        task = asyncio.get_running_loop().create_task(self._run(fn, action), name=f"call-{action.kind}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, fn: Action, action: CallAction) -> None:
        try:
            result = fn(action.arg) if action.arg is not None else fn()
            if inspect.isawaitable(result):
                await result
        except Exception as e:
            logger.warning(f"call action {action.kind} failed: {e}")
            self._events.emit("error", turn=self._conv.current_turn, error=f"call action {action.kind} failed: {e}")
