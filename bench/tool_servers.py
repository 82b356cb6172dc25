"""Loopback peers for the tool tests and the tool benchmark (bench/tools.py).

* :class:`ToolHTTPServer`: a real HTTP tool service (weather, booking) with the bad
  behaviours the agent must survive: a hang, 503, 10 MB, non-JSON, a redirect.
* :class:`ScriptedLLM`: an OpenAI-compatible streaming chat endpoint that asks for
  scripted tool calls by keyword in the last user message and, once the tool
  results are in the context, answers from them. It stands in for a real model
  (the one external API the tests may replace), nothing else.

Both run ``http.server`` in a thread of their own, so they answer whatever the
event loop under test is doing.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

WEATHER = {
    "paris": {"city": "Paris", "temp_c": 12, "sky": "sunny"},
    "london": {"city": "London", "temp_c": 9, "sky": "cloudy"},  # whisper heard "rainy" as "reigning"
    "madrid": {"city": "Madrid", "temp_c": 20, "sky": "rainy"},
}


class _Threaded:
    handler: type

    def __init__(self, **attrs: Any):
        self.handler = type("Handler", (self.handler,), {"requests": [], **attrs})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self.server.daemon_threads = True
        self.port = self.server.server_port

    @property
    def requests(self) -> list:
        return self.handler.requests

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True, name=type(self).__name__).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


class _ToolHandler(http.server.BaseHTTPRequestHandler):
    requests: list
    delays: dict  # city -> seconds before answering
    redirect_to: str = ""

    def _send(self, code: int, body: bytes, ctype: str = "application/json", extra: dict | None = None) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent gave up (timeout, size limit): expected

    def do_GET(self):  # noqa: N802
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        type(self).requests.append({"method": "GET", "path": url.path, "query": q,
                                    "headers": {k.lower(): v for k, v in self.headers.items()}})
        if url.path == "/weather":
            city = q.get("city", "").lower()
            time.sleep(self.delays.get(city, 0.0))
            if city == "berlin":
                return self._send(503, b'{"error": "upstream down"}')
            if city == "tokyo":  # 10 MB
                return self._send(200, b'{"data": "' + b"x" * 10_000_000 + b'"}')
            if city == "rome":
                return self._send(200, b"<html><body>Rome: nice</body></html>", "text/html")
            if city == "oslo":  # hangs
                time.sleep(60)
            data = WEATHER.get(city)
            if data is None:
                return self._send(404, b'{"error": "unknown city"}')
            return self._send(200, json.dumps(data).encode())
        if url.path == "/redirect":
            return self._send(302, b"", extra={"Location": self.redirect_to})
        if url.path == "/secret":
            return self._send(200, b'{"secret": "you should not see this"}')
        return self._send(404, b"{}")

    def do_POST(self):  # noqa: N802
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)) or 0)
        type(self).requests.append({"method": "POST", "path": url.path, "body": json.loads(body or b"{}"),
                                    "headers": {k.lower(): v for k, v in self.headers.items()}})
        if url.path == "/book":
            return self._send(200, json.dumps({"booked": True, "reference": "AB12"}).encode())
        return self._send(404, b"{}")

    def log_message(self, *args):
        pass


class ToolHTTPServer(_Threaded):
    handler = _ToolHandler

    def __init__(self, delays: dict[str, float] | None = None, redirect_to: str = ""):
        super().__init__(delays=dict(delays or {}), redirect_to=redirect_to)
        self.url = f"http://127.0.0.1:{self.port}"


# ------------------------------------------------------------------------------ the LLM

def number_words(n: int) -> str:
    words = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
            "sixteen seventeen eighteen nineteen twenty".split()
    return ("minus " if n < 0 else "") + words[abs(n)] if abs(n) <= 20 else str(n)


# keyword in the user's words -> the tool calls the "model" asks for
DEFAULT_SCRIPT: dict[str, list[tuple[str, dict]]] = {
    "paris": [("get_weather", {"city": "Paris"})],
    "london": [("get_weather", {"city": "London"})],
    "madrid": [("get_weather", {"city": "Madrid"})],
    "berlin": [("get_weather", {"city": "Berlin"})],
    "tokyo": [("get_weather", {"city": "Tokyo"})],
    "rome": [("get_weather", {"town": "Rome"})],  # violates the schema (city is required)
    "files": [("delete_all_files", {"path": "/"})],  # no such tool
    "time": [("get_time", {})],
    "goodbye": [("end_call", {})],
    "desk": [("transfer_call", {"target": "desk"})],
    "operator": [("transfer_call", {"target": "operator"})],
    "person": [("transfer_call", {"target": "operator"})],
    "human": [("transfer_call", {"target": "operator"})],
    "moon": [("transfer_call", {"target": "sip:moon@203.0.113.9"})],  # not an allowed target
    "menu": [("send_dtmf", {"digits": "123"})],
    "calendar": [("next_meeting", {"day": "monday"})],
    "secret": [("delete_calendar", {})],  # an MCP tool the settings do not allow
}


def weather_sentence(data: dict) -> str:
    return f"It is {number_words(data['temp_c'])} degrees and {data['sky']} in {data['city']}."


def scripted_answer(messages: list[dict], tools: list[str] | None = None) -> tuple[str, Any]:
    """("text", reply) or ("tools", [(name, args), ...]) for this conversation.

    ``tools``: the names the request offers; a call to an offered one is asked for
    only if offered (the benchmark's baseline offers none and gets the same
    weather sentence straight away, as from a model that knew it). None: no check.
    """
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        results = []
        for m in reversed(messages):
            if m.get("role") != "tool":
                break
            results.append(str(m.get("content", "")))
        text = " ".join(reversed(results))
        if "no tool named" in text:
            return "text", "Sorry, I cannot do that."
        if "invalid arguments for get_weather" in text:
            return "text", "Which city do you mean?"
        if "invalid arguments" in text:
            return "text", "Sorry, I cannot do that."
        if text.startswith("error"):
            return "text", "Sorry, that service is not working right now."
        if "the call ends" in text:
            return "text", "Goodbye, have a nice day."
        if "transferred" in text:
            return "text", "I am putting you through now."
        if "sent the tones" in text:
            return "text", "Done, I pressed the keys."
        if "meeting" in text:
            return "text", f"Your next meeting is {json.loads(text).get('meeting', text)}."
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return "text", "Here is what I found."
        if "temp_c" in data:
            return "text", weather_sentence(data)
        if "time" in data:
            return "text", f"It is {data['time']} now."
        return "text", "Here is what I found."
    said = str(last.get("content", "")).lower()
    if tools is not None and not tools:
        city = next((c for c in WEATHER if c in said), None)
        if city is not None:
            return "text", weather_sentence(WEATHER[city])
    for word, calls in DEFAULT_SCRIPT.items():
        if word in said:
            return "tools", calls
    return "text", "I am not sure, sorry about that."


class _LLMHandler(http.server.BaseHTTPRequestHandler):
    requests: list
    ttft_s: float = 0.0
    baseline: bool = False

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        type(self).requests.append(body)
        offered = [t["function"]["name"] for t in body.get("tools", [])]
        kind, answer = scripted_answer(body.get("messages", []), offered if self.baseline else None)
        if self.ttft_s:
            time.sleep(self.ttft_s)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            if kind == "tools":
                for i, (name, args) in enumerate(answer):
                    call = {"index": i, "id": f"call_{len(type(self).requests)}_{i}", "type": "function",
                            "function": {"name": name, "arguments": json.dumps(args)}}
                    self._chunk({"tool_calls": [call]}, None)
                self._chunk({}, "tool_calls")
            else:
                for piece in answer.split(" "):
                    self._chunk({"content": piece + " "}, None)
                self._chunk({}, "stop")
            self.wfile.write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _chunk(self, delta: dict, finish: str | None) -> None:
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.flush()

    def log_message(self, *args):
        pass


class ScriptedLLM(_Threaded):
    """``ttft_s``: each answer starts this late (a model's time to first token).
    ``baseline``: with no tools offered, weather questions are answered at once."""

    handler = _LLMHandler

    def __init__(self, ttft_s: float = 0.0, baseline: bool = False):
        super().__init__(ttft_s=ttft_s, baseline=baseline)
        self.url = f"http://127.0.0.1:{self.port}/v1"


def weather_tool(url: str, **overrides: Any) -> dict[str, Any]:
    """The README's weather tool, as a [[tools.http]] entry pointing at ``url``."""
    return {"name": "get_weather", "description": "Current weather in a city.", "method": "GET",
            "url": f"{url}/weather", "timeout_s": 5,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            **overrides}
