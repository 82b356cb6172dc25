"""Pipecat glue for native speech-to-speech models (models.native).

``NativeDuplexProcessor`` takes the user's audio (``InputAudioRawFrame``, 16 kHz
mono int16, 20 ms frames) and pushes the agent's audio (``TTSAudioRawFrame`` at
the model's rate) and text (``TTSTextFrame``).

* Full-duplex models (Moshi): input is gathered into whole model frames,
  resampled to the model's input rate and fed to ``model.step`` one frame at a
  time; every step's output frame is pushed (the model's own silence included),
  so the agent's audio keeps the input's clock.
* Half-duplex models (Mini-Omni): input is kept (at most the model's input
  window) until the turn controller says the user has finished
  (``UserTurnEndedFrame``, either direction); then ``model.respond`` runs and
  its text and audio chunks are pushed between ``TTSStartedFrame`` and
  ``TTSStoppedFrame``.

Inference runs on one dedicated worker thread per processor (ordered, off the
event loop). The model may be a ``BatchedDuplex`` (models/native/batching.py):
then ``step`` waits for the tick that steps every live session at once, and a
session refused for want of a slot (``ModelBusy``) is one log line, a
``native_refused`` event and the end of its pipeline. ``InterruptionFrame``
drops whatever the model is still producing (the reply in flight for half-duplex
models; the step in flight for full-duplex ones) and is passed on so the output
transport flushes its queue.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    EndWorkerFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.text.base_text_aggregator import TextType

from models.native.base import DuplexModel, ModelBusy, StepOutput
from voice.audio import PIPELINE_RATE, float_to_pcm16, resample
from voice.events import EventLog
from voice.frames import UserTurnEndedFrame


def _new_context() -> str:
    return uuid.uuid4().hex[:12]


class NativeDuplexProcessor(FrameProcessor):
    def __init__(self, model: DuplexModel, events: EventLog | None = None, *,
                 executor: ThreadPoolExecutor | None = None, max_backlog_s: float = 0.5,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._model = model
        self._events = events
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="native")
        self._max_backlog = max(1, int(round(max_backlog_s * 1000 / model.frame_ms)))
        self._state: Any = None
        self._in_rate: int | None = None
        self._pending = np.zeros(0, dtype=np.float32)  # input not yet a whole model frame
        self._frames: asyncio.Queue[np.ndarray] | None = None
        self._worker: asyncio.Task | None = None
        self._turn_audio: list[np.ndarray] = []  # half-duplex: the user's turn at 16 kHz
        self._turn_samples = 0
        self._reply: asyncio.Task | None = None
        self._epoch = 0  # bumped by interruptions: outputs of an older epoch are dropped
        self._context_id = _new_context()
        self._turn = 0
        self._dropped = 0

    # -- helpers ---------------------------------------------------------------
    def _emit(self, kind: str, **fields: Any) -> None:
        if self._events is not None:
            self._events.emit(kind, **fields)

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _push_output(self, out: StepOutput, context_id: str) -> None:
        if out.audio.size:
            await self.push_frame(TTSAudioRawFrame(audio=float_to_pcm16(out.audio),
                                                   sample_rate=self._model.sample_rate,
                                                   num_channels=1, context_id=context_id))
        if out.text:
            await self.push_frame(TTSTextFrame(out.text, TextType.TOKEN, context_id=context_id))

    @staticmethod
    def _mono(frame: InputAudioRawFrame) -> np.ndarray:
        pcm = np.frombuffer(frame.audio, dtype=np.int16).astype(np.float32) / 32768.0
        if frame.num_channels > 1:
            pcm = pcm.reshape(-1, frame.num_channels).mean(axis=1)
        return pcm

    # -- lifecycle ---------------------------------------------------------------
    async def _start(self) -> None:
        if self._state is None:
            try:
                self._state = await self._run(self._model.new_state)
            except ModelBusy as e:  # the batch's slots are all taken (models/native/batching.py)
                logger.warning(f"native session refused: {e}")
                self._emit("native_refused", reason=str(e))
                await self.push_frame(EndWorkerFrame(reason=f"native model busy: {e}"))
                return
        if self._model.full_duplex and self._worker is None:
            self._frames = asyncio.Queue()
            self._worker = self.create_task(self._duplex_loop(), "native_duplex")

    async def _drain(self) -> None:
        """EndFrame: finish the input already received and the reply in flight."""
        if self._frames is not None:
            await self._frames.join()
        if self._reply is not None:
            await self._reply
        await self._stop()

    async def _stop(self) -> None:
        self._epoch += 1
        for task in (self._worker, self._reply):
            if task is not None and not task.done():
                await self.cancel_task(task)
        self._worker = self._reply = None
        self._frames = None
        if self._state is not None:
            state, self._state = self._state, None
            await self._run(self._model.close_state, state)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._stop()
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- frames -----------------------------------------------------------------
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self._start()
        elif isinstance(frame, InputAudioRawFrame):
            self._on_audio(frame)
        elif isinstance(frame, UserTurnEndedFrame):
            if not self._model.full_duplex:
                await self._on_turn_end(frame.turn)
        elif isinstance(frame, InterruptionFrame):
            self._interrupt()
        elif isinstance(frame, EndFrame):
            await self._drain()
        elif isinstance(frame, CancelFrame):
            await self._stop()
        await self.push_frame(frame, direction)

    def _on_audio(self, frame: InputAudioRawFrame) -> None:
        pcm = self._mono(frame)
        if self._in_rate != frame.sample_rate:
            self._in_rate, self._pending = frame.sample_rate, np.zeros(0, dtype=np.float32)
        if not self._model.full_duplex:
            pcm16 = resample(pcm, frame.sample_rate, PIPELINE_RATE) if frame.sample_rate != PIPELINE_RATE else pcm
            self._turn_audio.append(pcm16)
            self._turn_samples += len(pcm16)
            limit = int(getattr(self._model, "max_input_s", 30.0) * PIPELINE_RATE)
            while self._turn_samples - len(self._turn_audio[0]) >= limit and len(self._turn_audio) > 1:
                self._turn_samples -= len(self._turn_audio.pop(0))
            return
        if self._frames is None:
            return  # not started yet
        need = self._model.input_frame_size * frame.sample_rate // self._model.input_rate
        self._pending = np.concatenate([self._pending, pcm])
        while len(self._pending) >= need:
            chunk, self._pending = self._pending[:need], self._pending[need:]
            if self._frames.qsize() >= self._max_backlog:  # inference is behind real time
                self._frames.get_nowait()
                self._frames.task_done()
                self._dropped += 1
                self._emit("native_dropped_input", frames=self._dropped)
            self._frames.put_nowait(chunk)

    def _interrupt(self) -> None:
        self._epoch += 1
        self._context_id = _new_context()
        if self._state is not None and hasattr(self._state, "cancelled"):
            self._state.cancelled = True
        self._emit("native_interrupted", turn=self._turn)

    # -- full duplex -----------------------------------------------------------------
    async def _duplex_loop(self) -> None:
        assert self._frames is not None
        frames = self._frames
        model = self._model
        while True:
            chunk = await frames.get()
            try:
                epoch = self._epoch
                x = resample(chunk, self._in_rate or PIPELINE_RATE, model.input_rate)
                x = np.asarray(x, dtype=np.float32)[:model.input_frame_size]
                if len(x) < model.input_frame_size:
                    x = np.pad(x, (0, model.input_frame_size - len(x)))
                out = await self._run(model.step, self._state, x)
                if epoch == self._epoch:
                    await self._push_output(out, self._context_id)
            finally:
                frames.task_done()

    # -- half duplex -------------------------------------------------------------------
    async def _on_turn_end(self, turn: int) -> None:
        audio = np.concatenate(self._turn_audio) if self._turn_audio else np.zeros(0, np.float32)
        self._turn_audio, self._turn_samples = [], 0
        if self._reply is not None and not self._reply.done():
            self._interrupt()
            await self._reply
        if self._state is None or len(audio) == 0:
            return
        self._turn = turn
        self._reply = self.create_task(self._respond(audio, turn), "native_reply")

    async def _respond(self, audio: np.ndarray, turn: int) -> None:
        epoch = self._epoch
        context_id = self._context_id = _new_context()
        state = self._state
        replies = self._model.respond(state, audio)
        t0 = time.monotonic()
        first_audio = None
        steps = 0
        text: list[str] = []
        self._emit("native_reply_start", turn=turn, user_audio_s=round(len(audio) / PIPELINE_RATE, 3))
        await self.push_frame(TTSStartedFrame(context_id=context_id))
        try:
            while True:
                out = await self._run(next, replies, None)
                if out is None or epoch != self._epoch:
                    break
                steps += 1
                if out.audio.size and first_audio is None:
                    first_audio = time.monotonic() - t0
                    self._emit("native_first_audio", turn=turn, latency_s=round(first_audio, 4))
                if out.text:
                    text.append(out.text)
                await self._push_output(out, context_id)
                if out.end:
                    break
        finally:
            try:
                await self._run(replies.close)
                await self.push_frame(TTSStoppedFrame(context_id=context_id))
            except (asyncio.CancelledError, RuntimeError):
                pass
            self._emit("native_reply_end", turn=turn, steps=steps, text="".join(text),
                       interrupted=epoch != self._epoch, seconds=round(time.monotonic() - t0, 4))
