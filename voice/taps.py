"""Pass-through processors that timestamp pipeline milestones for the per-turn record."""

from __future__ import annotations

from pipecat.frames.frames import (
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voice.conversation import Conversation
from voice.events import EventLog


class LLMTap(FrameProcessor):
    """After the LLM: time of the first token of each reply."""

    def __init__(self, conversation: Conversation, events: EventLog, **kwargs):
        super().__init__(**kwargs)
        self._conv = conversation
        self._events = events
        self._waiting = False

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self._waiting = False  # a cut reply is not an empty one
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._waiting = True
            self._conv.start_reply()
        elif isinstance(frame, LLMTextFrame):
            self._conv.add_generated(frame.text)
            if self._waiting:
                self._waiting = False
                turn = self._conv.current_turn
                t = self._events.clock.now()
                self._events.emit("llm_first_token", turn=turn, t=t)
                marks = self._conv.mark(turn)
                if marks.llm_first_token is None:
                    marks.llm_first_token = t
        elif isinstance(frame, LLMFullResponseEndFrame) and self._waiting:
            # An endpoint that answers 200 with nothing usable is a failed turn, not a silent one.
            self._waiting = False
            await self.push_error("LLM returned an empty reply")
        await self.push_frame(frame, direction)


class TTSTap(FrameProcessor):
    """After the TTS: time of the first audio of each reply."""

    def __init__(self, conversation: Conversation, events: EventLog, **kwargs):
        super().__init__(**kwargs)
        self._conv = conversation
        self._events = events
        self._waiting = True

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, (LLMFullResponseStartFrame, InterruptionFrame)):
            self._waiting = True
        elif isinstance(frame, TTSAudioRawFrame) and self._waiting:
            self._waiting = False
            turn = self._conv.current_turn
            t = self._events.clock.now()
            self._events.emit("tts_first_audio", turn=turn, t=t)
            marks = self._conv.mark(turn)
            if marks.tts_first_audio is None:
                marks.tts_first_audio = t
        await self.push_frame(frame, direction)


class PlayedTextRecorder(FrameProcessor):
    """After the output transport: the text whose audio has been played goes into the history."""

    def __init__(self, conversation: Conversation, events: EventLog, **kwargs):
        super().__init__(**kwargs)
        self._conv = conversation
        self._events = events

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSTextFrame) and direction == FrameDirection.DOWNSTREAM:
            self._conv.add_agent_text(frame.text)
            self._events.emit("agent_text", turn=self._conv.current_turn, text=frame.text)
        await self.push_frame(frame, direction)
