"""Runs Smart Turn on the user's speech at every pause whose transcript leaves the turn end open."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from pipecat.frames.frames import Frame, InputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection

from voice.audio import PIPELINE_RATE
from voice.frames import SpeechStartedFrame, SpeechStoppedFrame, TranscriptFrame, TurnProbabilityFrame
from voice.owned_tasks import OwnedTasksProcessor

WINDOW_S = 8.0   # what the model looks at
TAIL_S = 0.1     # the model was trained on clips that end at the speech end, not in silence


class SmartTurnProcessor(OwnedTasksProcessor):
    def __init__(self, model, *, needed, executor=None, **kwargs):
        super().__init__(**kwargs)
        self._model = model
        self._executor = executor
        # needed(text) -> bool: does the controller need the model for this transcript?
        self._needed = needed
        self._pause_end: float | None = None  # the pause still waiting for its transcript
        self._ring = np.zeros(int((WINDOW_S + 1.0) * PIPELINE_RATE), dtype=np.int16)
        self._samples = 0  # input clock

    def _append(self, pcm: bytes) -> None:
        chunk = np.frombuffer(pcm, dtype=np.int16)[-len(self._ring):]
        size, pos = len(self._ring), self._samples % len(self._ring)
        first = min(len(chunk), size - pos)
        self._ring[pos:pos + first] = chunk[:first]
        self._ring[: len(chunk) - first] = chunk[first:]
        self._samples += len(chunk)

    def _last(self, n: int, skip: int) -> np.ndarray:
        """The ``n`` samples that end ``skip`` samples before now (oldest first)."""
        size = len(self._ring)
        n = min(n, size - skip, self._samples - skip)
        if n <= 0:
            return np.zeros(0, np.int16)
        end = (self._samples - skip) % size
        idx = (np.arange(end - n, end)) % size
        return self._ring[idx]

    def _submit(self, end: float) -> asyncio.Future:
        """Queue the prediction on the analysis executor now, before the transcript goes on.

        The reply starts from that transcript; the LLM picks its thread count from
        what the analysis executor holds (models/cpu.py), so the job must be there first.
        """
        now = self._samples / PIPELINE_RATE
        back = int(max(0.0, now - (end + TAIL_S)) * PIPELINE_RATE)
        audio = self._last(int(WINDOW_S * PIPELINE_RATE), back).astype(np.float32) / 32768.0
        return asyncio.get_running_loop().run_in_executor(self._executor, self._model.probability, audio)

    async def _predict(self, end: float, job: asyncio.Future) -> None:
        started = time.perf_counter()
        try:
            p = await job
        except Exception as e:  # the controller falls back to text cues
            await self.push_error(f"Smart Turn failed: {e}", exception=e)
            return
        await self.push_frame(TurnProbabilityFrame(probability=p, audio_end=end,
                                                   seconds=time.perf_counter() - started))

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and frame.audio:
            self._append(frame.audio)
        elif isinstance(frame, SpeechStoppedFrame):
            self._pause_end = frame.end
        elif isinstance(frame, SpeechStartedFrame):
            self._pause_end = None
        elif (isinstance(frame, TranscriptFrame) and self._pause_end is not None
              and frame.audio_end >= self._pause_end):
            # The analysis executor runs the ASR first anyway: waiting for its text costs nothing.
            end, self._pause_end = self._pause_end, None
            if frame.error or self._needed(frame.text):
                self.start_owned_task(self._predict(end, self._submit(end)), name="smart-turn")
        await self.push_frame(frame, direction)
