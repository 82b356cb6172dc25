"""ASR batching across sessions (models.asr.BatchingTranscriber) on the real embedded whisper model."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from models.asr import BatchingTranscriber, FasterWhisperTranscriber
from tests.conftest import speak
from voice.audio import read_wav

PHRASES = ["What is the capital of France?", "How far away is the moon?", "Tell me about elephants please."]


@pytest.fixture(scope="module")
def whisper(runtime):
    inner = runtime.transcriber
    inner = getattr(inner, "_inner", inner)
    if not isinstance(inner, FasterWhisperTranscriber):
        pytest.skip("batching is for faster-whisper")
    return inner


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    return [read_wav(speak(p, d / f"{i}.wav", lead_s=0.2, tail_s=0.3), 16000) for i, p in enumerate(PHRASES)]


def test_batch_equals_one_by_one(whisper, clips):
    alone = [whisper.transcribe(c) for c in clips]
    assert all(alone), alone
    # mixed window sizes and a too-short clip go through the same call
    long_clip = np.concatenate([clips[0], np.zeros(16000 * 6, np.float32)])
    batch = whisper.transcribe_batch([*clips, long_clip, np.zeros(800, np.float32)])
    assert batch[:3] == alone
    assert batch[3] == whisper.transcribe(long_clip) and batch[4] == ""


def test_queued_decodes_share_one_call(whisper, clips):
    executor = ThreadPoolExecutor(1)
    batcher = BatchingTranscriber(whisper, executor, max_batch=4)
    gate = threading.Event()
    executor.submit(gate.wait)  # the analysis thread is busy: decodes queue behind it
    futures = [batcher.submit(c) for c in clips]
    gate.set()
    texts = [f.result(timeout=60) for f in futures]
    assert texts == [whisper.transcribe(c) for c in clips]
    assert (batcher.calls, batcher.clips, batcher.max_seen) == (1, 3, 3)

    # an idle batcher decodes a lone clip at once, alone
    assert batcher.submit(clips[0]).result(timeout=60) == texts[0]
    assert (batcher.calls, batcher.max_seen) == (2, 3)
    executor.shutdown()


def test_max_batch_splits_the_queue(whisper, clips):
    executor = ThreadPoolExecutor(1)
    batcher = BatchingTranscriber(whisper, executor, max_batch=2)
    gate = threading.Event()
    executor.submit(gate.wait)
    futures = [batcher.submit(c) for c in clips]
    gate.set()
    assert [f.result(timeout=60) for f in futures] == [whisper.transcribe(c) for c in clips]
    assert (batcher.calls, batcher.clips, batcher.max_seen) == (2, 3, 2)
    executor.shutdown()


async def test_streaming_asr_awaits_the_batcher(whisper, clips):
    executor = ThreadPoolExecutor(1)
    batcher = BatchingTranscriber(whisper, executor)
    text = await asyncio.wrap_future(batcher.submit(clips[1]))
    assert "moon" in text.lower()
    executor.shutdown()


def test_runtime_wraps_the_transcriber(runtime, settings):
    if settings.asr.batch_max > 1:
        assert isinstance(runtime.transcriber, BatchingTranscriber)


LONG_TURNS = [
    "How long should I boil an egg if I want the yolk to stay a little bit runny in the middle?",
    "I was wondering whether you could tell me the best way to get from the station to the big fish market.",
]


@pytest.mark.parametrize("text", LONG_TURNS)
def test_a_long_turn_keeps_its_last_words(whisper, tmp_path, text):
    # CTranslate2 decodes at most half of max_length: a bound that forgot it cut
    # 5-6 s turns off after 15-20 tokens, and the agent answered half a question.
    clip = read_wav(speak(text, tmp_path / "long.wav", speed=150, lead_s=0.2, tail_s=0.3), 16000)
    assert len(clip) / 16000 > 4.5
    heard = [w.strip(".,?!").lower() for w in whisper.transcribe(clip).split()]
    wanted = [w.strip(".,?!").lower() for w in text.split()]
    assert heard[-3:] == wanted[-3:], heard
    assert whisper.transcribe_batch([clip, clip]) == [whisper.transcribe(clip)] * 2
