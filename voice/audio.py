"""Audio at the edges: WAV in/out, mono mixdown, and the one resampler everything uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

PIPELINE_RATE = 16000  # what VAD and ASR consume
FRAME_MS = 20
MIN_INPUT_RATE = 1000


class AudioError(ValueError):
    """Unusable audio input, reported as one line."""


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """float32 or int16 mono -> same dtype at ``to_rate`` (soxr, high quality, streaming-safe for whole clips)."""
    if from_rate == to_rate or len(audio) == 0:
        return audio
    return soxr.resample(audio, from_rate, to_rate)


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0


def float_to_pcm16(audio: np.ndarray) -> bytes:
    audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()


def resample_pcm16(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    if from_rate == to_rate:
        return pcm
    return float_to_pcm16(resample(pcm16_to_float(pcm), from_rate, to_rate))


def read_wav(path: str | Path, rate: int = PIPELINE_RATE) -> np.ndarray:
    """Read any WAV/FLAC/OGG file as float32 mono at ``rate``; AudioError on anything unusable."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"input file not found: {p}")
    if p.is_dir():
        raise AudioError(f"input is a directory, not an audio file: {p}")
    try:
        data, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"cannot read audio file {p}: {str(e).splitlines()[0]}") from None
    if sr < MIN_INPUT_RATE:  # also bounds resampling: 1 Hz audio would grow 16,000-fold in memory
        raise AudioError(f"audio file {p} has an unusable sample rate {sr} Hz (at least {MIN_INPUT_RATE} Hz)")
    if data.shape[0] == 0:
        raise AudioError(f"audio file {p} is empty")
    mono = data.mean(axis=1)
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"audio file {p} contains NaN or infinite samples")
    out = resample(mono, sr, rate).astype(np.float32)
    if len(out) == 0:  # a sample or two at a higher rate resamples to nothing
        raise AudioError(f"audio file {p} is too short ({data.shape[0]} samples at {sr} Hz)")
    return out


def write_wav(path: str | Path, audio: np.ndarray, rate: int) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.nan_to_num(audio), -1.0, 1.0), rate, subtype="PCM_16")


def frames(audio: np.ndarray, rate: int = PIPELINE_RATE, ms: int = FRAME_MS):
    """Yield int16 PCM frames of ``ms`` milliseconds (the last one zero-padded)."""
    n = rate * ms // 1000
    pcm = np.frombuffer(float_to_pcm16(audio), dtype=np.int16)
    for i in range(0, len(pcm), n):
        chunk = pcm[i:i + n]
        if len(chunk) < n:
            chunk = np.pad(chunk, (0, n - len(chunk)))
        yield chunk.tobytes()


class FrameChunker:
    """Re-cuts a stream of PCM16 into exact frames (20 ms at 16 kHz: what the VAD and the turn clock count in).

    A resampler's first output is short by its filter delay (aiortc Opus at
    48 kHz through PyAV: 304 samples, then 320 per 20 ms). Cutting that stream
    naively leaves 304 samples waiting in every frame, so all later audio
    reaches the pipeline 19 ms late. The first chunk is therefore padded at
    its start with silence up to a whole frame; streams that then arrive in
    whole frames pass straight through.
    """

    def __init__(self, frame_bytes: int = PIPELINE_RATE * FRAME_MS // 1000 * 2):
        self.frame_bytes = frame_bytes
        self._pending = b""
        self._started = False

    def push(self, pcm: bytes) -> list[bytes]:
        if not self._started and pcm:
            self._started = True
            short = (-len(pcm)) % self.frame_bytes
            pcm = bytes(short) + pcm
        self._pending += pcm
        out = []
        while len(self._pending) >= self.frame_bytes:
            out.append(self._pending[:self.frame_bytes])
            self._pending = self._pending[self.frame_bytes:]
        return out


def rms_dbfs(audio: np.ndarray) -> float:
    if len(audio) == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return 20 * np.log10(max(rms, 1e-6))
