"""Speech out: Piper behind pipecat's TTSService, and clause chunking for a fast first sound."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator

from pipecat.frames.frames import (
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, TTSService

from models.tts import PiperSynth

_CLAUSE_END = re.compile(r"([.!?]+[\"')\]]*\s)|([,;:]\s)")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s")
_ENDS_ON_PUNCTUATION = re.compile(r"(?<![0-9])(?:[.!?]+[\"')\]]*|[,;:])$")
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "vs.", "etc.", "e.g.", "i.e.", "no."}
_NUMBER_START = set("0123456789$£€")
_MIN_BEFORE_NUMBER = 3  # "It is 5 o'clock." stays whole; "A year is | 365 days" is cut


class ClauseChunker(FrameProcessor):
    """Regroups streamed LLM tokens into speakable pieces.

    A sentence end always flushes; a comma/semicolon/colon flushes once the
    piece has ``min_clause_words`` words, so the first audio starts after a
    short clause instead of a whole sentence.
    """

    def __init__(self, min_clause_words: int = 4, first_chunk_words: int = 6, **kwargs):
        super().__init__(**kwargs)
        self._min_words = min_clause_words
        # The first piece of a reply decides the latency: cut it at any punctuation
        # after 2 words, or at a word boundary after ``first_chunk_words`` words.
        self._first_words = first_chunk_words
        self._first = True
        self._buf = ""

    def _first_cut(self) -> int | None:
        """Where to end the first piece when no punctuation came early enough.

        After ``first_chunk_words`` words; or earlier, before a number: digits
        stream in one token each and are spoken as many words ("365.24" is
        eight), so a piece that runs into one would be slow twice over.
        """
        words = list(re.finditer(r"\S+", self._buf))
        for i, w in enumerate(words):
            if i >= _MIN_BEFORE_NUMBER and w.group()[0] in _NUMBER_START:
                return w.start()
        complete = list(re.finditer(r"\S+\s", self._buf))
        if len(complete) >= self._first_words:
            return complete[self._first_words - 1].end()
        return None

    def _punctuated_end(self) -> int | None:
        """The first piece may end on the punctuation that closes the buffer.

        Later pieces wait for the next token to see the space after a comma or a
        full stop; the first one cannot afford that token (20 ms), unless the mark
        may belong to a number ("3." of "3.5") or an abbreviation ("Dr.").
        """
        words = self._buf.split()
        if len(words) < 2 or not _ENDS_ON_PUNCTUATION.search(self._buf):
            return None
        if words[-1].lower().strip("\"')]") in _ABBREVIATIONS:
            return None
        return len(self._buf)

    async def _flush(self) -> None:
        text = self._buf.strip()
        self._buf = ""
        if text:
            await self.push_frame(LLMTextFrame(text + " "))

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame) and direction == FrameDirection.DOWNSTREAM:
            self._buf += frame.text
            while True:
                cut = None
                min_words = 2 if self._first else self._min_words
                for m in _CLAUSE_END.finditer(self._buf):
                    piece = self._buf[:m.end()]
                    if _SENTENCE_END.fullmatch(m.group(0)) or len(piece.split()) >= min_words:
                        cut = m.end()
                        break
                if cut is None and self._first:
                    cut = self._first_cut() or self._punctuated_end()
                if cut is None:
                    break
                piece, self._buf = self._buf[:cut], self._buf[cut:]
                self._first = False
                if piece.strip():
                    await self.push_frame(LLMTextFrame(piece.strip() + " "))
            return
        if isinstance(frame, LLMFullResponseEndFrame):
            await self._flush()
            self._first = True
        elif isinstance(frame, InterruptionFrame):
            self._buf = ""
            self._first = True
        await self.push_frame(frame, direction)


class PiperTTSService(TTSService):
    """Piper in-process with a voice loaded once per process (pipecat's loads one per service)."""

    def __init__(self, synth: PiperSynth, *, executor=None, **kwargs):
        super().__init__(push_start_frame=True, push_stop_frames=True,
                         text_aggregation_mode=TextAggregationMode.TOKEN,
                         settings=TTSSettings(model=None, voice="piper", language=None), **kwargs)
        self._synth = synth
        self._executor = executor  # where each chunk's synthesis runs (None: the loop's default)

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame, None]:
        text = text.strip()
        if not text:
            return
        iterator = self._synth.stream(text)

        def next_chunk():
            return next(iterator, None)

        async def chunks():
            while True:
                chunk = await asyncio.get_running_loop().run_in_executor(self._executor, next_chunk)
                if chunk is None:
                    return
                yield chunk

        await self.start_tts_usage_metrics(text)
        async for frame in self._stream_audio_frames_from_iterator(
            chunks(), in_sample_rate=self._synth.sample_rate, context_id=context_id
        ):
            await self.stop_ttfb_metrics()
            yield frame
