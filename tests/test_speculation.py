"""A speculative reply the user talks over is never generated, even when both happen in one input tick.

Real pipecat pipeline: the turn processor and the controller, the embedded LLM.
"""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import EndFrame, Frame, InputAudioRawFrame, LLMTextFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineTask
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voice.conversation import Conversation
from voice.events import EventLog, SessionClock
from voice.frames import SpeechStartedFrame, SpeechStoppedFrame, TranscriptFrame
from voice.llm import make_llm_service
from voice.turn.controller import TurnController
from voice.turn.processor import TurnProcessor

FRAME = b"\x00\x00" * 320  # 20 ms of silence at 16 kHz


class TextCollector(FrameProcessor):
    def __init__(self):
        super().__init__()
        self.text: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMTextFrame):
            self.text.append(frame.text)
        await self.push_frame(frame, direction)


def _run(settings, runtime, *, user_goes_on: bool) -> tuple[str, EventLog]:
    clock = SessionClock()
    clock.start()
    events = EventLog("test", clock)
    turn = TurnProcessor(TurnController(settings.turn.controller_config()), Conversation(settings.llm.system_prompt),
                         events, apology="Sorry.")
    collector = TextCollector()
    llm = make_llm_service(settings, runtime.local_llm, executor=runtime.reply_threads)

    async def run():
        task = PipelineTask(Pipeline([turn, llm, collector]), cancel_on_idle_timeout=False)

        async def feed():
            audio = [InputAudioRawFrame(audio=FRAME, sample_rate=16000, num_channels=1) for _ in range(100)]
            await task.queue_frames([SpeechStartedFrame(onset=0.0), *audio, SpeechStoppedFrame(end=2.0)])
            # The transcript of a complete question: the controller speculates at once. If the user
            # goes on, their speech start reaches the controller in the same tick, and the discard
            # (an interruption) follows the speculative context frame straight away.
            question = TranscriptFrame(text="What is the capital of France?", revision=1, audio_end=2.0)
            await task.queue_frames([question, SpeechStartedFrame(onset=2.0)] if user_goes_on else [question])
            for _ in range(150):  # 3 s of input: the endpoint is confirmed if nobody talks
                await task.queue_frame(InputAudioRawFrame(audio=FRAME, sample_rate=16000, num_channels=1))
                await asyncio.sleep(0.02)
            await task.queue_frame(EndFrame())

        await asyncio.gather(PipelineRunner(handle_sigint=False).run(task), feed())

    asyncio.run(asyncio.wait_for(run(), 60))
    return "".join(collector.text), events


def test_a_speculation_discarded_in_its_own_tick_is_never_generated(settings, runtime):
    text, events = _run(settings, runtime, user_goes_on=True)
    assert [e["event"] for e in events.of("speculate")] == ["speculate"]
    assert [e["event"] for e in events.of("speculation_discarded")] == ["speculation_discarded"]
    assert text == "", f"the discarded reply was generated: {text!r}"


def test_the_same_speculation_confirmed_is_generated(settings, runtime):
    text, events = _run(settings, runtime, user_goes_on=False)
    assert events.of("speculate") and events.of("endpoint") and not events.of("speculation_discarded")
    assert text.strip(), "a confirmed speculation is spoken"
