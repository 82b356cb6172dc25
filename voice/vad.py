"""Speech activity: webrtcvad as the cheap gate on every 20 ms frame, Silero to confirm.

Emits SpeechStartedFrame / SpeechStoppedFrame on the input clock (sample count,
not wall time, so it is exact whatever the event loop does).
"""

from __future__ import annotations

import threading
from importlib import resources

import numpy as np
import webrtcvad
from pipecat.audio.vad.silero import SileroOnnxModel
from pipecat.frames.frames import Frame, InputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voice.audio import PIPELINE_RATE, resample_pcm16
from voice.frames import SpeechPendingFrame, SpeechStartedFrame, SpeechStoppedFrame

SILERO_WINDOW = 512  # samples at 16 kHz (32 ms)


def silero_model_path() -> str:
    return str(resources.files("pipecat.audio.vad").joinpath("data/silero_vad.onnx"))


_silero_session = None
_silero_lock = threading.Lock()


def shared_silero() -> SileroOnnxModel:
    """A Silero model with its own recurrent state over the one ONNX session of the process.

    pipecat's SileroOnnxModel opens an onnxruntime InferenceSession per
    instance (about 10 MB each); the session is stateless and thread-safe
    (the LSTM state is passed in and out), so every conversation shares one.
    """
    global _silero_session
    with _silero_lock:
        if _silero_session is None:
            _silero_session = SileroOnnxModel(silero_model_path()).session
    model = SileroOnnxModel.__new__(SileroOnnxModel)
    model.session = _silero_session
    model.sample_rates = [8000, 16000]
    model.reset_states()
    return model


class SpeechDetector:
    """Frame-by-frame speech decision with start/stop hysteresis. Pure, no pipecat."""

    def __init__(self, *, aggressiveness: int, threshold: float, start_s: float, stop_s: float):
        self._webrtc = webrtcvad.Vad(aggressiveness)
        self._silero = shared_silero()
        self._threshold = threshold
        self._start_s = start_s
        self._stop_s = stop_s
        self._pending = np.zeros(0, dtype=np.float32)
        self._prob = 0.0
        self.samples = 0  # input clock in samples
        self.speaking = False
        self._run_start: float | None = None  # first speech frame of a candidate start
        self._last_speech_end = 0.0
        self._echo = None

    @property
    def now(self) -> float:
        return self.samples / PIPELINE_RATE

    def process(self, pcm: bytes, echo=None) -> list[tuple[str, float | None]]:
        """Feed 16 kHz int16 mono (any multiple of 10 ms); return events in order.

        ("start", onset) and ("stop", end) bound speech; while silent, ("pending", onset)
        marks the first speech frame of a candidate start and ("pending", None) its end
        without one.

        ``echo`` (an EchoGuard) vetoes frames that the agent's own playback explains.
        """
        self._echo = echo
        out: list[tuple[str, float]] = []
        n10 = PIPELINE_RATE // 100
        samples = np.frombuffer(pcm, dtype=np.int16)
        for i in range(0, len(samples) - n10 + 1, 2 * n10 if len(samples) >= 2 * n10 else n10):
            chunk = samples[i:i + 2 * n10] if len(samples) - i >= 2 * n10 else samples[i:i + n10]
            out.extend(self._frame(chunk))
        return out

    def _frame(self, chunk: np.ndarray) -> list[tuple[str, float | None]]:
        t0 = self.now
        self.samples += len(chunk)
        t1 = self.now
        audio = chunk.astype(np.float32) / 32768.0
        gate = self._webrtc.is_speech(chunk.tobytes(), PIPELINE_RATE)
        self._pending = np.concatenate([self._pending, audio])
        while len(self._pending) >= SILERO_WINDOW:
            window, self._pending = self._pending[:SILERO_WINDOW], self._pending[SILERO_WINDOW:]
            # The gate keeps Silero's cost off silence; its state still sees every window.
            self._prob = float(self._silero(window[None, :], PIPELINE_RATE)[0][0]) if gate or self.speaking else 0.0
        is_speech = gate and self._prob >= self._threshold
        if is_speech and self._echo is not None and self._echo.is_echo(audio, t0):
            is_speech = False
        events: list[tuple[str, float | None]] = []
        if is_speech:
            self._last_speech_end = t1
            if not self.speaking:
                if self._run_start is None:
                    self._run_start = t0
                    events.append(("pending", t0))
                if t1 - self._run_start >= self._start_s:
                    self.speaking = True
                    events.append(("start", self._run_start))
        else:
            if not self.speaking and self._run_start is not None and t1 - self._last_speech_end > 0.06:
                self._run_start = None  # a blip shorter than start_s
                events.append(("pending", None))
            if self.speaking and t1 - self._last_speech_end >= self._stop_s:
                self.speaking = False
                self._run_start = None
                events.append(("stop", self._last_speech_end))
        return events


class VADProcessor(FrameProcessor):
    """Runs SpeechDetector on input audio; passes audio through and adds speech frames."""

    def __init__(self, vad_settings, *, echo_guard=None, **kwargs):
        super().__init__(**kwargs)
        self._settings = vad_settings
        self.echo_guard = echo_guard
        self.detector = self._new_detector()

    def _new_detector(self) -> SpeechDetector:
        s = self._settings
        return SpeechDetector(aggressiveness=s.webrtc_aggressiveness, threshold=s.silero_threshold,
                              start_s=s.start_s, stop_s=s.stop_s)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            pcm = frame.audio
            if frame.num_channels != 1:
                pcm = np.frombuffer(pcm, dtype=np.int16).reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16).tobytes()
            if frame.sample_rate != PIPELINE_RATE:
                pcm = resample_pcm16(pcm, frame.sample_rate, PIPELINE_RATE)
            frame = InputAudioRawFrame(audio=pcm, sample_rate=PIPELINE_RATE, num_channels=1)
            events = self.detector.process(pcm, self.echo_guard)
            await self.push_frame(frame, direction)
            for kind, t in events:
                if kind == "start":
                    await self.push_frame(SpeechStartedFrame(onset=t))
                elif kind == "pending":
                    await self.push_frame(SpeechPendingFrame(onset=t))
                else:
                    await self.push_frame(SpeechStoppedFrame(end=t))
            return
        await self.push_frame(frame, direction)
