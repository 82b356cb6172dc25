"""LLM services for the pipeline: llama.cpp in-process, or any OpenAI-compatible endpoint.

Both consume pipecat's LLMContextFrame and stream LLMTextFrames, so the rest
of the pipeline does not know which one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from loguru import logger
from openai import AsyncOpenAI
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.llm_service import LLMService
from pipecat.services.settings import LLMSettings
from pipecat.services.openai.llm import OpenAILLMService

from models.llm import LocalLLM, build_prompt
from voice.frames import ReplyHeldFrame, ReplyReleasedFrame, SpeculativeContextFrame, is_discarded

_DONE = object()


class LocalLLMService(LLMService):
    """Streams a GGUF model's reply token by token, generation in a worker thread."""

    def __init__(self, llm: LocalLLM, *, system_prompt: str, max_tokens: int, temperature: float,
                 executor=None, **kwargs):
        super().__init__(settings=LLMSettings(
            model="local-gguf", system_instruction=None, temperature=temperature, max_tokens=max_tokens,
            top_p=None, top_k=None, frequency_penalty=None, presence_penalty=None, seed=None,
            filter_incomplete_user_turns=None, user_turn_completion_config=None), **kwargs)
        self._llm = llm
        self._system_prompt = system_prompt
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._executor = executor  # where the generation thread runs (None: the loop's default)

    def can_generate_metrics(self) -> bool:
        return True

    async def _generate(self, context) -> None:
        history = [m for m in context.get_messages() if isinstance(m, dict)]
        prompt = build_prompt(self._system_prompt, history)
        # A small base model sometimes ends its turn at once (an immediate newline);
        # one hotter retry nearly always gives it something to say.
        for temperature in (self._temperature, max(0.9, self._temperature)):
            if await self._stream(prompt, temperature):
                return

    async def _stream(self, prompt: str, temperature: float) -> bool:
        """Stream one completion as LLMTextFrames; True if it produced any text."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                pieces = self._llm.stream(prompt, max_tokens=self._max_tokens, temperature=temperature)
                with contextlib.closing(pieces):  # closing ends the generation and frees its context
                    for piece in pieces:
                        if stop.is_set():
                            break
                        loop.call_soon_threadsafe(queue.put_nowait, piece)
            except Exception as e:  # reported to the pipeline below
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        worker = loop.run_in_executor(self._executor, produce)
        try:
            await self.start_ttfb_metrics()
            first = True
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, Exception):
                    raise item
                if not item.strip() and first:
                    continue
                if first:
                    await self.stop_ttfb_metrics()
                    first = False
                await self._push_llm_text(item)
            return not first
        finally:
            stop.set()
            await asyncio.shield(worker) if not worker.done() else None

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if is_discarded(frame):
            return  # a speculation the user talked over before it started (voice/frames.py)
        if isinstance(frame, LLMContextFrame):
            await self.push_frame(LLMFullResponseStartFrame())
            try:
                await self._generate(frame.context)
            except Exception as e:
                await self.push_error(f"local LLM failed: {e}", exception=e)
            # (An interruption cancels this task: the reply just stops, no end marker.)
            await self.push_frame(LLMFullResponseEndFrame())
        else:
            await self.push_frame(frame, direction)


class EndpointLLMService(OpenAILLMService):
    """pipecat's OpenAI service with our timeout and no silent retries (a slow endpoint is a failed turn).

    Tools (voice/tools): ``tools`` is the session's :class:`~voice.tools.calls.ToolCalling`,
    whose tool set holds only what ``llm.allowed_tools`` names. With tools, every
    context advertises their schemas and the calls the model makes run in-line
    within the reply (voice/tools/calls.py). Without (the default), contexts
    carry no ``tools``; ``allowed_tools`` is the allowlist either way:
    registering a function outside it raises, and with no tools offered a tool
    call the endpoint returns anyway is refused and logged, and runs nothing;
    the turn then has no spoken reply and the agent apologises as for any
    failed turn.
    """

    def __init__(self, *, timeout_s: float, allowed_tools: list[str] | tuple[str, ...] = (),
                 tools=None, **kwargs):
        self._timeout_s = timeout_s
        self.allowed_tools = frozenset(allowed_tools)
        self.refused_tool_calls: list[str] = []
        self._tools = tools  # voice.tools.calls.ToolCalling, or None
        self._tools_ready: asyncio.Task | None = None
        self._release: asyncio.Event | None = None  # set when the held (speculative) reply is confirmed
        self._depth = 0
        super().__init__(**kwargs)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        if is_discarded(frame):
            return  # a speculation the user talked over before it started (voice/frames.py)
        if self._tools is None:
            await super().process_frame(frame, direction)
            return
        if isinstance(frame, StartFrame) and self._tools.connect is not None:
            self._tools_ready = asyncio.ensure_future(self._tools.connect())  # MCP servers, in the background
        elif isinstance(frame, ReplyHeldFrame):
            self._release = asyncio.Event()
        elif isinstance(frame, ReplyReleasedFrame):
            if self._release is not None:
                self._release.set()
            self._tools.released()
        elif isinstance(frame, InterruptionFrame):
            self._tools.interrupted()
        elif isinstance(frame, (EndFrame, CancelFrame)):
            if self._tools_ready is not None and not self._tools_ready.done():
                self._tools_ready.cancel()  # the session ends before its MCP servers answered
            await self._tools.aclose()
        if isinstance(frame, LLMContextFrame):
            if self._tools_ready is not None:
                await asyncio.shield(self._tools_ready)  # the first turn waits for the MCP servers
            if self._tools.toolset:
                frame.context.set_tools(self._tools.toolset.schemas())
            self._tools.begin(speculative=isinstance(frame, SpeculativeContextFrame), release=self._release)
            await super().process_frame(frame, direction)
            for action in self._tools.after_reply_frames():  # end_call, transfer_call: after the goodbye
                await self.push_frame(action)
            return
        await super().process_frame(frame, direction)

    async def _push_llm_text(self, text: str):
        if self._tools is not None and text.strip():
            self._tools.text_pushed()
        await super()._push_llm_text(text)

    async def _process_context(self, context):
        # Tool rounds call this again from inside (voice/tools/calls.py); depth 1 is the reply itself.
        self._depth += 1
        try:
            await super()._process_context(context)
            if self._depth == 1 and self._tools is not None:
                await self._tools.finish(self)
        except Exception:
            if self._depth == 1 and self._tools is not None:
                await self._tools.settle(self)  # the turn fails (apology): no answer is pending any more
            raise
        finally:
            self._depth -= 1

    def register_function(self, function_name, *args, **kwargs):
        if function_name not in self.allowed_tools:
            raise ValueError(f"tool {function_name!r} is not in llm.allowed_tools")
        return super().register_function(function_name, *args, **kwargs)

    async def run_function_calls(self, function_calls):
        if self._tools is not None and self._tools.toolset:
            # Offered tools: unknown names and bad arguments go back to the model as tool errors
            # (ToolSet.run logs each in one line); the tool set holds only allowed names.
            await self._tools.run(self, function_calls)
            return
        allowed = []
        for call in function_calls:
            if call.function_name in self.allowed_tools:
                allowed.append(call)
            else:
                self.refused_tool_calls.append(call.function_name)
                logger.warning(f"refused a tool call the LLM returned: {call.function_name!r} "
                               f"is not in llm.allowed_tools")
        if allowed:
            await super().run_function_calls(allowed)

    def create_client(self, api_key=None, base_url=None, organization=None, project=None,
                      default_headers=None, **kwargs):
        return AsyncOpenAI(api_key=api_key, base_url=base_url, organization=organization,
                           project=project, default_headers=default_headers,
                           timeout=self._timeout_s, max_retries=0)


def make_llm_service(settings, local_llm: LocalLLM | None, executor=None, tools=None) -> LLMService:
    """``tools``: the session's voice.tools.calls.ToolCalling (OpenAI-compatible backend only)."""
    s = settings.llm
    if s.backend == "openai":
        return EndpointLLMService(
            api_key=s.api_key.get_secret_value() or "not-needed", base_url=s.base_url,
            timeout_s=s.timeout_s, allowed_tools=s.allowed_tools, tools=tools,
            settings=OpenAILLMService.Settings(model=s.model, temperature=s.temperature,
                                               max_completion_tokens=s.max_tokens),
        )
    assert local_llm is not None
    return LocalLLMService(local_llm, system_prompt=s.system_prompt, max_tokens=s.max_tokens,
                           temperature=s.temperature, executor=executor)
