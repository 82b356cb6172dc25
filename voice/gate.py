"""Holds a speculative reply's output until the turn end is confirmed.

Sits between the TTS and the output transport. Armed by ReplyHeldFrame (a
system frame, so it overtakes the reply's own frames), it buffers every
downstream non-system frame; ReplyReleasedFrame plays them in order; an
interruption (the user kept talking) drops them silently.
"""

from __future__ import annotations

from pipecat.frames.frames import CancelFrame, EndFrame, Frame, InterruptionFrame, SystemFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voice.frames import ReplyHeldFrame, ReplyReleasedFrame


class ReplyGate(FrameProcessor):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._holding = False
        self._held: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, ReplyHeldFrame):
            self._holding = True
            self._held = []
            return
        if isinstance(frame, ReplyReleasedFrame):
            self._holding = False
            held, self._held = self._held, []
            for f in held:
                await self.push_frame(f)
            return
        if isinstance(frame, (InterruptionFrame, EndFrame, CancelFrame)):
            # Interrupted, or the session ends before the endpoint was confirmed:
            # the held reply was never heard, and the end must get through.
            self._holding = False
            self._held = []
        elif self._holding and direction == FrameDirection.DOWNSTREAM and not isinstance(frame, SystemFrame):
            self._held.append(frame)
            return
        await self.push_frame(frame, direction)
