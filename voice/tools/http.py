"""HTTP tools: one configured endpoint each (``[[tools.http]]``).

GET sends the arguments as query parameters, POST as a JSON body, to the URL in
the settings and nowhere else: redirects are refused, the body is read at most
``max_response_bytes`` far, and a response that is not JSON is an error. What
comes back goes to the LLM as the tool message.
"""

from __future__ import annotations

import json
import os
from typing import Any

import aiohttp

from voice.tools.base import Tool, ToolError
from voice.tools.config import HTTPToolSettings


def _query(arguments: dict[str, Any]) -> dict[str, str]:
    """Query parameters: strings as they are, booleans as true/false, lists and objects as JSON."""
    out = {}
    for k, v in arguments.items():
        if v is None:
            continue
        if isinstance(v, bool):
            out[k] = "true" if v else "false"
        elif isinstance(v, (dict, list)):
            out[k] = json.dumps(v)
        else:
            out[k] = str(v)
    return out


class HTTPTool:
    """Calls one endpoint; a session shares nothing with another (one client session per call)."""

    def __init__(self, settings: HTTPToolSettings):
        self.settings = settings

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "voice-agent-tools"}
        for header, var in self.settings.headers_from_env.items():
            value = os.environ.get(var)
            if value is None:
                raise ToolError(f"the header {header} needs the environment variable {var}, which is not set")
            headers[header] = value
        return headers

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        s = self.settings
        timeout = aiohttp.ClientTimeout(total=s.timeout_s)
        kwargs: dict[str, Any] = {"params": _query(arguments)} if s.method == "GET" else {"json": arguments}
        try:
            async with aiohttp.ClientSession(timeout=timeout, headers=self.headers()) as http:
                async with http.request(s.method, s.url, allow_redirects=False, **kwargs) as r:
                    if 300 <= r.status < 400:
                        raise ToolError(f"the service answered with a redirect ({r.status}), which is not followed")
                    if r.status >= 400:
                        raise ToolError(f"the service answered HTTP {r.status}")
                    if r.content_length is not None and r.content_length > s.max_response_bytes:
                        raise ToolError(f"the answer is too large ({r.content_length} bytes)")
                    body = await r.content.read(s.max_response_bytes + 1)
                    if len(body) > s.max_response_bytes:
                        raise ToolError(f"the answer is too large (over {s.max_response_bytes} bytes)")
        except aiohttp.ClientError as e:
            raise ToolError(f"cannot reach the service: {type(e).__name__}") from None
        if not body.strip():
            return {"ok": True}
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ToolError("the service did not answer with JSON") from None


def http_tool(settings: HTTPToolSettings) -> Tool:
    return Tool(name=settings.name, description=settings.description, parameters=settings.parameters,
                call=HTTPTool(settings), timeout_s=settings.timeout_s, side_effects=settings.has_side_effects,
                kind="http")
