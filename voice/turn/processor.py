"""Pipecat glue for the turn controller: frames in, decisions out, events logged."""

from __future__ import annotations

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    LLMContextFrame,
    TTSSpeakFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voice.audio import PIPELINE_RATE
from voice.conversation import Conversation
from voice.events import EventLog
from voice.frames import ReplyHeldFrame, ReplyReleasedFrame, SpeechStartedFrame, SpeechStoppedFrame, TranscriptFrame, UserTurnEndedFrame
from voice.turn.controller import State, TurnController


class TurnProcessor(FrameProcessor):
    def __init__(self, controller: TurnController, conversation: Conversation, events: EventLog,
                 *, apology: str, engine: str = "cascaded", **kwargs):
        super().__init__(**kwargs)
        # cascaded: the controller prompts the LLM; native: the model hears the audio
        # itself, so audio passes through and a committed turn is only announced.
        self._native = engine == "native"
        self.controller = controller
        self.conversation = conversation
        self.events = events
        self._apology = apology
        self._samples = 0

    @property
    def now(self) -> float:
        return self._samples / PIPELINE_RATE

    async def _apply(self, actions) -> None:
        for a in actions:
            turn = self.controller.turn
            if a.kind == "state":
                self.events.emit("state", turn=turn, t=a.data["t"], state=a.data["state"])
            elif a.kind == "speculate":
                self.events.emit("speculate", turn=turn, t=a.data["t"], text=a.text)
                self.conversation.current_turn = turn
                self.conversation.mark(turn).llm_start = a.data["t"]
                await self.push_frame(ReplyHeldFrame(turn=turn))
                messages = self.conversation.messages() + [{"role": "user", "content": a.text}]
                await self.push_frame(LLMContextFrame(context=LLMContext(messages=messages)))
            elif a.kind == "discard":
                self.events.emit("speculation_discarded", turn=turn, t=a.data["t"], text=a.text)
                await self.broadcast_interruption()
            elif a.kind in ("commit", "confirm"):
                marks = self.conversation.mark(turn)
                marks.user_text = a.text
                marks.speech_end = a.data["speech_end"]
                marks.endpoint = a.data["t"]
                self.conversation.current_turn = turn
                self.events.emit("endpoint", turn=turn, t=a.data["t"], text=a.text,
                                 speech_end=a.data["speech_end"], speculative=a.kind == "confirm",
                                 delay=round(a.data["t"] - a.data["speech_end"], 4))
                self.conversation.add_user(a.text)
                await self.push_frame(UserTurnEndedFrame(turn=turn), FrameDirection.UPSTREAM)
                if self._native:
                    await self.push_frame(UserTurnEndedFrame(turn=turn))
                elif a.kind == "confirm":
                    await self.push_frame(ReplyReleasedFrame(turn=turn))
                else:
                    marks.llm_start = a.data["t"]
                    await self.push_frame(LLMContextFrame(context=LLMContext(messages=self.conversation.messages())))
            elif a.kind == "interrupt":
                self.events.emit("barge_in", turn=turn, t=a.data["t"], onset=a.data["onset"],
                                 during=a.data["state"])
                self.conversation.close_agent_turn(interrupted=True)
                await self.broadcast_interruption()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        c = self.controller
        if isinstance(frame, InputAudioRawFrame):
            self._samples += len(frame.audio) // 2
            await self._apply(c.on_tick(self.now))
            if self._native:
                await self.push_frame(frame, direction)
            return  # in the cascaded engine nothing downstream consumes raw input audio
        if isinstance(frame, SpeechStartedFrame):
            self.events.emit("user_speech_start", turn=c.turn + (c.state in (State.LISTENING, State.THINKING, State.AGENT_SPEAKING)), t=frame.onset)
            await self._apply(c.on_speech_started(self.now, frame.onset))
            return
        if isinstance(frame, SpeechStoppedFrame):
            self.events.emit("user_speech_stop", turn=c.turn, t=frame.end)
            await self._apply(c.on_speech_stopped(self.now, frame.end))
            return
        if isinstance(frame, TranscriptFrame):
            self.events.emit("asr_text", turn=c.turn, text=frame.text, revision=frame.revision,
                             audio_end=round(frame.audio_end, 4), asr_time=round(frame.asr_seconds, 4))
            marks = self.conversation.mark(c.turn)
            marks.asr_seconds = frame.asr_seconds
            await self._apply(c.on_transcript(self.now, frame.text, frame.revision, frame.audio_end))
            return
        if isinstance(frame, InterimTranscriptionFrame):
            self.events.emit("asr_partial", turn=c.turn, text=frame.text)
            return
        if isinstance(frame, BotStartedSpeakingFrame) and direction == FrameDirection.UPSTREAM:
            t = self.events.clock.now()
            self.events.emit("agent_audio_start", turn=self.conversation.current_turn, t=t)
            marks = self.conversation.mark(self.conversation.current_turn)
            if marks.agent_audio_start is None:
                marks.agent_audio_start = t
            if not marks.reported and marks.speech_end is not None:
                marks.reported = True
                self.events.emit("turn_metrics", turn=marks.turn, text=marks.user_text, **marks.metrics())
            await self._apply(c.on_agent_audio_started(self.now))
        elif isinstance(frame, BotStoppedSpeakingFrame) and direction == FrameDirection.UPSTREAM:
            self.events.emit("agent_audio_stop", turn=self.conversation.current_turn)
            self.conversation.close_agent_turn()
            await self._apply(c.on_agent_audio_stopped(self.now))
        elif isinstance(frame, ErrorFrame) and direction == FrameDirection.UPSTREAM:
            self.events.emit("error", turn=c.turn, error=str(frame.error))
            if c.state == State.THINKING or c.speculating is not None:
                # The session never goes silent on a failed turn: say so, then listen again.
                # (A speculative reply's apology is held by the gate like the reply would be.)
                await self.push_frame(TTSSpeakFrame(self._apology))
        await self.push_frame(frame, direction)
