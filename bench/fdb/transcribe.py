"""Word-timed transcript of output.wav in FDB's output.json schema.

``{"text": "...", "chunks": [{"text": word, "timestamp": [start_s, end_s]}, ...]}``,
timestamps on the full-file clock. For user_interruption only the audio after
the interruption end ``e`` is transcribed (as the reference does) and the
timestamps are shifted back by ``e``. Like the reference, trailing digital
silence is cut (0.5 s kept after the last sample above 1e-4); output with no
sample above 1e-4 has no words.

By default Whisper hears only the speech: the clip is cut at Silero VAD
segments (merged across gaps < 1 s, padded 0.3 s each side), each piece is
transcribed alone and its word times shifted back, then clamped into the
piece's VAD speech span (Whisper puts a first word at the start of the padding,
0.3 s early). On agent output, which is
mostly silence, whole-file Whisper both drifts its word times by up to seconds
and invents words ("Thank you.") in the silence; the reference's ASR
(Parakeet/CrisperWhisper) does neither, and the per-piece times are what it
would report. ``whole=True`` transcribes the clip in one call instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

RATE = 16000
SILENCE_LEVEL = 1e-4
TAIL_KEEP_S = 0.5
MERGE_GAP_S = 1.0
PIECE_PAD_S = 0.3


def to_output_json(words: list[Any], offset_s: float = 0.0) -> dict[str, Any]:
    """FDB output.json from ``models.asr.Word``-like objects (text, start, end), shifted by ``offset_s``."""
    chunks = []
    for w in words:
        text = str(w.text).strip()
        if not text:
            continue
        chunks.append({"text": text, "timestamp": [round(float(w.start) + offset_s, 3),
                                                   round(float(w.end) + offset_s, 3)]})
    return {"text": " ".join(c["text"] for c in chunks), "chunks": chunks}


def crop_for_asr(audio: np.ndarray, offset_s: float = 0.0, rate: int = RATE) -> np.ndarray:
    """The audio from ``offset_s`` on, without its trailing digital silence (keeps 0.5 s after the last sound)."""
    clip = audio[int(offset_s * rate):]
    loud = np.flatnonzero(np.abs(clip) > SILENCE_LEVEL)
    if len(loud) == 0:
        return clip[:0]
    return clip[:min(len(clip), int(loud[-1]) + int(TAIL_KEEP_S * rate))]


def speech_pieces(clip: np.ndarray, rate: int = RATE) -> list[tuple[float, float]]:
    """Speech spans (s) to transcribe: Silero VAD segments merged across gaps < 1 s."""
    from bench.fdb.metrics import vad_segments

    pieces: list[list[float]] = []
    for s, e in vad_segments(clip, decimals=None):
        if pieces and s - pieces[-1][1] < MERGE_GAP_S:
            pieces[-1][1] = e
        else:
            pieces.append([s, e])
    return [(s, e) for s, e in pieces]


class _Shifted:
    """A word moved onto the clip clock and clamped into [lo, hi]."""

    def __init__(self, w: Any, by: float, lo: float, hi: float) -> None:
        self.text = w.text
        self.start = min(max(float(w.start) + by, lo), hi)
        self.end = min(max(float(w.end) + by, self.start), hi)


def transcribe_audio(audio: np.ndarray, transcriber: Any, offset_s: float = 0.0,
                     whole: bool = False) -> dict[str, Any]:
    """output.json for 16 kHz float audio; only what follows ``offset_s``, on the full-file clock."""
    clip = crop_for_asr(audio, offset_s)
    if not len(clip):
        return to_output_json([], offset_s)
    if whole:
        return to_output_json(transcriber.transcribe_words(clip), offset_s)
    words: list[Any] = []
    for s, e in speech_pieces(clip):
        a = max(0, int((s - PIECE_PAD_S) * RATE))
        b = min(len(clip), int((e + PIECE_PAD_S) * RATE))
        words += [_Shifted(w, a / RATE, s, e) for w in transcriber.transcribe_words(clip[a:b])]
    return to_output_json(words, offset_s)


def transcribe_wav(wav_path: str | Path, transcriber: Any, offset_s: float = 0.0) -> dict[str, Any]:
    from voice.audio import read_wav

    return transcribe_audio(read_wav(wav_path, rate=RATE), transcriber, offset_s)


def asr_offset(task: str, meta: list | None) -> float:
    """Where transcription starts: the interruption end for user_interruption, else 0."""
    if task == "user_interruption" and meta:
        return float(meta[0]["timestamp"][1])
    return 0.0


def load_transcriber(settings: Any = None) -> Any:
    """The repo's ASR (``models.asr``) built from the service settings."""
    from models.asr import load_transcriber as _load
    from voice.settings import load_settings

    settings = settings or load_settings()
    return _load(settings.asr)
