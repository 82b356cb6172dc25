"""Pipecat glue for the turn controller: frames in, decisions out, events logged."""

from __future__ import annotations

import itertools

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    LLMContextFrame,
    OutputAudioRawFrame,
    TTSSpeakFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voice.audio import PIPELINE_RATE, resample_pcm16
from voice.conversation import Conversation
from voice.events import EventLog
from voice.frames import (
    ReplyHeldFrame,
    ReplyPendingFrame,
    ReplyReleasedFrame,
    SpeculativeContextFrame,
    SpeechPendingFrame,
    SpeechStartedFrame,
    SpeechStoppedFrame,
    TranscriptFrame,
    TurnProbabilityFrame,
    UserTurnEndedFrame,
)
from voice.turn.controller import State, TurnController


class TurnProcessor(FrameProcessor):
    def __init__(self, controller: TurnController, conversation: Conversation, events: EventLog,
                 *, apology: str, engine: str = "cascaded", backchannels=(), **kwargs):
        super().__init__(**kwargs)
        self.controller = controller
        self.conversation = conversation
        self.events = events
        self._apology = apology
        # cascaded: the controller prompts the LLM; native: the model hears the audio
        # itself, so audio passes through and a committed turn is only announced.
        self._native = engine == "native"
        # Pre-synthesised acknowledgements: (text, pcm16 bytes, sample rate), used in turn.
        self._backchannels = itertools.cycle(list(backchannels)) if backchannels else None
        self._backchannel_playing = False
        self._out_rate: int | None = None
        self._samples = 0
        self._speculation: SpeculativeContextFrame | None = None  # the held reply's context frame
        self._reply_pending = False  # a tool runs after a filler: the reply is still coming

    async def setup(self, setup):
        await super().setup(setup)
        self._out_rate = setup.audio_out_sample_rate

    @property
    def now(self) -> float:
        return self._samples / PIPELINE_RATE

    # --- actions -------------------------------------------------------------------
    async def _apply(self, actions) -> None:
        for a in actions:
            await getattr(self, f"_do_{a.kind}")(a, self.controller.turn)

    async def _do_state(self, a, turn: int) -> None:
        self.events.emit("state", turn=turn, t=a.data["t"], state=a.data["state"])

    async def _do_speculate(self, a, turn: int) -> None:
        self.events.emit("speculate", turn=turn, t=a.data["t"], text=a.text)
        self.conversation.current_turn = turn
        self.conversation.mark(turn).new_generation(a.data["t"])
        await self.push_frame(ReplyHeldFrame(turn=turn))
        messages = self.conversation.messages() + [{"role": "user", "content": a.text}]
        self._speculation = SpeculativeContextFrame(context=LLMContext(messages=messages))
        await self.push_frame(self._speculation)

    async def _do_discard(self, a, turn: int) -> None:
        self.events.emit("speculation_discarded", turn=turn, t=a.data["t"], text=a.text)
        if self._speculation is not None:
            self._speculation.discarded = True  # before the interruption: see SpeculativeContextFrame
            self._speculation = None
        self._reply_pending = False
        await self.broadcast_interruption()

    async def _do_commit(self, a, turn: int) -> None:
        await self._end_user_turn(a, turn, speculative=False)

    async def _do_confirm(self, a, turn: int) -> None:
        await self._end_user_turn(a, turn, speculative=True)

    async def _end_user_turn(self, a, turn: int, *, speculative: bool) -> None:
        marks = self.conversation.mark(turn)
        marks.user_text = a.text
        marks.speech_end = a.data["speech_end"]
        marks.endpoint = a.data["t"]
        self.conversation.current_turn = turn
        self.events.emit("endpoint", turn=turn, t=a.data["t"], text=a.text,
                         speech_end=a.data["speech_end"], speculative=speculative,
                         delay=round(a.data["t"] - a.data["speech_end"], 4))
        self.conversation.add_user(a.text)
        await self.push_frame(UserTurnEndedFrame(turn=turn), FrameDirection.UPSTREAM)
        if self._native:
            await self.push_frame(UserTurnEndedFrame(turn=turn))
        elif speculative:
            await self.push_frame(ReplyReleasedFrame(turn=turn))
        else:
            marks.new_generation(a.data["t"])
            await self.push_frame(LLMContextFrame(context=LLMContext(messages=self.conversation.messages())))

    async def _do_interrupt(self, a, turn: int) -> None:
        self.events.emit("barge_in", turn=turn, t=a.data["t"], onset=a.data["onset"], during=a.data["state"])
        self.conversation.close_agent_turn(interrupted=True)
        self._reply_pending = False  # the reply a tool was working on is dropped with the rest
        await self.broadcast_interruption()

    async def _do_resume(self, a, turn: int) -> None:
        remainder = "" if self._native else self.conversation.unplayed_remainder()
        self.events.emit("false_interruption", turn=turn, t=a.data["t"], heard=a.text, resumed=remainder)
        if not remainder:
            await self._apply(self.controller.on_agent_audio_stopped(self.now))
            return
        self.conversation.reopen_agent_turn()
        # Re-say from the cut clause on; the reply belongs to the turn it answered.
        self.conversation.reply_generated = self.conversation.reply_played + " " + remainder
        await self.push_frame(TTSSpeakFrame(remainder))

    async def _do_backchannel(self, a, turn: int) -> None:
        if self._backchannels is None:
            return
        text, pcm, rate = next(self._backchannels)
        if self._out_rate and rate != self._out_rate:
            # The output resamples one stream at one rate: hand it the rate the TTS uses.
            pcm, rate = resample_pcm16(pcm, rate, self._out_rate), self._out_rate
        self.events.emit("backchannel", turn=turn, t=a.data["t"], text=text)
        self._backchannel_playing = True
        await self.push_frame(OutputAudioRawFrame(audio=pcm, sample_rate=rate, num_channels=1))

    # --- frames --------------------------------------------------------------------
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
            if self._backchannel_playing:
                # Never over the user: an acknowledgement still playing is cut.
                self._backchannel_playing = False
                await self.broadcast_interruption()
            starts_turn = c.state in (State.LISTENING, State.THINKING, State.AGENT_SPEAKING)
            # t: the onset; at: when the VAD reported it (what an offline replay needs).
            self.events.emit("user_speech_start", turn=c.turn + starts_turn, t=frame.onset, at=round(self.now, 4))
            await self._apply(c.on_speech_started(self.now, frame.onset))
            return
        if isinstance(frame, SpeechPendingFrame):
            self.events.emit("user_speech_pending", turn=c.turn, t=self.now, onset=frame.onset)
            await self._apply(c.on_speech_pending(self.now, frame.onset))
            return
        if isinstance(frame, SpeechStoppedFrame):
            self.events.emit("user_speech_stop", turn=c.turn, t=frame.end, at=round(self.now, 4))
            await self._apply(c.on_speech_stopped(self.now, frame.end))
            return
        if isinstance(frame, TurnProbabilityFrame):
            self.events.emit("turn_probability", turn=c.turn, p=round(frame.probability, 3),
                             audio_end=round(frame.audio_end, 4), seconds=round(frame.seconds, 4))
            await self._apply(c.on_turn_probability(self.now, frame.probability, frame.audio_end))
            return
        if isinstance(frame, TranscriptFrame) and frame.error:
            # The recogniser failed on this turn: say so (the session never goes silent), listen again.
            self.events.emit("error", turn=c.turn, error=frame.error)
            self.conversation.current_turn = c.turn
            await self.push_frame(TTSSpeakFrame(self._apology))
        if isinstance(frame, TranscriptFrame):
            self.events.emit("asr_text", turn=c.turn, text=frame.text, revision=frame.revision,
                             audio_end=round(frame.audio_end, 4), asr_time=round(frame.asr_seconds, 4))
            self.conversation.mark(c.turn).asr_seconds = frame.asr_seconds
            await self._apply(c.on_transcript(self.now, frame.text, frame.revision, frame.audio_end))
            return
        if isinstance(frame, InterimTranscriptionFrame):
            self.events.emit("asr_partial", turn=c.turn, text=frame.text)
            return
        if isinstance(frame, ReplyPendingFrame):
            self._reply_pending = frame.pending
            return
        if isinstance(frame, BotStartedSpeakingFrame) and direction == FrameDirection.UPSTREAM:
            if not self._backchannel_playing:
                await self._agent_audio_started()
        elif isinstance(frame, BotStoppedSpeakingFrame) and direction == FrameDirection.UPSTREAM:
            if self._backchannel_playing:
                self._backchannel_playing = False
            else:
                self.events.emit("agent_audio_stop", turn=self.conversation.current_turn)
                self.conversation.close_agent_turn()
                await self._apply(c.on_agent_audio_stopped(self.now, reply_pending=self._reply_pending))
        elif isinstance(frame, ErrorFrame) and direction == FrameDirection.UPSTREAM:
            self.events.emit("error", turn=c.turn, error=str(frame.error))
            if c.state == State.THINKING or c.speculating is not None:
                # The session never goes silent on a failed turn: say so, then listen again.
                # (A speculative reply's apology is held by the gate like the reply would be.)
                await self.push_frame(TTSSpeakFrame(self._apology))
        await self.push_frame(frame, direction)

    async def _agent_audio_started(self) -> None:
        t = self.events.clock.now()
        self.events.emit("agent_audio_start", turn=self.conversation.current_turn, t=t)
        marks = self.conversation.mark(self.conversation.current_turn)
        # Audio that starts before this turn's endpoint is not its reply (the tail of an earlier
        # one, late under load): the reply to a turn is only released at its endpoint.
        if marks.agent_audio_start is None and marks.endpoint is not None and t >= marks.endpoint - 0.05:
            marks.agent_audio_start = t
        if not marks.reported and marks.speech_end is not None and marks.agent_audio_start is not None:
            marks.reported = True
            self.events.emit("turn_metrics", turn=marks.turn, text=marks.user_text, **marks.metrics())
        await self._apply(self.controller.on_agent_audio_started(self.now))
