"""Tool calls inside one reply, for the OpenAI-compatible LLM service (voice/llm.py).

The pipeline has no pipecat context aggregators (the turn controller builds each
turn's context), so pipecat's own function-call runner, which hands results to
an aggregator that re-prompts later, would leave the reply empty. Instead the
calls run in-line, inside the reply's generation: the service streams the
model's answer, the model asks for tools, :meth:`ToolCalling.run` runs them
(concurrently, each through :meth:`ToolSet.run`), appends the assistant's
``tool_calls`` message and one ``tool`` message per call to the context, and
the service streams the model again, up to ``tools.max_rounds`` rounds. The
reply is one reply (one LLMFullResponseStart/End) however many rounds it took.

While the calls run
    If no result is back after ``tools.filler_after_s`` (0.7 s), the reply
    says ``tools.filler`` ("One moment.") once, as its first words.

Speculative replies
    A reply generated before the turn end is confirmed (held by the reply gate)
    runs tools without side effects (GET, get_time) at once; a tool with side
    effects (POST, MCP, call control) waits for the confirmation, and never
    runs if the speculation is dropped.

Barge-in (the policy)
    The user talking over the reply interrupts the generation: a call still
    running is cancelled and its result dropped (the user has moved on; the
    model can call again from the new turn). Calls that had finished are kept:
    their ``tool_calls``/``tool`` messages stay in the conversation, so the next
    reply can use the result without calling again.

Every call and result is an event (``tool_call``, ``tool_result``, ``tool_filler``)
with the session and turn ids: the JSONL log, the session record and the page.
"""

from __future__ import annotations

import asyncio
import json

from loguru import logger
from pipecat.frames.frames import LLMTextFrame
from pipecat.processors.frame_processor import FrameDirection

from voice.frames import ReplyPendingFrame
from voice.tools.actions import CallActionFrame, PendingActions
from voice.tools.base import ToolSet
from voice.tools.config import ToolsSettings


class ToolCalling:
    """One session's tool calling: its tools, its pending call actions, the reply in progress."""

    def __init__(self, toolset: ToolSet, settings: ToolsSettings, events, conversation,
                 pending: PendingActions | None = None, connect=None):
        self.toolset = toolset
        self.connect = connect  # async () -> None: adds the MCP servers' tools (None: none configured)
        self.settings = settings
        self.events = events
        self.conversation = conversation
        self.pending = pending or PendingActions()
        self._rounds = 0
        self._filler_said = False
        self._text_pushed = False
        self._hangup_asked = False
        self._speculative = False
        self._release: asyncio.Event | None = None
        self._unreleased: list[dict] = []  # a held reply's tool messages, kept once it is released

    # ---- the reply's life -------------------------------------------------------------------
    def begin(self, *, speculative: bool, release: asyncio.Event | None) -> None:
        self._rounds = 0
        self._filler_said = False
        self._text_pushed = False
        self._hangup_asked = False
        self._speculative = speculative and release is not None
        self._release = release
        self.pending.clear()

    async def aclose(self) -> None:
        await self.toolset.aclose()

    def text_pushed(self) -> None:
        self._text_pushed = True

    def released(self) -> None:
        """The held reply is confirmed: what its tools did joins the conversation."""
        if self._unreleased:
            self.conversation.add_tool_messages(self._unreleased)
            self._unreleased = []

    def interrupted(self) -> None:
        self._unreleased = []
        self.pending.clear()
        self._filler_said = False

    def after_reply_frames(self) -> list[CallActionFrame]:
        """Actions that run once the reply has played (end_call, transfer_call)."""
        return [CallActionFrame(action=a) for a in self.pending.take(after_reply=True)]

    # ---- the calls ----------------------------------------------------------------------------
    async def run(self, service, function_calls) -> None:
        if not function_calls:
            return
        context = function_calls[0].context
        turn = self.conversation.current_turn
        self._rounds += 1
        for c in function_calls:
            self.events.emit("tool_call", turn=turn, id=c.tool_call_id, name=c.function_name,
                             arguments=c.arguments)
        tasks = [asyncio.ensure_future(self._one(c)) for c in function_calls]
        try:
            _, waiting = await asyncio.wait(tasks, timeout=self.settings.filler_after_s)
            if waiting and not self._filler_said and self.settings.filler:
                self._filler_said = True
                self.events.emit("tool_filler", turn=turn, text=self.settings.filler)
                await service.push_frame(LLMTextFrame(self.settings.filler + " "))
                # The filler's audio will stop before the answer comes: not the end of the reply.
                await service.push_frame(ReplyPendingFrame(pending=True), FrameDirection.UPSTREAM)
            outcomes = await asyncio.gather(*tasks)
        finally:
            for c, t in zip(function_calls, tasks):
                if not t.done() or t.cancelled():  # a barge-in cancelled us: calls still running go with it
                    t.cancel()
                    self.events.emit("tool_result", turn=turn, id=c.tool_call_id, name=c.function_name, ok=False,
                                     seconds=None, result=None, error="cancelled: the user spoke")
        messages: list[dict] = [{
            "role": "assistant", "content": "",
            "tool_calls": [{"id": c.tool_call_id, "type": "function",
                            "function": {"name": c.function_name,
                                         "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                           for c in function_calls]}]
        for c, o in zip(function_calls, outcomes):
            self.events.emit("tool_result", turn=turn, id=c.tool_call_id, name=c.function_name, ok=o.ok,
                             seconds=round(o.seconds, 4), result=o.content[:300] if o.ok else None,
                             error=o.error)
            messages.append({"role": "tool", "tool_call_id": c.tool_call_id, "content": o.content})
            if o.ok and c.function_name == "end_call":
                self._hangup_asked = True
        context.add_messages(messages)
        if self._speculative and not self._release.is_set():
            self._unreleased.extend(messages)
        else:
            self.conversation.add_tool_messages(messages)
        for action in self.pending.take(after_reply=False):
            await service.push_frame(CallActionFrame(action=action))  # in order with the speech so far
        if self._rounds >= self.settings.max_rounds:
            logger.warning(f"tool calls: {self._rounds} rounds in one reply, no more (tools.max_rounds)")
        else:
            await service._process_context(context)

    async def finish(self, service) -> None:
        """The model is done with this reply: an end_call it answered with silence still says goodbye."""
        if self._hangup_asked and not self._text_pushed and self.settings.goodbye:
            self._text_pushed = True
            await service.push_frame(LLMTextFrame(self.settings.goodbye + " "))
        await self.settle(service)

    async def settle(self, service) -> None:
        """The reply's text is all out (or it was cut): its audio stopping now ends it."""
        if self._filler_said:
            await service.push_frame(ReplyPendingFrame(pending=False), FrameDirection.UPSTREAM)

    async def _one(self, call):
        tool = self.toolset.tools.get(call.function_name)
        if tool is not None and tool.side_effects and self._speculative:
            await self._release.wait()  # never for a speculation that is dropped: we are cancelled first
        return await self.toolset.run(call.function_name, call.arguments)
