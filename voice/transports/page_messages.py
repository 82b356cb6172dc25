"""What the page hears about its session, whatever carries it.

The same JSON messages go over the peer-to-peer data channel
(``voice.transports.webrtc``) and as LiveKit data packets
(``voice.transports.livekit``), so ``web/app.js`` has one handler:

  ``{"type": "session", "session": ID, "pipeline": P}`` first;
  ``{"type": "ready", "session": ID}`` once the pipeline hears the microphone;
  ``{"type": "event", "event": KIND, "t": .., "turn": .., ...}`` for every session event
  (state, asr_partial, asr_text, agent_text, barge_in, turn_metrics, error, ...);
  ``{"type": "end", "session": ID, "reason": R}`` when the server ends the session.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

from loguru import logger


def _plain(value: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy (numpy scalars, paths ... become numbers or strings)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def page_message(event: dict[str, Any]) -> dict[str, Any]:
    """A session event as the page receives it: the event's own keys plus ``type: "event"``."""
    return {**_plain(event), "type": "event"}


class EventForwarder:
    """Hands page messages to ``deliver`` on the event loop's thread, from any thread.

    Subscribed to a session's ``EventLog`` (events come from model threads too);
    ``deliver`` must not block. A failing delivery is logged, never raised: a dead
    channel must not break the audio path.
    """

    def __init__(self, deliver: Callable[[dict[str, Any]], None], loop: asyncio.AbstractEventLoop):
        self._deliver = deliver
        self._loop = loop
        self._thread = threading.get_ident()
        self.closed = False
        self.sent = 0

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.send, message)
            return
        try:
            self._deliver(message)
            self.sent += 1
        except Exception as e:
            logger.debug(f"page message not delivered: {e}")

    def __call__(self, event: dict[str, Any]) -> None:
        self.send(page_message(event))
