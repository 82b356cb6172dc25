"""Which tools a session offers its LLM, built from the settings.

A tool is offered only if (1) the LLM backend can call tools (the OpenAI-compatible
one; the embedded 270M base model cannot), (2) it is declared (``[[tools.http]]``,
a tool of a ``[[tools.mcp]]`` server) or built in and supported by the session's
transport, and (3) its name is in ``llm.allowed_tools``. Nothing else can be
called: the LLM only sees these schemas, and a call to any other name is refused.
"""

from __future__ import annotations

from loguru import logger

from voice.tools.actions import CallControl, PendingActions
from voice.tools.base import ToolSet
from voice.tools.builtins import BUILTIN_NAMES, builtin_tools
from voice.tools.http import http_tool

NO_TOOLS_LOCAL = ("tools are off: the embedded llama-cpp model cannot call tools; "
                  "set llm.backend = \"openai\" with a model that can")


def tools_off_reason(settings) -> str | None:
    """One line saying why tools are off although some are configured, or None."""
    configured = settings.llm.allowed_tools or settings.tools.http or settings.tools.mcp
    if configured and settings.llm.backend != "openai":
        return NO_TOOLS_LOCAL
    return None


def unknown_allowed(settings) -> list[str]:
    """Names in llm.allowed_tools that no HTTP tool or built-in has (MCP tools are only known live)."""
    known = set(BUILTIN_NAMES) | {t.name for t in settings.tools.http}
    return [n for n in settings.llm.allowed_tools if n not in known] if not settings.tools.mcp else []


def session_toolset(settings, control: CallControl | None, pending: PendingActions) -> ToolSet:
    """The HTTP tools and built-ins this session may call; MCP tools join in :func:`connect_mcp`."""
    allowed = set(settings.llm.allowed_tools)
    toolset = ToolSet(max_result_chars=settings.tools.max_result_chars)
    if settings.llm.backend != "openai" or not allowed:
        return toolset
    for tool in builtin_tools(settings.tools, control, pending):
        if tool.name in allowed:
            toolset.add(tool)
    for spec in settings.tools.http:
        if spec.name in allowed:
            if spec.name in toolset:
                logger.warning(f"HTTP tool {spec.name!r} has a built-in's name; the built-in is used")
                continue
            toolset.add(http_tool(spec))
    return toolset


def wants_mcp(settings) -> bool:
    return settings.llm.backend == "openai" and bool(settings.llm.allowed_tools) and bool(settings.tools.mcp)


async def connect_mcp(settings, toolset: ToolSet) -> None:
    """Start this session's MCP servers and add their allowed tools (failures are logged, not raised)."""
    if not wants_mcp(settings):
        return
    from voice.tools.mcp import connect_server

    allowed = set(settings.llm.allowed_tools)
    for server in settings.tools.mcp:
        try:
            tools, close = await connect_server(server, allowed, toolset.max_result_chars)
        except Exception as e:
            logger.error(f"MCP server {server.name!r} is unavailable: {' '.join(str(e).split())[:300]}")
            continue
        toolset.on_close(close)
        for tool in tools:
            if tool.name in toolset:
                logger.warning(f"MCP tool {tool.name!r} of {server.name!r} clashes with another tool; skipped")
                continue
            toolset.add(tool)
