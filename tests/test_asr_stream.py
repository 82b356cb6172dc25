"""The streaming ASR processor in a real pipecat pipeline, with the embedded whisper model."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
from loguru import logger
from pipecat.frames.frames import EndFrame, InputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineTask

from voice.asr import StreamingASRProcessor
from voice.audio import frames
from voice.frames import SpeechStartedFrame, SpeechStoppedFrame


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_session_ending_mid_decode_leaves_no_task_behind():
    from bench.latency import espeak_trimmed
    from models.asr import load_transcriber
    from voice.settings import load_settings

    speech = espeak_trimmed("What is the capital of France?", "en-us", 170)
    assert len(speech) > 16000  # a real spoken question: the decode takes a while
    audio = np.concatenate([speech, np.zeros(3200, np.float32)])
    asr = StreamingASRProcessor(load_transcriber(load_settings().asr))
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")

    async def run():
        task = PipelineTask(Pipeline([asr]), cancel_on_idle_timeout=False)

        async def feed():
            await task.queue_frame(SpeechStartedFrame(onset=0.0))
            for pcm in frames(audio):
                await task.queue_frame(InputAudioRawFrame(audio=pcm, sample_rate=16000, num_channels=1))
            await task.queue_frame(SpeechStoppedFrame(end=len(speech) / 16000))  # starts the final decode
            await task.queue_frame(EndFrame())  # ... and the session ends before it finishes

        await asyncio.gather(PipelineRunner(handle_sigint=False).run(task), feed())

    try:
        asyncio.run(asyncio.wait_for(run(), 60))
    finally:
        logger.remove(sink)
    assert not [w for w in warnings if "dangling" in w], warnings
    assert not asr._owned
