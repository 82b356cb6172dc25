"""LLM services for the pipeline: llama.cpp in-process, or any OpenAI-compatible endpoint.

Both consume pipecat's LLMContextFrame and stream LLMTextFrames, so the rest
of the pipeline does not know which one runs.
"""

from __future__ import annotations

import asyncio
import threading

from openai import AsyncOpenAI
from pipecat.frames.frames import (
    Frame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings
from pipecat.services.openai.llm import OpenAILLMService

from models.llm import LocalLLM, build_prompt

_DONE = object()


class LocalLLMService(LLMService):
    """Streams a GGUF model's reply token by token, generation in a worker thread."""

    def __init__(self, llm: LocalLLM, *, system_prompt: str, max_tokens: int, temperature: float, **kwargs):
        super().__init__(settings=LLMSettings(
            model="local-gguf", system_instruction=None, temperature=temperature, max_tokens=max_tokens,
            top_p=None, top_k=None, frequency_penalty=None, presence_penalty=None, seed=None,
            filter_incomplete_user_turns=None, user_turn_completion_config=None), **kwargs)
        self._llm = llm
        self._system_prompt = system_prompt
        self._max_tokens = max_tokens
        self._temperature = temperature

    def can_generate_metrics(self) -> bool:
        return True

    async def _generate(self, context) -> None:
        history = [m for m in context.get_messages() if isinstance(m, dict)]
        prompt = build_prompt(self._system_prompt, history)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for piece in self._llm.stream(prompt, max_tokens=self._max_tokens, temperature=self._temperature):
                    if stop.is_set():
                        self._llm.cancel()
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
            except Exception as e:  # reported to the pipeline below
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        worker = loop.run_in_executor(None, produce)
        try:
            await self.start_ttfb_metrics()
            first = True
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, Exception):
                    raise item
                if first:
                    await self.stop_ttfb_metrics()
                    first = False
                await self._push_llm_text(item)
        finally:
            stop.set()
            await asyncio.shield(worker) if not worker.done() else None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            await self.push_frame(LLMFullResponseStartFrame())
            try:
                await self._generate(frame.context)
            except Exception as e:
                await self.push_error(f"local LLM failed: {e}", exception=e)
            finally:
                await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)


class EndpointLLMService(OpenAILLMService):
    """pipecat's OpenAI service with our timeout and no silent retries (a slow endpoint is a failed turn)."""

    def __init__(self, *, timeout_s: float, **kwargs):
        self._timeout_s = timeout_s
        super().__init__(**kwargs)

    def create_client(self, api_key=None, base_url=None, organization=None, project=None,
                      default_headers=None, **kwargs):
        return AsyncOpenAI(api_key=api_key, base_url=base_url, organization=organization,
                           project=project, default_headers=default_headers,
                           timeout=self._timeout_s, max_retries=0)


def make_llm_service(settings, local_llm: LocalLLM | None) -> LLMService:
    s = settings.llm
    if s.backend == "openai":
        return EndpointLLMService(
            api_key=s.api_key.get_secret_value() or "not-needed", base_url=s.base_url,
            timeout_s=s.timeout_s,
            settings=OpenAILLMService.Settings(model=s.model, temperature=s.temperature,
                                               max_completion_tokens=s.max_tokens),
        )
    assert local_llm is not None
    return LocalLLMService(local_llm, system_prompt=s.system_prompt, max_tokens=s.max_tokens,
                           temperature=s.temperature)
