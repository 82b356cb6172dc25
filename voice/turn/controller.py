"""The turn-taking state machine, driven by events on the input clock.

Pure logic, no pipecat and no I/O: each ``on_*`` method takes the time and
returns the actions to carry out. The pipecat processor in ``processor.py``
turns frames into these calls and actions into frames, so both engines and
every transport share exactly this behaviour, and unit tests drive it with
synthetic event streams.

Decisions:
- end of turn: at every pause, fuse Smart Turn's probability with text cues of
  the transcript, and wait a silence that is short when the turn reads complete
  and long (up to ``max_wait_s``) when it does not; long turns (monologues) get a
  longer wait unless they end on a question;
- speculation: start the reply as soon as a complete-looking transcript is
  ready; the gate plays it only when the endpoint is confirmed;
- backchannels: at a pause in a long user turn that is not a turn end;
- barge-in: user speech over the agent stops it at once; if what the user said
  turns out to be nothing (noise, a cough) or only a backchannel, the agent
  resumes the cut reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from voice.turn.completeness import completeness, ends_open, is_request


class State(str, Enum):
    LISTENING = "listening"          # nobody speaks
    USER_SPEAKING = "user_speaking"
    USER_PAUSED = "user_paused"      # user stopped; not yet a turn end
    THINKING = "thinking"            # turn committed, reply not audible yet
    AGENT_SPEAKING = "agent_speaking"


@dataclass
class Action:
    # speculate | confirm | discard | commit | interrupt | backchannel | resume | state
    kind: str
    text: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class TurnConfig:
    """Thresholds; defaults chosen with the FDB harness (see docs/turn-taking.md)."""

    endpoint_silence_s: float = 0.45   # wait after a complete question or request
    statement_wait_s: float = 1.0      # ... after a complete statement (it may be the first of several)
    mid_wait_s: float = 1.2            # ... when the evidence is mixed
    max_wait_s: float = 2.5            # ... when the turn reads unfinished
    # Statements in a long turn are likely a monologue: the wait grows with the
    # speech so far (s of wait per s of speech), up to monologue_max_wait_s.
    monologue_wait_per_s: float = 0.12
    monologue_max_wait_s: float = 1.8
    # A statement Smart Turn is this sure of (P(complete) at or over it), with text that
    # reads complete, is taken after endpoint_silence_s like a question; in a long turn
    # the wait grows by monologue_wait_per_s for each s of speech past
    # confident_monologue_after_s. Real voices: Smart Turn (trained on human speech) tells
    # a finished statement from a held one better than the words (docs/turn-taking.md).
    # Above 1: off.
    smart_turn_confident_p: float = 0.95
    confident_monologue_after_s: float = 0.0
    complete_p: float = 0.6            # fused completion probability for the short wait
    incomplete_p: float = 0.3          # below this, the long wait
    smart_turn_weight: float = 0.35    # Smart Turn vs text cues in the fused probability
    # Smart Turn this sure the turn goes on (P(complete) below this) vetoes the short
    # wait that the text alone would give: the recogniser makes whole questions out of
    # cut-offs ("Is it a good idea to" -> "Is it a good idea to act?"). Off (0) by
    # default: Smart Turn scores many complete questions in espeak-ng voices 0.01-0.03
    # (docs/turn-taking.md); 0.05 suits callers whose speech it judges well.
    smart_turn_veto_p: float = 0.0
    speculate: bool = True             # engines that cannot discard a started reply turn it off
    speculate_min_p: float = 0.5
    # Start the reply this long before the endpoint would be confirmed (the time it
    # needs to be audible); earlier starts only burn CPU and block backchannels.
    speculate_lead_s: float = 0.6
    backchannels: bool = True
    backchannel_min_turn_s: float = 3.0   # the user must have been talking this long
    backchannel_after_s: float = 0.35     # into the pause
    backchannel_min_interval_s: float = 7.0
    # After a backchannel, no reply in the same pause for this long (from its start).
    backchannel_hold_s: float = 1.2
    resume_after_s: float = 0.3        # silence after a false interruption before resuming
    false_interruption_max_s: float = 1.2  # longer than this is never "just a backchannel"


BACKCHANNEL_WORDS = {
    "yeah", "yes", "yep", "yup", "uh-huh", "uh", "huh", "mm-hmm", "mhm", "mm", "hmm", "hm", "okay",
    "ok", "right", "sure", "alright", "aha", "ah", "oh", "i", "see", "got", "it", "cool", "nice",
    "wow", "really", "true", "exactly", "totally", "mmhmm", "um", "uhhuh",
}


def is_backchannel(text: str) -> bool:
    """'yeah', 'uh-huh', 'okay', 'I see' alone: acknowledgements, not a bid for the turn."""
    words = re.findall(r"[a-z'-]+", text.lower())
    return 0 < len(words) <= 2 and all(w.strip("'-") in BACKCHANNEL_WORDS for w in words)


class TurnController:
    def __init__(self, config: TurnConfig):
        self.config = config
        self.state = State.LISTENING
        self.turn = 0
        self.speech_end: float | None = None
        self.transcript = ""
        self._transcript_end = -1.0
        self._transcript_revision = -1
        self._smart_p: float | None = None
        self.speculating: str | None = None  # text of the held, not yet confirmed reply
        self._turn_speech_s = 0.0            # speech so far in this user turn
        self._segment_start: float | None = None
        self._last_backchannel = -1e9
        self._backchannel_done_for: float | None = None  # the pause that got one
        self._backchannel_silence = 0.0                  # ... and how far into it
        self.barge_in: dict | None = None    # the interruption being judged (real or false)
        # The VAD hears a possible onset it has not confirmed yet (vad.start_s): the user
        # may be going on, so the agent takes no turn, backchannel or resume until it decides.
        self._pending_onset: float | None = None
        self._interjection = False  # the current turn began by cutting the agent off

    # --- helpers -------------------------------------------------------------------
    def _set(self, state: State, t: float) -> list[Action]:
        if state == self.state:
            return []
        self.state = state
        return [Action("state", data={"state": state.value, "t": t})]

    def completion_probability(self, text: str, smart_p: float | None) -> float:
        """Fuse the acoustic-prosodic model (Smart Turn) with text cues."""
        c = completeness(text)
        if c <= 0.2:
            return min(c, smart_p if smart_p is not None else c)  # a trailing "and"/"um" wins
        if smart_p is None:
            return c
        if ends_open(text):
            return smart_p  # "What should I do?" or a cut-off "...whether I should.": prosody decides
        w = self.config.smart_turn_weight
        return w * smart_p + (1 - w) * c

    def smart_turn_matters(self, text: str) -> bool:
        """Could Smart Turn's probability change the decision on this transcript?

        Not when the text alone settles it (a trailing "and"; or, with the veto
        off, a clear question whose fused probability is complete whatever Smart
        Turn says); then the model is not run, and its CPU goes to the reply instead.
        """
        c = completeness(text)
        if c <= 0.2:
            return False
        cfg = self.config
        if cfg.smart_turn_confident_p <= 1.0 and not is_request(text):
            return True  # a statement: Smart Turn's confidence may shorten its wait
        return cfg.smart_turn_veto_p > 0 or (1 - cfg.smart_turn_weight) * c < cfg.complete_p

    def required_wait(self, text: str, smart_p: float | None = None) -> float:
        """Silence needed before the turn counts as ended."""
        cfg = self.config
        if ends_open(text):
            # "What should I do?" or a cut-off "...ideas for?": no short wait on the
            # acoustic model's word alone (it misfires on cut-offs in synthetic voices),
            # but not the 2.5 s of a clear cut-off either when it hears an ending.
            return cfg.mid_wait_s if smart_p is not None and smart_p >= cfg.complete_p else cfg.max_wait_s
        p = self.completion_probability(text, smart_p)
        if p <= cfg.incomplete_p:
            return cfg.max_wait_s
        # Not after a barge-in: the agent has just gone quiet mid-reply, the user's
        # interjection is a whole short bid ("Wait, what about Paris?"), and a second of
        # silence after it sounds like a broken agent.
        vetoed = smart_p is not None and smart_p < cfg.smart_turn_veto_p and not self._interjection
        complete = p >= cfg.complete_p and not vetoed
        if complete and is_request(text):
            return cfg.endpoint_silence_s
        if complete and smart_p is not None and smart_p >= cfg.smart_turn_confident_p:
            past = max(0.0, self._turn_speech_s - cfg.confident_monologue_after_s)
            return min(max(cfg.monologue_max_wait_s, cfg.endpoint_silence_s),
                       cfg.endpoint_silence_s + cfg.monologue_wait_per_s * past)
        base = cfg.statement_wait_s if complete else cfg.mid_wait_s
        monologue = min(cfg.monologue_max_wait_s, cfg.statement_wait_s + cfg.monologue_wait_per_s * self._turn_speech_s)
        return max(base, monologue)

    def _evidence_ready(self) -> bool:
        return self.speech_end is not None and self._transcript_end >= self.speech_end

    # --- inputs --------------------------------------------------------------------
    def on_speech_pending(self, t: float, onset: float | None) -> list[Action]:
        self._pending_onset = onset
        return self.on_tick(t) if onset is None else []

    def on_speech_started(self, t: float, onset: float) -> list[Action]:
        self._pending_onset = None
        actions: list[Action] = []
        if self.state in (State.THINKING, State.AGENT_SPEAKING):
            actions.append(Action("interrupt", data={"t": t, "onset": onset, "state": self.state.value}))
            self.barge_in = {"onset": onset, "t": t}
            self._new_turn()
            self._interjection = True
        elif self.state == State.LISTENING:
            self._new_turn()
        elif self.state == State.USER_PAUSED and self.speculating is not None:
            # The user went on: the early reply was premature, drop it unheard.
            actions.append(Action("discard", text=self.speculating, data={"t": t}))
            self.speculating = None
        self._segment_start = onset
        self.speech_end = None
        return actions + self._set(State.USER_SPEAKING, t)

    def _new_turn(self) -> None:
        self.turn += 1
        self._interjection = False
        self.transcript = ""
        self._turn_speech_s = 0.0
        self._smart_p = None

    def on_speech_stopped(self, t: float, end: float) -> list[Action]:
        if self.state != State.USER_SPEAKING:
            return []
        if self._segment_start is not None:
            self._turn_speech_s += max(0.0, end - self._segment_start)
        self.speech_end = end
        self._smart_p = None
        return self._set(State.USER_PAUSED, t)

    def on_transcript(self, t: float, text: str, revision: int, audio_end: float) -> list[Action]:
        if revision <= self._transcript_revision:
            return []
        self._transcript_revision = revision
        self._transcript_end = audio_end
        self.transcript = text
        return self.on_tick(t)

    def on_turn_probability(self, t: float, probability: float, audio_end: float) -> list[Action]:
        if self.speech_end is not None and audio_end >= self.speech_end:
            self._smart_p = probability
        return self.on_tick(t)

    def on_tick(self, t: float) -> list[Action]:
        if self.state != State.USER_PAUSED or self.speech_end is None:
            return []
        # What may be the user's next word is under way (vad.start_s undecided): a turn
        # end, a backchannel or a resume now would talk over it. Speculating stays allowed.
        held = self._pending_onset is not None and t - self._pending_onset < 1.0  # the VAD decides within start_s
        if not self._evidence_ready():
            # The transcript is late (a long decode): an acknowledgement needs none,
            # only a long turn and a pause; the turn end waits for the words.
            if not held and self.barge_in is None and self._backchannel_due(t, t - self.speech_end, self.config.max_wait_s):
                return self._backchannel(t)
            return []
        silence = t - self.speech_end
        text = self.transcript
        if self.barge_in is not None:
            return [] if held else self._judge_barge_in(t, silence, text)
        if not text.strip():
            # Noise, a cough: no words, no turn.
            if silence >= self.config.endpoint_silence_s:
                return self._set(State.LISTENING, t)
            return []
        wait = self.required_wait(text, self._smart_p)
        if self._backchannel_done_for == self.speech_end:
            # The agent acknowledged this pause ("mm-hmm", at most 0.8 s): a reply straight
            # after it ("Yeah, yeah, that's true.") sounds like the agent talking over itself.
            # It answers only once the user has stayed quiet a while after the acknowledgement.
            wait = max(wait, self._backchannel_silence + self.config.backchannel_hold_s)
        if silence >= wait and not held:
            return self._end_turn(t, text)
        actions: list[Action] = []
        p = self.completion_probability(text, self._smart_p)
        if (self.config.speculate and self.speculating != text and p >= self.config.speculate_min_p
                and silence >= wait - self.config.speculate_lead_s):
            if self.speculating is not None:
                actions.append(Action("discard", text=self.speculating, data={"t": t}))
            self.speculating = text
            actions.append(Action("speculate", text=text, data={"t": t, "speech_end": self.speech_end}))
        elif not held and self._backchannel_due(t, silence, wait):
            actions += self._backchannel(t)
        return actions

    def _backchannel(self, t: float) -> list[Action]:
        self._last_backchannel = t
        self._backchannel_done_for = self.speech_end
        self._backchannel_silence = t - self.speech_end if self.speech_end is not None else 0.0
        return [Action("backchannel", data={"t": t})]

    def _backchannel_due(self, t: float, silence: float, wait: float) -> bool:
        cfg = self.config
        return (cfg.backchannels and self.speculating is None
                and self._turn_speech_s >= cfg.backchannel_min_turn_s
                and silence >= cfg.backchannel_after_s
                and wait - silence >= 0.3  # not when the turn is about to be taken anyway
                and self._backchannel_done_for != self.speech_end
                and t - self._last_backchannel >= cfg.backchannel_min_interval_s)

    def _end_turn(self, t: float, text: str) -> list[Action]:
        self.transcript = ""
        info = {"t": t, "speech_end": self.speech_end}
        if self.speculating == text:
            self.speculating = None
            return [Action("confirm", text=text, data=info)] + self._set(State.THINKING, t)
        actions: list[Action] = []
        if self.speculating is not None:
            actions.append(Action("discard", text=self.speculating, data={"t": t}))
            self.speculating = None
        return actions + [Action("commit", text=text, data=info)] + self._set(State.THINKING, t)

    def _judge_barge_in(self, t: float, silence: float, text: str) -> list[Action]:
        """After speech cut the agent off: was it a real turn, or noise/a backchannel?"""
        cfg = self.config
        assert self.barge_in is not None and self.speech_end is not None
        spoken = self.speech_end - self.barge_in["onset"]
        false_alarm = (not text.strip()) or (is_backchannel(text) and spoken <= cfg.false_interruption_max_s)
        if not false_alarm:
            self.barge_in = None  # a real interruption: it is the user's turn now
            return self.on_tick(t)
        if silence < cfg.resume_after_s:
            return []
        self.barge_in = None
        self.transcript = ""
        return [Action("resume", text=text, data={"t": t})] + self._set(State.THINKING, t)

    def on_agent_audio_started(self, t: float) -> list[Action]:
        if self.state == State.THINKING:
            return self._set(State.AGENT_SPEAKING, t)
        return []

    def on_agent_audio_stopped(self, t: float, *, reply_pending: bool = False) -> list[Action]:
        """``reply_pending``: what played was a filler and the reply is still coming (a tool
        is running, voice/tools): the agent is thinking, not done; talking now is a barge-in."""
        if reply_pending and self.state == State.AGENT_SPEAKING:
            return self._set(State.THINKING, t)
        if self.state in (State.AGENT_SPEAKING, State.THINKING) and not reply_pending:
            return self._set(State.LISTENING, t)
        return []
