"""Piper text-to-speech: any Piper voice file, the embedded en_US-joe-medium by default."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from models.weights import EMBEDDED, WeightsNotFound, embedded_piper_voice, local_file


class PiperSynth:
    """One loaded voice shared by sessions. ``stream`` yields int16 PCM per sentence."""

    def __init__(self, voice: str = EMBEDDED, speaker_id: int | None = None, length_scale: float = 1.0):
        from piper import PiperVoice, SynthesisConfig

        path = embedded_piper_voice() if voice == EMBEDDED else local_file(voice, "Piper voice", (".onnx",))
        config = Path(str(path) + ".json")
        if not config.exists():
            raise WeightsNotFound(f"Piper voice config not found beside the model: {config}")
        self.voice = PiperVoice.load(path, config_path=config)
        self.sample_rate: int = self.voice.config.sample_rate
        self._syn = SynthesisConfig(speaker_id=speaker_id, length_scale=length_scale)
        self._lock = threading.Lock()

    def stream(self, text: str) -> Iterator[bytes]:
        for chunk in self.voice.synthesize(text, syn_config=self._syn):
            yield chunk.audio_int16_bytes

    def synthesize(self, text: str) -> bytes:
        with self._lock:
            return b"".join(self.stream(text))
