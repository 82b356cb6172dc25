"""Streaming ASR: keeps the user's turn audio and has its transcript ready at every pause.

Whisper is not incremental, so "streaming" here means: decode the turn so far
as soon as the VAD reports a pause (not after the endpoint wait), and during
long speech refresh a partial transcript now and then. The controller gets a
TranscriptFrame per decode, tagged with a revision so a stale one is ignored.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from pipecat.frames.frames import Frame, InputAudioRawFrame, InterimTranscriptionFrame
from pipecat.processors.frame_processor import FrameDirection

from voice.audio import PIPELINE_RATE
from voice.frames import (SpeechPendingFrame, SpeechStartedFrame, SpeechStoppedFrame, TranscriptFrame,
                          UserTurnEndedFrame)
from voice.owned_tasks import OwnedTasksProcessor

PRE_ROLL_S = 0.3  # audio kept before the VAD reports a start (it needs start_s to decide)
# A start this soon after a dropped candidate also keeps the candidate's audio. A short first word
# whose stop consonant ends it ("What| is ...") can be dropped as a blip shorter than start_s, and
# the start then comes at the next word, too late for PRE_ROLL_S to reach back to the first one:
# a fresh SIP call heard "What is the capital of France?" as "but is the capital of France."
BRIDGE_S = 0.3
IDLE_KEEP_S = PRE_ROLL_S + 1.0  # audio kept while no turn is open (covers a bridged candidate)
TAIL_S = 0.15  # audio kept after the VAD's speech end (soft word endings)
SETTLE_AFTER_S = 8.0  # a decoded span this long is settled: later pauses decode only what follows


class StreamingASRProcessor(OwnedTasksProcessor):
    def __init__(self, transcriber, *, executor=None, partial_interval_s: float = 0.0,
                 max_turn_s: float = 30.0, **kwargs):
        super().__init__(**kwargs)
        self._asr = transcriber
        self._executor = executor
        self._partial_interval = partial_interval_s
        self._max_samples = int(max_turn_s * PIPELINE_RATE)
        self._buf: list[np.ndarray] = []
        self._buf_samples = 0
        self._buf_start = 0.0  # input-clock time of the first buffered sample
        self._clock_samples = 0
        self._in_turn = False
        self._speaking = False
        self._revision = 0
        self._decoding: asyncio.Task | None = None
        self._last_partial = 0.0
        # Long turns (monologues) are decoded piecewise: the text of settled spans is kept,
        # and each pause decodes only from the anchor on, so the cost stays flat.
        self._anchor: float | None = None
        self._settled = ""
        # The VAD's candidate onsets while no turn is open (SpeechPendingFrame): the first onset of
        # the current chain of candidates, and when the last one was dropped (None while one is live).
        self._chain_onset: float | None = None
        self._chain_dropped: float | None = None

    @property
    def now(self) -> float:
        return self._clock_samples / PIPELINE_RATE

    def _append(self, pcm: bytes) -> None:
        chunk = np.frombuffer(pcm, dtype=np.int16)
        self._clock_samples += len(chunk)
        self._buf.append(chunk)
        self._buf_samples += len(chunk)
        limit = self._max_samples if self._in_turn else int(IDLE_KEEP_S * PIPELINE_RATE)
        while self._buf_samples - len(self._buf[0]) >= limit:
            dropped = self._buf.pop(0)
            self._buf_samples -= len(dropped)
        self._buf_start = self.now - self._buf_samples / PIPELINE_RATE

    def _on_pending(self, onset: float | None) -> None:
        """A candidate onset from the VAD (None: it was dropped as a blip)."""
        if self._in_turn:
            return
        if onset is None:
            if self._chain_onset is not None:
                self._chain_dropped = self.now
            return
        if self._chain_onset is None or self._chain_dropped is None or self.now - self._chain_dropped > BRIDGE_S:
            self._chain_onset = onset  # a new chain; else this candidate continues the dropped one
        self._chain_dropped = None

    def _open_turn(self, onset: float) -> None:
        """Speech started: keep PRE_ROLL_S before now, reaching back further to the chain's first onset."""
        extra = max(0.0, onset - self._chain_onset) if self._chain_onset is not None else 0.0
        self._chain_onset = self._chain_dropped = None
        keep = int((PRE_ROLL_S + extra) * PIPELINE_RATE)
        while self._buf and self._buf_samples - len(self._buf[0]) >= keep:
            self._buf_samples -= len(self._buf.pop(0))
        self._buf_start = self.now - self._buf_samples / PIPELINE_RATE
        self._in_turn = True

    def _turn_audio(self, since: float | None, until: float) -> np.ndarray:
        audio = np.concatenate(self._buf) if self._buf else np.zeros(0, np.int16)
        start = 0 if since is None else int(max(0.0, since - self._buf_start) * PIPELINE_RATE)
        keep = int(max(0.0, until - self._buf_start) * PIPELINE_RATE)
        return audio[start:keep].astype(np.float32) / 32768.0

    async def _decode(self, until: float, final: bool) -> None:
        self._revision += 1
        revision = self._revision
        since = self._anchor
        audio = self._turn_audio(since, until)
        settle = final and len(audio) / PIPELINE_RATE >= SETTLE_AFTER_S
        if settle:
            self._anchor = until  # later decodes start here (decodes complete in order)
        started = time.perf_counter()
        try:
            submit = getattr(self._asr, "submit", None)
            if submit is not None:  # batched with other sessions' decodes (models.asr.BatchingTranscriber)
                text = await asyncio.wrap_future(submit(audio))
            else:
                text = await asyncio.get_running_loop().run_in_executor(self._executor, self._asr.transcribe, audio)
        except Exception as e:  # a failing ASR must not kill the session
            await self.push_error(f"ASR failed: {e}", exception=e)
            text = ""
            if final:
                # The turn's words are lost: the turn processor apologises (error on the
                # TranscriptFrame) and the next turn starts from fresh audio.
                error = f"ASR failed: {e}"
                self._in_turn = False
                self._append(b"")
                await self.push_frame(TranscriptFrame(text="", revision=revision, audio_end=until,
                                                      asr_seconds=time.perf_counter() - started, final=True,
                                                      error=error))
                return
        took = time.perf_counter() - started
        text = " ".join(p for p in (self._settled, text) if p).strip()
        if settle:
            self._settled = text
        if final:
            await self.push_frame(TranscriptFrame(text=text, revision=revision, audio_end=until,
                                                  asr_seconds=took, final=True))
        elif text:
            await self.push_frame(InterimTranscriptionFrame(text=text, user_id="user", timestamp=""))

    def _start_decode(self, until: float, final: bool) -> None:
        self._decoding = self.start_owned_task(self._decode(until, final), name="asr-decode")

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._append(frame.audio)
            if (self._speaking and self._partial_interval > 0
                    and (self._decoding is None or self._decoding.done())
                    and self.now - self._last_partial >= self._partial_interval):
                self._last_partial = self.now
                self._start_decode(self.now, final=False)
        elif isinstance(frame, SpeechPendingFrame):
            self._on_pending(frame.onset)
        elif isinstance(frame, SpeechStartedFrame):
            self._speaking = True
            if not self._in_turn:
                self._open_turn(frame.onset)
                self._last_partial = self.now
        elif isinstance(frame, SpeechStoppedFrame):
            self._speaking = False
            self._start_decode(frame.end + TAIL_S, final=True)
        elif isinstance(frame, UserTurnEndedFrame):
            self._in_turn = False
            self._anchor, self._settled = None, ""
            self._chain_onset = self._chain_dropped = None
            self._append(b"")  # trim to what is kept between turns
            return  # consumed: nobody upstream needs it
        await self.push_frame(frame, direction)
