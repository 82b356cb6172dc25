"""Piper text-to-speech: any Piper voice file, the embedded en_US-joe-medium by default."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from models.cpu import SpeechFirst
from models.weights import EMBEDDED, WeightsNotFound, embedded_piper_voice, local_file

# Piper starts most utterances with 30-70 ms of near-silence; on the first piece
# of a reply that is pure latency. Cut it down to LEAD_KEEP_S before the onset.
LEAD_THRESHOLD = 10 ** (-50 / 20)  # -50 dBFS RMS over 5 ms
LEAD_KEEP_S = 0.005


def trim_leading_silence(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    hop = max(1, int(sample_rate * 0.005))
    n = len(audio) // hop
    if n == 0:
        return audio
    rms = np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1))
    loud = np.flatnonzero(rms > LEAD_THRESHOLD)
    if not len(loud):
        return audio
    start = max(0, loud[0] * hop - int(sample_rate * LEAD_KEEP_S))
    return audio[start:]


def load_voice(path: Path, config: Path):
    """A PiperVoice whose ONNX threads sleep when idle.

    onnxruntime's default intra-op threads spin after each parallel section. On a
    2-core machine shared with the ASR, the LLM and other sessions' synthesis,
    that spin is stolen time: with another core busy a 2.9 s sentence cost 393 ms
    of CPU instead of 268 ms, and took 268 ms instead of 247 (docs/scaling.md).
    Alone it is about 8 % slower (144 against 133 ms), a few ms on a first clause.
    """
    import json

    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return PiperVoice(session=session, config=PiperConfig.from_dict(json.loads(config.read_text("utf-8"))))


class PiperSynth:
    """One loaded voice shared by sessions. ``stream`` yields int16 PCM per sentence."""

    def __init__(self, voice: str = EMBEDDED, speaker_id: int | None = None, length_scale: float = 1.0,
                 speech_first: SpeechFirst | None = None):
        from piper import SynthesisConfig

        path = embedded_piper_voice() if voice == EMBEDDED else local_file(voice, "Piper voice", (".onnx",))
        config = Path(str(path) + ".json")
        if not config.exists():
            raise WeightsNotFound(f"Piper voice config not found beside the model: {config}")
        try:
            self.voice = load_voice(path, config)
        except Exception as e:  # a corrupt or truncated .onnx/.json: one clear line, not an onnxruntime trace
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise WeightsNotFound(f"cannot load Piper voice {path}: {first[:300]}") from None
        self.sample_rate: int = self.voice.config.sample_rate
        self._syn = SynthesisConfig(speaker_id=speaker_id, length_scale=length_scale)
        self._lock = threading.Lock()
        self.speech_first = speech_first or SpeechFirst()

    def stream(self, text: str) -> Iterator[bytes]:
        """int16 PCM per sentence; the first one without Piper's leading silence."""
        sentences = iter(self.voice.synthesize(text, syn_config=self._syn))
        first = True
        while True:
            with self.speech_first.speaking():
                chunk = next(sentences, None)
            if chunk is None:
                return
            # Piper's own int16 conversion turns a NaN from the model into -32768 (a full-scale
            # click); convert here with NaN/inf as silence.
            audio = np.nan_to_num(np.asarray(chunk.audio_float_array, dtype=np.float32),
                                  nan=0.0, posinf=0.0, neginf=0.0)
            if first:
                audio = trim_leading_silence(audio, self.sample_rate)
                first = False
            yield (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()

    def synthesize(self, text: str) -> bytes:
        with self._lock:
            return b"".join(self.stream(text))
