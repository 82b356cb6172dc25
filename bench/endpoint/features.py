"""The turn controller's inputs for one recording, computed offline.

A live session sees, on the input clock: the VAD's speech starts, stops and
candidate onsets (at the end of the 20 ms frame that decided them), then at
every pause a transcript of the turn so far and, after it on the same analysis
thread, Smart Turn's probability. ``extract`` produces exactly those events for
a whole input file, with the arrival times a live session would have on this
machine (each pause's decode and Smart Turn run timed here), and the pauses
between them labelled from the FDB metadata:

- ``eot``: the user's turn really ended here (smooth turn-taking: the pause
  that holds ``turn_taking.json``'s ``s``; user interruption: the quiet after
  the first utterance and the end of the interruption);
- ``hold``: the user goes on after it (every other pause followed by speech);
- no label: the recording ends in it and nobody knows (a pause set's last word).

Unlike a live session, Smart Turn is run at every pause (the live pipeline
skips it where the text alone decides; the replay drops it there), and the
turn is never cut short by a decision: every pause is judged as the live
controller would judge it had it listened through the pauses before.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from voice.audio import FRAME_MS, PIPELINE_RATE, float_to_pcm16, frames

FRAME_S = FRAME_MS / 1000
EOT_TOLERANCE_S = 0.5  # a labelled turn end up to this long before the VAD's end still marks that pause


@dataclass
class Pause:
    """One VAD pause: from the end of speech to the next candidate onset."""

    index: int
    turn: int               # labelled user turn (0-based) it belongs to
    end: float              # the VAD's end of speech
    stop_at: float          # when the VAD reported the stop (end + vad.stop_s, on the frame grid)
    resume: float | None    # the next candidate onset (first speech frame), None: the input ends silent
    label: str | None       # "eot" | "hold" | None (unknown: the input ends here)
    text: str = ""          # the turn so far, as decoded at this pause
    asr_s: float = 0.0      # decode time
    smart_p: float | None = None
    smart_s: float = 0.0    # Smart Turn's run time
    speech_s: float = 0.0   # speech in this turn up to the pause
    lm_p: float | None = None   # a language model's P(the utterance ends here) (bench/endpoint/lm.py)
    lm_s: float = 0.0           # its run time


@dataclass
class Recording:
    name: str
    task: str
    duration: float
    events: list[dict[str, Any]] = field(default_factory=list)   # arrival-ordered controller inputs
    pauses: list[Pause] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "duration": self.duration, "events": self.events,
                "pauses": [asdict(p) for p in self.pauses]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Recording":
        return cls(data["name"], data["task"], data["duration"], list(data["events"]),
                   [Pause(**p) for p in data["pauses"]])


def turn_end_marks(task: str, meta: list | None) -> tuple[list[float], list[float]]:
    """(labelled turn ends, onsets that follow a turn end) from FDB metadata."""
    if task == "smooth_turn_taking" and meta:
        return [float(meta[0]["timestamp"][0])], []
    if task == "user_interruption" and meta:
        s, e = (float(v) for v in meta[0]["timestamp"])
        return [e], [s]   # the quiet before the interruption ends a turn too
    return [], []


def label_pause(end: float, resume: float | None, ends: list[float], next_turn_onsets: list[float]) -> str | None:
    stop = resume if resume is not None else float("inf")
    if any(end - EOT_TOLERANCE_S <= e < stop for e in ends):
        return "eot"
    if resume is not None and any(abs(resume - s) <= EOT_TOLERANCE_S for s in next_turn_onsets):
        return "eot"
    return "hold" if resume is not None else None


def extract(audio: np.ndarray, *, name: str, task: str, meta: list | None, vad_settings, transcriber,
            smart_turn) -> Recording:
    """Run the VAD frame by frame, decode and score every pause; see the module docstring."""
    from voice import asr as live_asr
    from voice import smart_turn as live_smart_turn
    from voice.vad import SpeechDetector

    # What the live pipeline decodes: 16-bit samples (whisper tiny flips words on a rounding).
    audio = np.frombuffer(float_to_pcm16(audio), dtype=np.int16).astype(np.float32) / 32768.0
    detector = SpeechDetector(aggressiveness=vad_settings.webrtc_aggressiveness,
                              threshold=vad_settings.silero_threshold,
                              start_s=vad_settings.start_s, stop_s=vad_settings.stop_s)
    ends, next_turn_onsets = turn_end_marks(task, meta)
    boundaries = sorted([e + FRAME_S for e in ends] + [s - EOT_TOLERANCE_S for s in next_turn_onsets])
    rec = Recording(name, task, len(audio) / PIPELINE_RATE)
    events = rec.events
    turn, turn_audio_start, anchor, settled = 0, None, None, ""
    segment_start, speech_s = None, 0.0
    analysis_free = 0.0   # the live analysis thread runs one job at a time
    open_pauses: list[Pause] = []   # pauses whose next onset is not known yet
    chain_onset: float | None = None    # the VAD's candidate onsets since the last start (see voice/asr.py)
    chain_dropped: float | None = None

    for i, pcm in enumerate(frames(audio)):
        now = (i + 1) * FRAME_S
        for kind, value in detector.process(pcm):
            if kind == "pending":
                events.append({"at": now, "event": "pending", "onset": value})
                if value is not None:
                    for p in open_pauses:
                        p.resume = value
                    open_pauses.clear()
                    # The live ASR chains candidates a dropped one precedes by at most BRIDGE_S.
                    if chain_onset is None or chain_dropped is None or now - chain_dropped > live_asr.BRIDGE_S:
                        chain_onset = value
                    chain_dropped = None
                elif chain_onset is not None:
                    chain_dropped = now
                continue
            if kind == "start":
                events.append({"at": now, "event": "start", "onset": value})
                segment_start = value
                if boundaries and value >= boundaries[0]:
                    # Speech after a labelled turn end: a new turn, as after a live commit.
                    while boundaries and value >= boundaries[0]:
                        boundaries.pop(0)
                    turn, turn_audio_start, anchor, settled, speech_s = turn + 1, None, None, "", 0.0
                if turn_audio_start is None:
                    # The ASR keeps PRE_ROLL_S before the moment the start is reported, and reaches
                    # back to a candidate the VAD dropped just before it (voice/asr.py, BRIDGE_S).
                    extra = max(0.0, value - chain_onset) if chain_onset is not None else 0.0
                    turn_audio_start = max(0.0, now - live_asr.PRE_ROLL_S - extra)
                chain_onset = chain_dropped = None
                continue
            end = value
            events.append({"at": now, "event": "stop", "end": end})
            speech_s += max(0.0, end - (segment_start if segment_start is not None else end))
            since = anchor if anchor is not None else turn_audio_start or 0.0
            until = end + live_asr.TAIL_S
            clip = audio[int(since * PIPELINE_RATE):int(until * PIPELINE_RATE)].astype(np.float32)
            started = time.perf_counter()
            text = transcriber.transcribe(clip)
            asr_s = time.perf_counter() - started
            if len(clip) / PIPELINE_RATE >= live_asr.SETTLE_AFTER_S:
                anchor = until
            text = " ".join(x for x in (settled, text) if x).strip()
            if anchor == until:
                settled = text
            asr_at = max(now, analysis_free) + asr_s
            window_end = end + live_smart_turn.TAIL_S
            window = audio[max(0, int((window_end - live_smart_turn.WINDOW_S) * PIPELINE_RATE)):
                           int(window_end * PIPELINE_RATE)].astype(np.float32)
            started = time.perf_counter()
            smart_p = float(smart_turn.probability(window))
            smart_s = time.perf_counter() - started
            analysis_free = asr_at + smart_s
            events.append({"at": asr_at, "event": "transcript", "text": text, "audio_end": until,
                           "asr_s": asr_s})
            events.append({"at": asr_at + smart_s, "event": "probability", "p": smart_p, "audio_end": end,
                           "smart_s": smart_s})
            pause = Pause(len(rec.pauses), turn, end, now, None, None, text, asr_s, smart_p, smart_s, speech_s)
            rec.pauses.append(pause)
            open_pauses.append(pause)
    for p in rec.pauses:
        p.label = label_pause(p.end, p.resume, ends, next_turn_onsets)
    events.sort(key=lambda e: e["at"])
    return rec
