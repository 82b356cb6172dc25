"""Echo guard: the agent's own voice coming back through the user's microphone must not barge in.

Phones and speakerphones have no echo canceller on the client, so the agent
hears itself. We know exactly what was played (the playback reference), so a
microphone frame is taken as echo unless it is clearly louder than anything
the agent played in the last ``tail_s`` (a Geigel double-talk test: the echo
path loses at least ``1/ratio`` of the level, a near-end talker does not).
"""

from __future__ import annotations

import numpy as np
from pipecat.frames.frames import Frame, OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voice.audio import PIPELINE_RATE, resample


class EchoGuard:
    def __init__(self, clock, *, ratio: float = 0.5, tail_s: float = 0.3, history_s: float = 2.0):
        self._clock = clock
        self.ratio = ratio
        self.tail_s = tail_s
        self._hop = PIPELINE_RATE // 100  # 10 ms peak envelope
        self._peaks: list[tuple[float, float]] = []  # (t, peak) of played audio, input clock
        self._history_s = history_s

    def played(self, audio: np.ndarray, rate: int, t_start: float | None = None) -> None:
        """Record audio the listener hears from ``t_start`` (default: now)."""
        t0 = self._clock.now() if t_start is None else t_start
        x = resample(audio.astype(np.float32), rate, PIPELINE_RATE) if rate != PIPELINE_RATE else audio
        n = len(x) // self._hop
        if n:
            peaks = np.abs(x[: n * self._hop]).reshape(n, self._hop).max(axis=1)
            self._peaks.extend((t0 + i * 0.01, float(p)) for i, p in enumerate(peaks))
        horizon = self._clock.now() - self._history_s
        while self._peaks and self._peaks[0][0] < horizon:
            self._peaks.pop(0)

    def playback_peak(self, t: float) -> float:
        return max((p for tp, p in self._peaks if t - self.tail_s <= tp <= t + 0.02), default=0.0)

    def is_echo(self, mic: np.ndarray, t: float) -> bool:
        """True when the frame can be explained by the agent's own playback."""
        ref = self.playback_peak(t)
        if ref <= 1e-4:
            return False
        return float(np.max(np.abs(mic))) < self.ratio * ref


class PlaybackTap(FrameProcessor):
    """After the output transport: every audio frame it played goes into the echo reference."""

    def __init__(self, guard: EchoGuard, **kwargs):
        super().__init__(**kwargs)
        self._guard = guard

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM and frame.audio:
            pcm = np.frombuffer(frame.audio, dtype=np.int16).astype(np.float32) / 32768.0
            self._guard.played(pcm, frame.sample_rate)
        await self.push_frame(frame, direction)
