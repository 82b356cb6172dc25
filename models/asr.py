"""Speech recognition: faster-whisper (default) or openai-whisper checkpoints.

One loaded model per process, shared by every session; calls are serialised
with a lock because CTranslate2 and torch already use every core per call.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import Future
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


_SENTENCE_END = re.compile(r"(?<=[.?!])\s+")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def drop_repeated_sentences(text: str) -> str:
    """Cut a transcript where it starts saying its first sentences again.

    Greedy whisper tiny on narrowband (8 kHz phone) audio sometimes loops inside
    one segment, no timestamp between the copies: "Can you recommend a dog boat
    for the weekend? Can you recommend the dog boat for a weekend? Can you
    recommend" (seen on the SIP path, issue 20). The unfinished last copy then
    reads as an unfinished turn and the reply waited 1.3-2.5 s. A copy is a later
    sentence of at least three words that opens with the same two words as an
    earlier one and shares at least 60 % of its words with it, both ways, being
    at most half again as long (the last sentence, which may be cut off: 80 % of
    its own words); it and everything after it go.
    """
    sentences = _SENTENCE_END.split(text)
    if len(sentences) < 2:
        return text
    kept: list[str] = []
    for i, sentence in enumerate(sentences):
        w = set(_words(sentence))
        first = _words(sentence)[:2]
        for earlier in kept:
            e = set(_words(earlier))
            if len(_words(sentence)) < 3 or first != _words(earlier)[:2]:
                continue
            shared = len(w & e)
            last = i == len(sentences) - 1
            if (last and shared >= 0.8 * len(w)) or (shared >= 0.6 * len(e) and shared >= 0.6 * len(w)
                                                     and len(w) <= 1.5 * len(e)):
                return " ".join(kept)
        kept.append(sentence)
    return text


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
        self._prompt = list(self._tokenizer.sot_sequence)  # with timestamps: see _ids_within
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))

    def _fast_text(self, audio: np.ndarray) -> str:
        """Short clip: encode only a window that fits it, not whisper's fixed 30 s.

        faster-whisper's transcribe() always encodes 3000 frames; CTranslate2
        accepts a shorter mel, and on a 5 s window the encoder costs ~10x less
        with the same text on short utterances. Greedy, no timestamps.
        """
        return self._fast_texts([audio])[0]

    def _fast_texts(self, audios: list[np.ndarray]) -> list[str]:
        """Several short clips (one window size) through one encode and one generate call."""
        import ctranslate2

        window = max(_window_for(len(a) / SAMPLE_RATE, self._window) for a in audios)
        feats = []
        for audio in audios:
            padded = np.zeros(window * SAMPLE_RATE, dtype=np.float32)
            padded[: len(audio)] = audio
            feats.append(self._model.feature_extractor(padded, chunk_length=window)[:, : window * 100])
        x = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.stack(feats), dtype=np.float32))
        # Bounded by speech rate (people say < 6 tokens/s) and no repeated 4-grams:
        # greedy whisper on short clips can otherwise loop on the same phrase.
        bounds = [8 + int(6 * len(a) / SAMPLE_RATE) for a in audios]
        # CTranslate2's Whisper decodes at most max_length // 2 tokens (whisper's
        # sample_len = n_text_ctx // 2), prompt included: ask for twice what may come,
        # timestamp tokens too (two per segment), or long turns lose their last words.
        max_length = 2 * (len(self._prompt) + max(bounds) + 2 * (1 + max(bounds) // 8))
        with self._lock:
            enc = self._model.model.encode(x, to_cpu=False)
            results = self._model.model.generate(
                enc, [self._prompt] * len(audios), beam_size=self._beam,
                max_length=max_length, no_repeat_ngram_size=4,
                suppress_blank=True, suppress_tokens=self._suppress, return_no_speech_prob=True,
                return_scores=True,
            )
        texts = []
        for res, bound, audio in zip(results, bounds, audios):
            ids = self._ids_within(res.sequences_ids[0], len(audio) / SAMPLE_RATE)[:bound]
            # Whisper invents "you"/"Thank you." on noise: trust the no-speech head when it is sure.
            texts.append("" if res.no_speech_prob > 0.5 else drop_repeated_sentences(self._tokenizer.decode(ids).strip()))
        return texts

    def _ids_within(self, ids: list[int], duration: float) -> list[int]:
        """Text tokens of the segments that start inside the audio.

        Decoding with timestamps costs two tokens a segment and exposes whisper's
        favourite failure on a padded window: a segment "after" the audio ended
        that repeats or invents words. Those are dropped.
        """
        tok = self._tokenizer
        out: list[int] = []
        segment_open = False
        for t in ids:
            if t >= tok.timestamp_begin:
                at = (t - tok.timestamp_begin) * 0.02
                if not segment_open and at >= duration - 0.15:
                    break
                segment_open = not segment_open
            elif t < tok.eot:
                out.append(t)
        return out

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[str]:
        """``transcribe`` for several clips at once: short clips of one window size share a call."""
        out: list[str | None] = [None] * len(audios)
        groups: dict[int, list[int]] = {}
        for i, audio in enumerate(audios):
            seconds = len(audio) / SAMPLE_RATE
            if len(audio) < SAMPLE_RATE // 10 or seconds + 0.3 > 28:
                out[i] = self.transcribe(audio)
            else:
                groups.setdefault(_window_for(seconds, self._window), []).append(i)
        for idx in groups.values():
            for i, text in zip(idx, self._fast_texts([audios[i] for i in idx])):
                out[i] = text
        return [t or "" for t in out]

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


class BatchingTranscriber:
    """Pause-time decodes of many sessions, batched when they queue up.

    ``submit`` puts a clip on a queue and schedules a drain job on
    ``executor`` (the runtime's one analysis thread) unless one is already
    waiting there. A drain takes everything queued at that moment (up to
    ``max_batch``) into one ``transcribe_batch`` call. An idle service adds
    no wait at all (a lone clip is decoded alone, at once); a busy one
    decodes the clips that piled up behind the running job together, which
    on 2 CPU cores costs 173 ms for two 5 s windows instead of 2 x 121 ms
    (whisper tiny.en int8, CTranslate2 4.x; see docs/scaling.md).
    """

    def __init__(self, inner, executor, max_batch: int = 4):
        self._inner = inner
        self._executor = executor
        self._max = max_batch
        self._pending: list[tuple[np.ndarray, Future]] = []
        self._scheduled = False
        self._lock = threading.Lock()
        self.calls = 0  # drain calls made
        self.clips = 0  # clips decoded through them
        self.max_seen = 0  # the largest batch so far

    def transcribe(self, audio: np.ndarray) -> str:
        return self._inner.transcribe(audio)

    def transcribe_words(self, audio: np.ndarray) -> list[Word]:
        return self._inner.transcribe_words(audio)

    def submit(self, audio: np.ndarray) -> Future:
        future: Future = Future()
        with self._lock:
            self._pending.append((audio, future))
            if not self._scheduled:
                self._scheduled = True
                self._executor.submit(self._drain)
        return future

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending[: self._max], self._pending[self._max:]
            if self._pending:
                self._executor.submit(self._drain)
            else:
                self._scheduled = False
        if not batch:
            return
        try:
            if len(batch) == 1:
                texts = [self._inner.transcribe(batch[0][0])]
            else:
                texts = self._inner.transcribe_batch([a for a, _ in batch])
        except Exception as e:
            for _, future in batch:
                future.set_exception(e)
            return
        self.calls += 1
        self.clips += len(batch)
        self.max_seen = max(self.max_seen, len(batch))
        for (_, future), text in zip(batch, texts):
            future.set_result(text)


def load_transcriber(asr) -> Transcriber:
    """Build the transcriber an ASRSettings object describes."""
    if asr.engine == "openai-whisper":
        return OpenAIWhisperTranscriber(asr.model, language=asr.language, beam_size=asr.beam_size)
    return FasterWhisperTranscriber(asr.model, language=asr.language, beam_size=asr.beam_size,
                                    compute_type=asr.compute_type, cpu_threads=asr.cpu_threads,
                                    window_s=asr.window_s)
