"""The clause chunker cuts streamed LLM tokens into speakable pieces (real pipecat frames)."""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import LLMFullResponseEndFrame, LLMFullResponseStartFrame, LLMTextFrame
from pipecat.processors.frame_processor import FrameDirection

from voice.tts import ClauseChunker


def _chunks(tokens: list[str]) -> list[str]:
    chunker = ClauseChunker()
    out: list[str] = []

    async def capture(frame, direction=FrameDirection.DOWNSTREAM):
        if isinstance(frame, LLMTextFrame):
            out.append(frame.text.strip())

    chunker.push_frame = capture  # observe what it emits downstream

    async def run():
        await chunker.process_frame(LLMFullResponseStartFrame(), FrameDirection.DOWNSTREAM)
        for t in tokens:
            await chunker.process_frame(LLMTextFrame(t), FrameDirection.DOWNSTREAM)
        await chunker.process_frame(LLMFullResponseEndFrame(), FrameDirection.DOWNSTREAM)

    asyncio.run(run())
    return out


def _tok(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def test_first_piece_is_short_then_clauses():
    pieces = _chunks(_tok("Sure, I can help with that, and here is the rest of it. Bye now."))
    assert pieces[0] == "Sure, I can help with that,"
    assert "".join(p.replace(" ", "") for p in pieces) == "Sure,Icanhelpwiththat,andhereistherestofit.Byenow."
    assert pieces[1] == "and here is the rest of it."
    assert all(p for p in pieces)


def test_long_first_clause_is_cut_at_a_word_boundary():
    pieces = _chunks(_tok("The moon is about three hundred and eighty thousand kilometers away from here."))
    assert len(pieces[0].split()) == 6
    assert " ".join(pieces) == "The moon is about three hundred and eighty thousand kilometers away from here."


def test_text_without_punctuation_is_flushed_at_the_end():
    assert _chunks(_tok("ok")) == ["ok"]


def test_first_piece_ends_before_a_number():
    # Digits stream one token each and are spoken as many words: the first piece stops before them.
    tokens = ["A", " year", " is", " ", "3", "6", "5", ".", "2", "4", " days", ",", " or", " so", "."]
    pieces = _chunks(tokens)
    assert pieces[0] == "A year is"
    assert "".join(pieces).replace(" ", "") == "Ayearis365.24days,orso."


def test_a_number_early_in_the_reply_stays_in_the_first_piece():
    pieces = _chunks(_tok("It is 5 o'clock in the evening, so dinner is soon."))
    assert pieces[0].split()[:3] == ["It", "is", "5"]


def test_first_piece_does_not_wait_for_the_token_after_its_punctuation():
    chunker = ClauseChunker()
    out: list[str] = []

    async def capture(frame, direction=FrameDirection.DOWNSTREAM):
        if isinstance(frame, LLMTextFrame):
            out.append(frame.text.strip())

    chunker.push_frame = capture
    seen_after: dict[str, list[str]] = {}

    async def run(tokens):
        await chunker.process_frame(LLMFullResponseStartFrame(), FrameDirection.DOWNSTREAM)
        for t in tokens:
            await chunker.process_frame(LLMTextFrame(t), FrameDirection.DOWNSTREAM)
            seen_after[t] = list(out)
        await chunker.process_frame(LLMFullResponseEndFrame(), FrameDirection.DOWNSTREAM)

    asyncio.run(run(["A", " backpack", ",", " a", " tent", ",", " and", " food", "."]))
    assert seen_after[","] == ["A backpack,"], "the first piece goes at its comma"
    assert out == ["A backpack,", "a tent, and food."]
    # A full stop that may belong to a number or an abbreviation waits for the next token.
    out.clear()
    asyncio.run(run(["It", " is", " 3", ".", "5", " km", "."]))
    assert out[0] != "It is 3." and "".join(out).replace(" ", "") == "Itis3.5km."
    out.clear()
    asyncio.run(run(["Ask", " Dr.", " Lee", "."]))
    assert seen_after[" Dr."] == []
