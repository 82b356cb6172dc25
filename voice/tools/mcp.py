"""MCP servers as tools (``[[tools.mcp]]``), through pipecat's MCP client.

Each session connects to each configured server (a subprocess over stdio, or a
streamable-HTTP URL) when its pipeline starts, lists the server's tools, keeps
only those named in ``llm.allowed_tools`` (pipecat's ``tools_filter``), and
offers them with the server's own schemas. A call goes through the client's
handler; what it answers goes back to the LLM. The connection closes with the
session.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from voice.tools.base import Tool, ToolError
from voice.tools.config import MCPServerSettings

_MCP_ERRORS = ("Error calling mcp tool", "Sorry, could not call the mcp tool")


def _params(server: MCPServerSettings):
    if server.command:
        from mcp import StdioServerParameters

        env = None
        if server.env:
            from mcp.client.stdio import get_default_environment

            env = {**get_default_environment(), **{k: os.path.expandvars(v) for k, v in server.env.items()}}
        return StdioServerParameters(command=server.command[0], args=list(server.command[1:]), env=env)
    from mcp.client.session_group import StreamableHttpParameters

    return StreamableHttpParameters(url=server.url, timeout=server.connect_timeout_s)


def _tool(server: MCPServerSettings, schema, client) -> Tool:
    from pipecat.services.llm_service import FunctionCallParams

    handler = schema.handler
    name = schema.name

    async def call(arguments: dict[str, Any]) -> str:
        results: list[Any] = []

        async def result_callback(result, *, properties=None):
            results.append(result)

        # The handler pipecat registers for MCP tools, called with hand-built params (no pipeline needed).
        await handler(FunctionCallParams(function_name=name, tool_call_id="", arguments=arguments, llm=None,
                                         pipeline_worker=None, context=None, result_callback=result_callback))
        text = str(results[-1]) if results else ""
        if not text or text.startswith(_MCP_ERRORS):
            raise ToolError((text or "no answer").replace("Error calling mcp tool ", "")[:200])
        return text

    parameters = {"type": "object", "properties": dict(schema.properties or {}),
                  "required": list(schema.required or [])}
    return Tool(name=name, description=schema.description or name, parameters=parameters, call=call,
                timeout_s=server.timeout_s, side_effects=server.side_effects, kind="mcp")


async def connect_server(server: MCPServerSettings, allowed: set[str], max_chars: int):
    """(tools, close): the server's tools that ``allowed`` names, and how to close the connection."""
    from pipecat.services.mcp_service import MCPClient

    client = MCPClient(server_params=_params(server), tools_filter=sorted(allowed))
    try:
        schemas = await asyncio.wait_for(client.tools(), server.connect_timeout_s)
    except BaseException:
        await client.close()
        raise
    tools = [_tool(server, s, client) for s in schemas.standard_tools if s.name in allowed]
    return tools, client.close
