"""Speech recognition: faster-whisper (default) or openai-whisper checkpoints.

One loaded model per process, shared by every session; calls are serialised
with a lock because CTranslate2 and torch already use every core per call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from models.weights import EMBEDDED, WeightsNotFound, embedded_whisper_dir

SAMPLE_RATE = 16000


@dataclass
class Word:
    text: str
    start: float
    end: float


class Transcriber(Protocol):
    def transcribe(self, audio: np.ndarray) -> str: ...

    def transcribe_words(self, audio: np.ndarray) -> list[Word]: ...


def _window_for(seconds: float, max_window: float) -> int:
    """Smallest whisper window (s) that holds the clip; shorter windows decode faster."""
    for w in (5, 10, 15, 20, 30):
        if seconds + 0.3 <= w and w <= max(max_window, 5):
            return w
    return 30


class FasterWhisperTranscriber:
    def __init__(self, model: str, *, language: str, beam_size: int, compute_type: str,
                 cpu_threads: int, window_s: float):
        from faster_whisper import WhisperModel

        source = str(embedded_whisper_dir()) if model == EMBEDDED else model
        if model != EMBEDDED and ("/" in model or model.startswith(".")) and not Path(model).exists():
            raise WeightsNotFound(f"faster-whisper model directory not found: {model}")
        try:
            self._model = WhisperModel(source, device="cpu", compute_type=compute_type,
                                       cpu_threads=cpu_threads)
        except Exception as e:  # hub names need a download this machine may not be allowed
            raise WeightsNotFound(f"cannot load faster-whisper model '{model}': {e}") from None
        self._language = language if not source.endswith(".en") else "en"
        self._beam = beam_size
        self._window = window_s
        self._lock = threading.Lock()
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        multilingual = self._model.model.is_multilingual
        self._tokenizer = Tokenizer(self._model.hf_tokenizer, multilingual, task="transcribe",
                                    language=self._language if multilingual else "en")
        self._prompt = list(self._tokenizer.sot_sequence) + [self._tokenizer.no_timestamps]
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))

    def _fast_text(self, audio: np.ndarray) -> str:
        """Short clip: encode only a window that fits it, not whisper's fixed 30 s.

        faster-whisper's transcribe() always encodes 3000 frames; CTranslate2
        accepts a shorter mel, and on a 5 s window the encoder costs ~10x less
        with the same text on short utterances. Greedy, no timestamps.
        """
        import ctranslate2

        window = _window_for(len(audio) / SAMPLE_RATE, self._window)
        padded = np.zeros(window * SAMPLE_RATE, dtype=np.float32)
        padded[: len(audio)] = audio
        feats = self._model.feature_extractor(padded, chunk_length=window)[:, : window * 100]
        x = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats[None], dtype=np.float32))
        with self._lock:
            enc = self._model.model.encode(x, to_cpu=False)
            res = self._model.model.generate(
                # Bounded by speech rate (people say < 6 tokens/s) and no repeated 4-grams:
                # greedy whisper on short clips can otherwise loop on the same phrase.
                enc, [self._prompt], beam_size=self._beam,
                max_length=len(self._prompt) + 8 + int(6 * len(audio) / SAMPLE_RATE),
                no_repeat_ngram_size=4,
                suppress_blank=True, suppress_tokens=self._suppress, return_no_speech_prob=True,
                return_scores=True,
            )[0]
        ids = [t for t in res.sequences_ids[0] if t < self._tokenizer.eot]
        # Whisper invents "you"/"Thank you." on noise: trust the no-speech head when it is sure.
        if res.no_speech_prob > 0.5:
            return ""
        return self._tokenizer.decode(ids).strip()

    def _segments(self, audio: np.ndarray, words: bool):
        window = _window_for(len(audio) / SAMPLE_RATE, self._window)
        with self._lock:
            segments, _ = self._model.transcribe(
                audio.astype(np.float32, copy=False), language=self._language,
                beam_size=self._beam, chunk_length=window, vad_filter=False,
                condition_on_previous_text=False, without_timestamps=not words,
                word_timestamps=words,
            )
            return list(segments)

    def transcribe(self, audio: np.ndarray) -> str:
        if len(audio) < SAMPLE_RATE // 10:
            return ""
        if len(audio) / SAMPLE_RATE + 0.3 <= 28:
            return self._fast_text(audio)
        return " ".join(s.text.strip() for s in self._segments(audio, False)).strip()

    def transcribe_words(self, audio: np.ndarray) -> list[Word]:
        if len(audio) < SAMPLE_RATE // 10:
            return []
        out = []
        for seg in self._segments(audio, True):
            for w in seg.words or []:
                out.append(Word(w.word.strip(), float(w.start), float(w.end)))
        return out


class OpenAIWhisperTranscriber:
    """openai-whisper checkpoints (.pt file or a name already in its cache)."""

    def __init__(self, model: str, *, language: str, beam_size: int):
        try:
            import whisper
        except ImportError:
            raise WeightsNotFound("engine openai-whisper needs: pip install openai-whisper") from None
        if model == EMBEDDED:
            raise WeightsNotFound("openai-whisper has no embedded model: set asr.model to a .pt checkpoint")
        if model.endswith(".pt") and not Path(model).exists():
            raise WeightsNotFound(f"openai-whisper checkpoint not found: {model}")
        try:
            self._model = whisper.load_model(model, device="cpu")
        except Exception as e:
            raise WeightsNotFound(f"cannot load openai-whisper model '{model}': {e}") from None
        self._language = language
        self._beam = beam_size
        self._lock = threading.Lock()

    def _run(self, audio: np.ndarray, words: bool) -> dict:
        with self._lock:
            return self._model.transcribe(
                audio.astype(np.float32), language=self._language, fp16=False,
                beam_size=self._beam if self._beam > 1 else None, word_timestamps=words,
                condition_on_previous_text=False,
            )

    def transcribe(self, audio: np.ndarray) -> str:
        return self._run(audio, False)["text"].strip() if len(audio) else ""

    def transcribe_words(self, audio: np.ndarray) -> list[Word]:
        if not len(audio):
            return []
        return [Word(w["word"].strip(), float(w["start"]), float(w["end"]))
                for s in self._run(audio, True)["segments"] for w in s.get("words", [])]


def load_transcriber(asr) -> Transcriber:
    """Build the transcriber an ASRSettings object describes."""
    if asr.engine == "openai-whisper":
        return OpenAIWhisperTranscriber(asr.model, language=asr.language, beam_size=asr.beam_size)
    return FasterWhisperTranscriber(asr.model, language=asr.language, beam_size=asr.beam_size,
                                    compute_type=asr.compute_type, cpu_threads=asr.cpu_threads,
                                    window_s=asr.window_s)
