"""Tools the agent can call while it talks: HTTP endpoints, MCP servers, call control.

Modules, one idea each, imports running one way (nothing here imports a transport
or the session; transports hand in a :class:`CallControl`):
``config.py`` the ``[tools]`` settings; ``base.py`` a tool and the checked way to run one;
``http.py`` HTTP tools; ``mcp.py`` MCP servers through pipecat's MCP client;
``builtins.py`` get_time, end_call, transfer_call, send_dtmf; ``actions.py`` call
control as frames that run after the speech before them; ``registry.py`` which tools
a session offers; ``calls.py`` running the calls inside a reply (filler, barge-in).
"""

from __future__ import annotations

from voice.tools.actions import CallActionRunner, CallControl, PendingActions
from voice.tools.base import Tool, ToolError, ToolSet
from voice.tools.registry import tools_off_reason


def session_tools(settings, events, conversation, call_control: CallControl | None = None):
    """The session's ToolCalling for the LLM service, or None when it offers no tool."""
    from voice.tools.calls import ToolCalling
    from voice.tools.registry import connect_mcp, session_toolset, wants_mcp

    pending = PendingActions()
    toolset = session_toolset(settings, call_control, pending)
    connect = (lambda: connect_mcp(settings, toolset)) if wants_mcp(settings) else None
    if not toolset and connect is None:
        return None
    return ToolCalling(toolset, settings.tools, events, conversation, pending, connect=connect)


__all__ = ["CallActionRunner", "CallControl", "PendingActions", "Tool", "ToolError", "ToolSet",
           "session_tools", "tools_off_reason"]
