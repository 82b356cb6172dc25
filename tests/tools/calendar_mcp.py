"""A tiny MCP server for the tool tests, written with the ``mcp`` package's MCPServer (FastMCP in mcp 1.x).

    python calendar_mcp.py CALLS_LOG                      # stdio
    python calendar_mcp.py CALLS_LOG --http PORT          # streamable HTTP on 127.0.0.1:PORT/mcp

Every call it receives is appended to CALLS_LOG (one JSON line), so a test can tell
which tools were really reached.
"""

from __future__ import annotations

import json
import sys
import time

from mcp.server.mcpserver import MCPServer

LOG = sys.argv[1]
app = MCPServer("calendar")


def _log(name: str, **args) -> None:
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"tool": name, "args": args}) + "\n")


@app.tool()
def next_meeting(day: str) -> str:
    """The caller's next meeting on a given day."""
    _log("next_meeting", day=day)
    return json.dumps({"meeting": f"the team call at ten on {day}"})


@app.tool()
def slow_meeting(day: str) -> str:
    """A calendar lookup that never answers in time."""
    _log("slow_meeting", day=day)
    time.sleep(30)
    return "late"


@app.tool()
def delete_calendar() -> str:
    """Deletes every meeting. The agent's settings never allow this one."""
    _log("delete_calendar")
    return "deleted everything"


if __name__ == "__main__":
    if "--http" in sys.argv:
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[sys.argv.index("--http") + 1]))
    else:
        app.run()
