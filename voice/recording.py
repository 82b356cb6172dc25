"""Optional per-session audio recording (``store.record_audio = true``; off by default).

Two 16 kHz mono WAV files beside the session's record, on the session's input
clock so they line up: ``user.wav`` (the microphone, as the pipeline heard it)
and ``agent.wav`` (the agent's audio as the output transport played it,
silence where it was quiet). Two pass-through taps feed them: one right after
the transport's input, one right after its output. File writes run on one
background thread, a second of audio at a time, never on the event loop.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from loguru import logger
from pipecat.frames.frames import Frame, InputAudioRawFrame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

RATE = 16000
FLUSH_SAMPLES = RATE  # hand a second of audio at a time to the writer thread

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _writer() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(1, thread_name_prefix="voice-audio")
        return _executor


class _Track:
    """One WAV file written in order on the writer thread; ``place`` puts audio at a sample position."""

    def __init__(self, path: Path):
        self.path = path
        self._file: sf.SoundFile | None = None
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self.samples = 0  # samples handed over so far (written or buffered)
        self._resamplers: dict[int, soxr.ResampleStream] = {}
        self._closed = False

    def _to_rate(self, pcm: bytes, rate: int, channels: int) -> np.ndarray:
        x = np.frombuffer(pcm, dtype=np.int16)
        if channels > 1:
            x = x.reshape(-1, channels).mean(axis=1).astype(np.int16)
        if rate == RATE:
            return x
        rs = self._resamplers.get(rate)
        if rs is None:
            rs = self._resamplers[rate] = soxr.ResampleStream(rate, RATE, 1, dtype="int16")
        return rs.resample_chunk(x)

    def append(self, pcm: bytes, rate: int, channels: int = 1, at: int | None = None) -> None:
        if self._closed:
            return
        x = self._to_rate(pcm, rate, channels)
        if at is not None and at > self.samples:  # silence up to where this audio belongs
            self._push(np.zeros(at - self.samples, np.int16))
        self._push(x)

    def _push(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        self._buf.append(x)
        self._buffered += len(x)
        self.samples += len(x)
        if self._buffered >= FLUSH_SAMPLES:
            self.flush()

    def flush(self) -> None:
        if not self._buf:
            return
        chunk = np.concatenate(self._buf)
        self._buf, self._buffered = [], 0
        _writer().submit(self._write, chunk)

    def _write(self, chunk: np.ndarray) -> None:
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = sf.SoundFile(str(self.path), "w", samplerate=RATE, channels=1, subtype="PCM_16")
            self._file.write(chunk)
        except Exception as e:
            logger.error(f"audio recording {self.path} failed: {e}")

    def close(self):
        if self._closed:
            return None
        self.flush()
        self._closed = True

        def finish():
            if self._file is None:  # nothing was ever heard or said: an empty, valid WAV
                self.path.parent.mkdir(parents=True, exist_ok=True)
                sf.SoundFile(str(self.path), "w", samplerate=RATE, channels=1, subtype="PCM_16").close()
            else:
                self._file.close()
        return _writer().submit(finish)


class _MicTap(FrameProcessor):
    def __init__(self, rec: "AudioRecorder", **kwargs):
        super().__init__(**kwargs)
        self._rec = rec

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            self._rec.user.append(frame.audio, frame.sample_rate, frame.num_channels)
        await self.push_frame(frame, direction)


class _AgentTap(FrameProcessor):
    def __init__(self, rec: "AudioRecorder", **kwargs):
        super().__init__(**kwargs)
        self._rec = rec

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM and frame.audio:
            # The output transport passes a frame on once it has played it: it started
            # one frame's duration ago on the session clock (or right after the previous one).
            seconds = len(frame.audio) / 2 / max(1, frame.num_channels) / frame.sample_rate
            at = int(max(0.0, self._rec.clock.now() - seconds) * RATE)
            self._rec.agent.append(frame.audio, frame.sample_rate, frame.num_channels, at=at)
        await self.push_frame(frame, direction)


class AudioRecorder:
    """``user.wav`` and ``agent.wav`` for one session under ``directory``."""

    def __init__(self, directory: str | Path, clock):
        self.directory = Path(directory)
        self.clock = clock
        self.user = _Track(self.directory / "user.wav")
        self.agent = _Track(self.directory / "agent.wav")

    def mic_tap(self) -> FrameProcessor:
        return _MicTap(self, name="AudioRecorderMic")

    def agent_tap(self) -> FrameProcessor:
        return _AgentTap(self, name="AudioRecorderAgent")

    async def aclose(self, wait: float = 10.0) -> None:
        """:meth:`close` without blocking the event loop."""
        import asyncio

        futures = [f for f in (self.user.close(), self.agent.close()) if f is not None]
        if futures:
            try:
                await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)), wait)
            except Exception as e:
                logger.warning(f"finishing audio recording in {self.directory} failed: {e}")

    def close(self, wait: float | None = 10.0) -> None:
        """Write what is buffered and finish both files (waits for the writer thread up to ``wait`` s)."""
        futures = [f for f in (self.user.close(), self.agent.close()) if f is not None]
        if wait:
            for f in futures:
                try:
                    f.result(wait)
                except Exception as e:
                    logger.warning(f"finishing audio recording in {self.directory} failed: {e}")
