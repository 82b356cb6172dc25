"""Frames our processors add to pipecat's vocabulary. Times are on the session's input clock (s)."""

from __future__ import annotations

from dataclasses import dataclass

from pipecat.frames.frames import LLMContextFrame, SystemFrame


@dataclass
class SpeechStartedFrame(SystemFrame):
    """The VAD heard speech begin (``onset``: when the first speech frame started)."""

    onset: float = 0.0


@dataclass
class SpeechPendingFrame(SystemFrame):
    """The VAD hears what may be speech beginning but has not decided yet (``vad.start_s``).

    ``onset`` is when it began; None when the candidate died away without becoming
    speech. A SpeechStartedFrame ends the pending state too.
    """

    onset: float | None = None


@dataclass
class SpeechStoppedFrame(SystemFrame):
    """The VAD heard speech stop (``end``: when the last speech frame ended)."""

    end: float = 0.0


@dataclass
class TranscriptFrame(SystemFrame):
    """Transcript of the user's turn so far, decoded up to ``audio_end`` (input clock)."""

    text: str = ""
    revision: int = 0
    audio_end: float = 0.0
    asr_seconds: float = 0.0
    final: bool = True
    error: str | None = None  # the recogniser failed on this turn's audio (the text is then empty)


@dataclass
class UserTurnEndedFrame(SystemFrame):
    """From the controller: the user's turn is committed. Upstream, the ASR starts a new
    turn buffer; downstream (native engine), a half-duplex model starts its reply."""

    turn: int = 0


@dataclass
class ReplyHeldFrame(SystemFrame):
    """The controller started a speculative reply: hold its audio until confirmed."""

    turn: int = 0


@dataclass
class ReplyReleasedFrame(SystemFrame):
    """The endpoint is confirmed: play the held reply."""

    turn: int = 0


@dataclass
class ReplyPendingFrame(SystemFrame):
    """Upstream from the LLM service: the reply is not finished although its audio may pause
    (a filler was said while a tool runs, voice/tools); ``pending`` False when it is."""

    pending: bool = False


@dataclass
class TurnProbabilityFrame(SystemFrame):
    """Smart Turn's probability that the user's turn is complete, for audio up to ``audio_end``."""

    probability: float = 0.0
    audio_end: float = 0.0
    seconds: float = 0.0


@dataclass
class SpeculativeContextFrame(LLMContextFrame):
    """The context of a speculative reply; ``discarded`` once the user went on.

    A discard interrupts the pipeline, but pipecat's input queues let the
    InterruptionFrame (a system frame) overtake this data frame when both wait
    at the LLM at once (speculation and discard in one input tick): the
    interruption would pass first and the stale reply be generated and heard.
    The LLM services check the flag when they start on the frame.
    """

    discarded: bool = False


def is_discarded(frame) -> bool:
    return isinstance(frame, SpeculativeContextFrame) and frame.discarded
