"""The turn-taking state machine, driven by events on the input clock.

Pure logic, no pipecat and no I/O: each ``on_*`` method takes the time and
returns the actions to carry out. The pipecat processor in ``processor.py``
turns frames into these calls and actions into frames, so both engines and
every transport share exactly this behaviour, and unit tests can drive it with
synthetic event streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from voice.turn.completeness import completeness


class State(str, Enum):
    LISTENING = "listening"          # nobody speaks
    USER_SPEAKING = "user_speaking"
    USER_PAUSED = "user_paused"      # user stopped; not yet a turn end
    THINKING = "thinking"            # turn committed, reply not audible yet
    AGENT_SPEAKING = "agent_speaking"


@dataclass
class Action:
    kind: str  # speculate | confirm | discard | commit | interrupt | state
    text: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class TurnConfig:
    endpoint_silence_s: float = 0.45   # wait after a complete-sounding turn
    max_wait_s: float = 2.5            # longest wait for an unfinished-sounding turn
    barge_in_min_s: float = 0.0        # speech needed before the agent yields (VAD start_s already applies)
    speculate_min_completeness: float = 0.5  # start the reply early only if the turn reads finished
    speculate: bool = True             # engines that cannot discard a started reply turn it off


class TurnController:
    def __init__(self, config: TurnConfig):
        self.config = config
        self.state = State.LISTENING
        self.turn = 0
        self.speech_end: float | None = None
        self.transcript = ""
        self._transcript_revision = -1
        self._transcript_end = -1.0
        self.speculating: str | None = None  # text of the held, not yet confirmed reply

    # --- helpers -------------------------------------------------------------------
    def _set(self, state: State, t: float) -> list[Action]:
        if state == self.state:
            return []
        self.state = state
        return [Action("state", data={"state": state.value, "t": t})]

    def required_wait(self, text: str) -> float:
        """Silence needed before the turn counts as ended: short if complete, long if not."""
        c = completeness(text)
        if c >= 0.8:
            return self.config.endpoint_silence_s
        if c <= 0.2:
            return self.config.max_wait_s
        return min(self.config.max_wait_s, self.config.endpoint_silence_s * 1.8)

    # --- inputs --------------------------------------------------------------------
    def on_speech_started(self, t: float, onset: float) -> list[Action]:
        actions: list[Action] = []
        if self.state in (State.THINKING, State.AGENT_SPEAKING):
            actions.append(Action("interrupt", data={"t": t, "onset": onset, "state": self.state.value}))
            self.turn += 1
            self.transcript = ""
        elif self.state == State.LISTENING:
            self.turn += 1
            self.transcript = ""
        elif self.state == State.USER_PAUSED and self.speculating is not None:
            # The user went on: the early reply was premature, drop it unheard.
            actions.append(Action("discard", text=self.speculating, data={"t": t}))
            self.speculating = None
        self.speech_end = None
        return actions + self._set(State.USER_SPEAKING, t)

    def on_speech_stopped(self, t: float, end: float) -> list[Action]:
        if self.state != State.USER_SPEAKING:
            return []
        self.speech_end = end
        return self._set(State.USER_PAUSED, t)

    def on_transcript(self, t: float, text: str, revision: int, audio_end: float) -> list[Action]:
        if revision <= self._transcript_revision:
            return []
        self._transcript_revision = revision
        self._transcript_end = audio_end
        self.transcript = text
        return self.on_tick(t)

    def on_tick(self, t: float) -> list[Action]:
        if self.state != State.USER_PAUSED or self.speech_end is None:
            return []
        # Only a transcript that covers the latest speech counts.
        if self._transcript_end < self.speech_end:
            return []
        if not self.transcript.strip():
            # Noise, a cough: no words, no turn.
            if t - self.speech_end >= self.config.endpoint_silence_s:
                return self._set(State.LISTENING, t)
            return []
        text = self.transcript
        if t - self.speech_end >= self.required_wait(text):
            self.transcript = ""
            info = {"t": t, "speech_end": self.speech_end}
            if self.speculating == text:
                self.speculating = None
                return [Action("confirm", text=text, data=info)] + self._set(State.THINKING, t)
            actions = []
            if self.speculating is not None:
                actions.append(Action("discard", text=self.speculating, data={"t": t}))
                self.speculating = None
            return actions + [Action("commit", text=text, data=info)] + self._set(State.THINKING, t)
        if (self.config.speculate and self.speculating != text
                and completeness(text) >= self.config.speculate_min_completeness):
            actions = []
            if self.speculating is not None:
                actions.append(Action("discard", text=self.speculating, data={"t": t}))
            self.speculating = text
            return actions + [Action("speculate", text=text, data={"t": t, "speech_end": self.speech_end})]
        return []

    def on_agent_audio_started(self, t: float) -> list[Action]:
        if self.state == State.THINKING:
            return self._set(State.AGENT_SPEAKING, t)
        return []

    def on_agent_audio_stopped(self, t: float) -> list[Action]:
        if self.state in (State.AGENT_SPEAKING, State.THINKING):
            return self._set(State.LISTENING, t)
        return []

    def on_reply_failed(self, t: float) -> list[Action]:
        return []
