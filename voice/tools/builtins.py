"""The built-in tools: ``get_time`` everywhere; call control where the transport has a call.

``end_call`` (SIP BYE, WebRTC close, end of a ``voice talk`` session),
``transfer_call(target)`` (SIP REFER, only to a name in ``tools.transfer_targets``) and
``send_dtmf(digits)`` (SIP, RFC 4733) queue a :class:`~voice.tools.actions.CallAction`;
it runs once the speech before it has played (actions.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from voice.tools.actions import CallAction, CallControl, PendingActions
from voice.tools.base import Tool, ToolError
from voice.tools.config import EMPTY_OBJECT, ToolsSettings

BUILTIN_NAMES = ("get_time", "end_call", "transfer_call", "send_dtmf")
DTMF_PATTERN = r"^[0-9*#A-Da-d]{1,32}$"


def _now(zone: str | None) -> dt.datetime:
    if zone:
        from zoneinfo import ZoneInfo

        return dt.datetime.now(ZoneInfo(zone))
    return dt.datetime.now().astimezone()


def builtin_tools(settings: ToolsSettings, control: CallControl | None, pending: PendingActions) -> list[Tool]:
    """The built-ins this session's transport supports (before the ``llm.allowed_tools`` filter)."""

    async def get_time(args: dict[str, Any]) -> dict[str, Any]:
        now = _now(settings.timezone)
        return {"time": now.strftime("%H:%M"), "date": now.strftime("%A %d %B %Y"), "timezone": now.tzname()}

    tools = [Tool("get_time", "The current local date and time.", dict(EMPTY_OBJECT), get_time, timeout_s=1.0)]
    if control is None:
        return tools

    if control.hangup is not None:
        async def end_call(args: dict[str, Any]) -> str:
            pending.add(CallAction("hangup"))
            return "ok: the call ends after your reply. Say a short goodbye now and nothing else."

        tools.append(Tool("end_call", "End the call, when the caller is done or asks to hang up. "
                          "Say goodbye in the same reply.", dict(EMPTY_OBJECT), end_call, timeout_s=1.0,
                          side_effects=True))

    if control.transfer is not None and settings.transfer_targets:
        targets = dict(settings.transfer_targets)

        async def transfer_call(args: dict[str, Any]) -> str:
            uri = targets.get(args["target"])
            if uri is None:  # the schema's enum already refuses it; this is the second lock
                raise ToolError(f"{args['target']!r} is not a transfer target")
            pending.add(CallAction("transfer", uri))
            return f"ok: the caller is transferred to {args['target']} after your reply. Tell them briefly."

        tools.append(Tool(
            "transfer_call", "Transfer the caller to a person or department.",
            {"type": "object", "properties": {"target": {
                "type": "string", "enum": sorted(targets), "description": "where to transfer the caller"}},
             "required": ["target"], "additionalProperties": False},
            transfer_call, timeout_s=1.0, side_effects=True))

    if control.send_dtmf is not None:
        async def send_dtmf(args: dict[str, Any]) -> str:
            digits = args["digits"].upper()
            pending.add(CallAction("send_dtmf", digits, after_reply=False))
            return f"ok: sent the tones {digits}"

        tools.append(Tool(
            "send_dtmf", "Press telephone keys (DTMF tones) on this call, e.g. to navigate a phone menu.",
            {"type": "object", "properties": {"digits": {
                "type": "string", "pattern": DTMF_PATTERN, "description": "keys to press: 0-9, * and #"}},
             "required": ["digits"], "additionalProperties": False},
            send_dtmf, timeout_s=1.0, side_effects=True))
    return tools
