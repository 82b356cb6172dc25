"""Tools (voice/tools): HTTP tools against a real local service, the allowlist, bad input.

The HTTP tool service and the OpenAI-compatible endpoint are real servers on
loopback (bench/tool_servers.py); the endpoint emits scripted tool calls, the one
external API these tests stand in for. Nothing under test is mocked. The end-to-end
tests run the live agent through ``voice talk`` on espeak-ng speech.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from bench.tool_servers import ScriptedLLM, ToolHTTPServer, weather_tool
from tests.conftest import ROOT, session_record


def _settings(settings, tmp_path, *, url="http://127.0.0.1:9/v1", allowed=(), http=(), mcp=(), **tools):
    from voice.settings import ToolsSettings

    return settings.model_copy(update={
        "data_dir": tmp_path / "data",
        "llm": settings.llm.model_copy(update={"backend": "openai", "base_url": url, "allowed_tools": list(allowed)}),
        "tools": ToolsSettings(http=list(http), mcp=list(mcp), **tools)})


def _toolset(s, control=None):
    from voice.tools import PendingActions
    from voice.tools.registry import session_toolset

    pending = PendingActions()
    return session_toolset(s, control, pending), pending


# ------------------------------------------------------------------ settings and the allowlist


def test_settings_from_toml_and_bad_declarations(tmp_path):
    from voice.settings import ConfigError, load_settings

    good = tmp_path / "voice.toml"
    good.write_text('''
[llm]
backend = "openai"
base_url = "http://127.0.0.1:8001/v1"
model = "my-model"
allowed_tools = ["get_weather", "end_call", "transfer_call"]

[[tools.http]]
name = "get_weather"
description = "Current weather in a city."
method = "GET"
url = "http://127.0.0.1:9000/weather"
parameters = { type = "object", properties = { city = { type = "string" } }, required = ["city"] }
timeout_s = 5

[[tools.mcp]]
name = "calendar"
command = ["python", "-m", "my_calendar_mcp"]
''')
    s = load_settings(good)
    assert s.tools.http[0].name == "get_weather" and s.tools.http[0].parameters["required"] == ["city"]
    assert s.tools.mcp[0].command == ["python", "-m", "my_calendar_mcp"]
    for bad, why in [
        ('[[tools.http]]\nname = "x y"\ndescription = "d"\nurl = "http://h/"\n', "tools.http.0.name"),
        ('[[tools.http]]\nname = "x"\ndescription = "d"\nurl = "file:///etc/passwd"\n', "tools.http.0.url"),
        ('[[tools.http]]\nname = "x"\ndescription = "d"\nurl = "http://h/"\nparameters = { type = "string" }\n',
         "tools.http.0.parameters"),
        ('[[tools.http]]\nname = "x"\ndescription = "d"\nurl = "http://h/"\n'
         'parameters = { type = "object", properties = { a = { type = "nope" } } }\n', "tools.http.0.parameters"),
        ('[[tools.mcp]]\nname = "m"\n', "tools.mcp.0"),
        ('[tools]\ntransfer_targets = { desk = "tel:123" }\n', "tools.transfer_targets"),
    ]:
        path = tmp_path / "bad.toml"
        path.write_text(bad)
        with pytest.raises(ConfigError, match=f"invalid setting {why}"):
            load_settings(path)


def test_only_allowed_tools_are_offered(settings, tmp_path):
    from voice.tools import CallControl

    declared = [weather_tool("http://127.0.0.1:9"), weather_tool("http://127.0.0.1:9", name="book_table",
                                                                 method="POST")]
    control = CallControl(hangup=lambda: None, transfer=lambda uri: None, send_dtmf=lambda d: None)
    s = _settings(settings, tmp_path, allowed=["get_weather", "end_call"], http=declared,
                  transfer_targets={"desk": "sip:desk@127.0.0.1"})
    toolset, _ = _toolset(s, control)
    assert toolset.names() == ["end_call", "get_weather"]
    offered = [f.name for f in toolset.schemas().standard_tools]
    assert offered == ["get_weather", "end_call"] or sorted(offered) == ["end_call", "get_weather"]
    # call control only where the transport has it
    s2 = _settings(settings, tmp_path, allowed=["end_call", "transfer_call", "send_dtmf", "get_time"],
                   transfer_targets={"desk": "sip:desk@127.0.0.1"})
    assert _toolset(s2, None)[0].names() == ["get_time"]
    assert _toolset(s2, CallControl(hangup=lambda: None))[0].names() == ["end_call", "get_time"]
    assert _toolset(s2, control)[0].names() == ["end_call", "get_time", "send_dtmf", "transfer_call"]
    # no targets: no transfer_call at all
    s3 = _settings(settings, tmp_path, allowed=["transfer_call"])
    assert _toolset(s3, control)[0].names() == []
    # the embedded model: no tools whatever is allowed
    local = s.model_copy(update={"llm": s.llm.model_copy(update={"backend": "llama-cpp"})})
    assert not _toolset(local, control)[0]


def test_voice_config_says_why_tools_are_off(tmp_path):
    cfg = tmp_path / "voice.toml"
    cfg.write_text('[llm]\nallowed_tools = ["get_time"]\n')
    proc = subprocess.run([sys.executable, "-m", "voice.cli", "config", "--config", str(cfg)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["llm"]["allowed_tools"] == ["get_time"]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("voice: tools are off: the embedded llama-cpp model"), lines


# ------------------------------------------------------------------ HTTP tools, good and bad


def test_http_tool_get_and_post_reach_only_the_configured_url(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("WEATHER_KEY", "s3cret")
    with ToolHTTPServer() as other, ToolHTTPServer(redirect_to=f"http://127.0.0.1:{0}/secret") as srv:
        srv.handler.redirect_to = f"{other.url}/secret"
        s = _settings(settings, tmp_path, allowed=["get_weather", "book_table", "sneaky"], http=[
            weather_tool(srv.url, headers_from_env={"X-Api-Key": "WEATHER_KEY"}),
            {"name": "book_table", "description": "Book a table.", "method": "POST", "url": f"{srv.url}/book",
             "parameters": {"type": "object", "properties": {"people": {"type": "integer", "minimum": 1}},
                            "required": ["people"]}},
            {"name": "sneaky", "description": "Redirects.", "url": f"{srv.url}/redirect"}])
        toolset, _ = _toolset(s)

        async def go():
            return [await toolset.run("get_weather", {"city": "Paris"}),
                    await toolset.run("book_table", {"people": 2}),
                    await toolset.run("sneaky", {})]

        weather, booking, redirect = asyncio.run(go())
    assert weather.ok and json.loads(weather.content) == {"city": "Paris", "temp_c": 12, "sky": "sunny"}
    get = srv.requests[0]
    assert get["path"] == "/weather" and get["query"] == {"city": "Paris"} and get["headers"]["x-api-key"] == "s3cret"
    assert booking.ok and json.loads(booking.content)["booked"] is True
    assert srv.requests[1]["body"] == {"people": 2}
    assert not redirect.ok and "redirect" in redirect.error
    assert other.requests == [], "a redirect must not take the call anywhere the settings did not name"
    assert not toolset.tools["get_weather"].side_effects and toolset.tools["book_table"].side_effects


def test_http_tool_bad_answers_are_short_errors(settings, tmp_path):
    with ToolHTTPServer() as srv:
        s = _settings(settings, tmp_path, allowed=["get_weather", "quick"],
                      http=[weather_tool(srv.url, timeout_s=1.0, max_response_bytes=100_000)])
        toolset, _ = _toolset(s)

        async def go():
            return {case: await toolset.run(name, args) for case, name, args in [
                ("hang", "get_weather", {"city": "Oslo"}),
                ("5xx", "get_weather", {"city": "Berlin"}),
                ("10MB", "get_weather", {"city": "Tokyo"}),
                ("not json", "get_weather", {"city": "Rome"}),
                ("unknown tool", "delete_all_files", {"path": "/"}),
                ("missing arg", "get_weather", {"town": "Rome"}),
                ("wrong type", "get_weather", {"city": 7}),
                ("not an object", "get_weather", ["Paris"]),
                ("fine after all that", "get_weather", {"city": "Paris"}),
            ]}

        out = asyncio.run(go())
    expect = {"hang": "did not answer within 1 s", "5xx": "HTTP 503", "10MB": "too large",
              "not json": "did not answer with JSON", "unknown tool": "no tool named 'delete_all_files'",
              "missing arg": "'city' is a required property", "wrong type": "city: 7 is not of type 'string'",
              "not an object": "must be a JSON object"}
    for case, needle in expect.items():
        o = out[case]
        assert not o.ok and needle in o.content and o.content.startswith("error: "), (case, o)
        assert len(o.content) <= 320 and "\n" not in o.content, (case, o.content)
    assert out["fine after all that"].ok
    # only schema-valid calls to configured tools reached the service
    cities = [r["query"].get("city") for r in srv.requests]
    assert sorted(cities) == ["Berlin", "Oslo", "Paris", "Rome", "Tokyo"], cities


def test_builtins_refuse_targets_and_digits_outside_the_settings(settings, tmp_path):
    from voice.tools import CallControl

    control = CallControl(hangup=lambda: None, transfer=lambda uri: None, send_dtmf=lambda d: None)
    s = _settings(settings, tmp_path, allowed=["transfer_call", "send_dtmf", "get_time", "end_call"],
                  transfer_targets={"desk": "sip:desk@127.0.0.1:5099"})
    toolset, pending = _toolset(s, control)

    async def go():
        return [await toolset.run("transfer_call", {"target": "sip:moon@203.0.113.9"}),
                await toolset.run("transfer_call", {"target": "moon"}),
                await toolset.run("send_dtmf", {"digits": "12; rm -rf"}),
                await toolset.run("transfer_call", {"target": "desk"}),
                await toolset.run("send_dtmf", {"digits": "12#"}),
                await toolset.run("get_time", {}),
                await toolset.run("end_call", {})]

    uri, name, digits, desk, dtmf, now, end = asyncio.run(go())
    assert not uri.ok and "is not one of ['desk']" in uri.content
    assert not name.ok and not digits.ok and "does not match" in digits.content
    assert desk.ok and dtmf.ok and now.ok and end.ok
    assert "time" in json.loads(now.content)
    assert [(a.kind, a.arg, a.after_reply) for a in pending.items] == [
        ("transfer", "sip:desk@127.0.0.1:5099", True), ("send_dtmf", "12#", False), ("hangup", None, True)]


# ------------------------------------------------------------------ end to end through `voice talk`


def _questions(tmp_path, *texts: str, gap_s: float = 7.0, name: str = "q"):
    from tests.conftest import concat, speak
    from voice.audio import read_wav, write_wav

    parts: list = [0.5]
    for i, text in enumerate(texts):
        parts += [read_wav(speak(text, tmp_path / f"{name}{i}.wav", lead_s=0, tail_s=0)), gap_s]
    wav = tmp_path / f"{name}.wav"
    write_wav(wav, concat(parts), 16000)
    return wav


def _heard(result, out_path, transcriber) -> list[str]:
    """What the agent said after each question (up to the next one), lower case."""
    from voice.audio import read_wav

    out = read_wav(out_path)
    ends = [int(e["speech_end"] * 16000) for e in result.events.of("endpoint")] + [len(out)]
    return [transcriber.transcribe(out[a:b]).lower() for a, b in zip(ends, ends[1:])]


@pytest.mark.slow
def test_talk_weather_tool_filler_and_end_call(tmp_path, settings, runtime, transcriber):
    """By voice: a weather question calls the HTTP tool and the answer carries its data; a slow tool
    gets "One moment." first; "goodbye" calls end_call, which says goodbye and ends the session.
    The calls are in the event log (session and turn ids), the LLM's requests and the session record."""
    from voice.talk import talk_file

    wav = _questions(tmp_path, "What is the weather in Paris?", "And what is the weather in London?",
                     "Thank you, goodbye.", "Are you still there?")
    with ToolHTTPServer(delays={"london": 2.5}) as srv, ScriptedLLM() as llm:
        s = _settings(settings, tmp_path, url=llm.url, allowed=["get_weather", "end_call", "get_time"],
                      http=[weather_tool(srv.url), weather_tool(srv.url, name="book_table", method="POST")])
        result = asyncio.run(talk_file(wav, tmp_path / "o.wav", tmp_path / "events.jsonl", s, runtime=runtime))
        requests = list(llm.requests)
    ev = result.events
    heard = _heard(result, tmp_path / "o.wav", transcriber)
    print("heard:", heard)
    assert len(heard) == 3, (heard, [e["text"] for e in ev.of("endpoint")])  # the 4th question was never heard
    assert "sunny" in heard[0] and ("12" in heard[0] or "twelve" in heard[0]), heard[0]
    assert "moment" in heard[1] and "cloud" in heard[1], heard[1]
    assert "goodbye" in heard[2], heard[2]

    calls, results = ev.of("tool_call"), ev.of("tool_result")
    assert [(c["name"], c["arguments"]) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "London"}), ("end_call", {})]
    assert all(r["ok"] for r in results) and [r["id"] for r in results] == [c["id"] for c in calls]
    turns = [e["turn"] for e in ev.of("endpoint")]
    assert [c["turn"] for c in calls] == turns and all(c["session"] == ev.session_id for c in calls)
    fillers = ev.of("tool_filler")
    assert [f["turn"] for f in fillers] == [turns[1]], fillers
    assert [a["action"] for a in ev.of("call_action")] == ["hangup"]
    logged = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["name"] for e in logged if e["event"] == "tool_result"] == ["get_weather", "get_weather", "end_call"]

    # only the allowed tools were offered; the second reply saw the first turn's call and result
    for body in requests:
        assert sorted(t["function"]["name"] for t in body["tools"]) == ["end_call", "get_time", "get_weather"]
    later = requests[-1]["messages"]
    assert any(m.get("tool_calls") for m in later) and any(m["role"] == "tool" and "sunny" in m["content"]
                                                           for m in later)
    assert not [r for r in srv.requests if r["path"] != "/weather"]

    record = session_record(s, ev.session_id)
    tools = record["tool_calls"]
    assert [(t["turn"], t["name"], t["ok"]) for t in tools] == [
        (turns[0], "get_weather", True), (turns[1], "get_weather", True), (turns[2], "end_call", True)]
    from voice.store.export import to_text

    text = to_text(record)
    assert 'tool: get_weather {"city": "Paris"} -> ok' in text, text


@pytest.mark.slow
def test_talk_bad_tool_input_apologises_and_other_session_unaffected(tmp_path, settings, runtime, transcriber):
    """A 5xx, an unknown tool and arguments that violate the schema: each turn gets a short spoken
    apology or question, the conversation goes on, and a healthy session beside it is unaffected."""
    from voice.talk import talk_file

    bad = _questions(tmp_path, "What is the weather in Berlin?", "Please delete all my files.",
                     "What is the weather in Rome?", "What is the weather in Paris?", name="bad")
    good = _questions(tmp_path, "What is the weather in London?", "What is the weather in Paris?", name="good")
    with ToolHTTPServer() as srv, ScriptedLLM() as llm:
        s = _settings(settings, tmp_path, url=llm.url, allowed=["get_weather"], http=[weather_tool(srv.url)])

        async def both():
            return await asyncio.gather(talk_file(bad, tmp_path / "bad.wav", None, s, runtime=runtime),
                                        talk_file(good, tmp_path / "good.wav", None, s, runtime=runtime))

        faulty, healthy = asyncio.run(both())
    heard = _heard(faulty, tmp_path / "bad.wav", transcriber)
    print("heard:", heard)
    assert len(heard) == 4, heard
    assert "sorry" in heard[0] and "not working" in heard[0], heard[0]
    assert "sorry" in heard[1] and "cannot" in heard[1], heard[1]
    assert "city do you mean" in heard[2], heard[2]
    assert "sunny" in heard[3], "the conversation must go on: " + heard[3]
    results = faulty.events.of("tool_result")
    assert [r["ok"] for r in results] == [False, False, False, True], results
    assert "503" in results[0]["error"] and "no tool named" in results[1]["error"]
    assert "'city' is a required property" in results[2]["error"]
    assert not [r for r in srv.requests if r["query"].get("city") not in ("Berlin", "Paris", "London")]

    h = _heard(healthy, tmp_path / "good.wav", transcriber)
    assert "cloud" in h[0] and "sunny" in h[1], h
    assert all(r["ok"] for r in healthy.events.of("tool_result")) and not healthy.events.of("error")


@pytest.mark.slow
def test_talk_barge_in_during_a_tool_call_drops_it(tmp_path, settings, runtime, transcriber):
    """The user asks about London (a slow tool), hears "One moment.", and asks about Paris before the
    result is back: that is a barge-in. The London call is cancelled and its result dropped (never
    said, not in the conversation); Paris is answered. (The documented policy: calls still running at a
    barge-in are dropped, finished ones are kept.)"""
    from tests.conftest import concat, speak
    from voice.audio import read_wav, write_wav
    from voice.talk import talk_file

    q1 = read_wav(speak("What is the weather in London?", tmp_path / "q1.wav", lead_s=0, tail_s=0))
    q2 = read_wav(speak("What is the weather in Paris?", tmp_path / "q2.wav", lead_s=0, tail_s=0))
    wav = tmp_path / "q.wav"
    write_wav(wav, concat([0.5, q1, 4.5, q2, 7.0]), 16000)  # q2 after the filler has played
    with ToolHTTPServer(delays={"london": 8.0}) as srv, ScriptedLLM() as llm:
        s = _settings(settings, tmp_path, url=llm.url, allowed=["get_weather"], http=[weather_tool(srv.url,
                                                                                                    timeout_s=10)])
        result = asyncio.run(talk_file(wav, tmp_path / "o.wav", None, s, runtime=runtime))
        requests = list(llm.requests)
    ev = result.events
    said = transcriber.transcribe(read_wav(tmp_path / "o.wav")).lower()
    print("said:", said)
    assert "moment" in said and "sunny" in said, said
    assert "cloud" not in said, "the dropped London result must not be spoken"
    assert ev.of("barge_in") or ev.of("speculation_discarded"), [e["event"] for e in ev.events][-40:]
    results = {r["name"] + ":" + str(r["ok"]): r for r in ev.of("tool_result")}
    cancelled = [r for r in ev.of("tool_result") if not r["ok"]]
    assert len(cancelled) == 1 and "cancelled" in cancelled[0]["error"], results
    assert [r["ok"] for r in ev.of("tool_result")].count(True) == 1
    last = requests[-1]["messages"]
    assert not any(m["role"] == "tool" and "London" in m["content"] for m in last), last


# ------------------------------------------------------------------ MCP servers (a real server process)

MCP_SERVER = ROOT / "tests" / "tools" / "calendar_mcp.py"


def _mcp_calls(log) -> list[str]:
    return [json.loads(line)["tool"] for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def mcp_http(tmp_path):
    """The calendar MCP server as a streamable-HTTP process on loopback: (url, calls log)."""
    import socket
    import time

    from voice.transports.sip.front import free_port

    log = tmp_path / "http_calls.jsonl"
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(MCP_SERVER), str(log), "--http", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
    yield f"http://127.0.0.1:{port}/mcp", log
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # uvicorn waits for the slow call's connection to finish
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_mcp_server_tools_only_the_allowed_ones(settings, tmp_path, transport, request):
    """A real MCP server (stdio subprocess, or streamable HTTP): its allowed tools are offered with
    the server's schemas and answer; a tool the settings do not allow is neither offered nor reached;
    one that hangs times out into a short error."""
    from voice.tools.config import MCPServerSettings
    from voice.tools.registry import connect_mcp

    if transport == "stdio":
        log = tmp_path / "stdio_calls.jsonl"
        server = MCPServerSettings(name="calendar", command=[sys.executable, str(MCP_SERVER), str(log)],
                                   timeout_s=2)
    else:
        url, log = request.getfixturevalue("mcp_http")
        server = MCPServerSettings(name="calendar", url=url, timeout_s=2)
    s = _settings(settings, tmp_path, allowed=["next_meeting", "slow_meeting", "get_time"], mcp=[server])
    toolset, _ = _toolset(s)

    async def go():
        try:
            await connect_mcp(s, toolset)
            return (toolset.names(), toolset.tools["next_meeting"].parameters,
                    await toolset.run("next_meeting", {"day": "monday"}),
                    await toolset.run("next_meeting", {"when": "monday"}),
                    await toolset.run("delete_calendar", {}),
                    await toolset.run("slow_meeting", {"day": "friday"}),
                    await toolset.run("next_meeting", {"day": "tuesday"}))
        finally:
            await toolset.aclose()

    names, params, ok, bad_args, forbidden, slow, after = asyncio.run(go())
    assert names == ["get_time", "next_meeting", "slow_meeting"]
    assert params["properties"]["day"]["type"] == "string" and params["required"] == ["day"]
    assert ok.ok and json.loads(ok.content)["meeting"] == "the team call at ten on monday"
    assert not bad_args.ok and "'day' is a required property" in bad_args.content
    assert not forbidden.ok and "no tool named 'delete_calendar'" in forbidden.content
    assert not slow.ok and "did not answer within 2 s" in slow.content
    assert after.ok, after
    assert _mcp_calls(log) == ["next_meeting", "slow_meeting", "next_meeting"], "delete_calendar was reached"


def test_mcp_server_that_cannot_start_is_one_logged_line(settings, tmp_path):
    from loguru import logger

    from voice.tools.config import MCPServerSettings
    from voice.tools.registry import connect_mcp

    s = _settings(settings, tmp_path, allowed=["next_meeting", "get_time"], mcp=[
        MCPServerSettings(name="broken", command=[sys.executable, "-c", "import sys; sys.exit(3)"],
                          connect_timeout_s=20)])
    toolset, _ = _toolset(s)
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(str(m)), level="ERROR", format="{message}")
    try:
        asyncio.run(connect_mcp(s, toolset))
    finally:
        logger.remove(sink)
    assert toolset.names() == ["get_time"]  # the session goes on with the other tools
    mine = [e for e in errors if "MCP server 'broken'" in e]
    assert len(mine) == 1 and mine[0].count("\n") <= 1, errors


@pytest.mark.slow
def test_talk_mcp_tool_by_voice(tmp_path, settings, runtime, transcriber):
    """By voice, through a real MCP server process (stdio): "what is on my calendar" calls its
    next_meeting tool, the answer carries its result; the server's other tools are not offered."""
    from voice.audio import read_wav
    from voice.talk import talk_file
    from voice.tools.config import MCPServerSettings

    log = tmp_path / "calls.jsonl"
    wav = _questions(tmp_path, "What is on my calendar?")
    with ScriptedLLM() as llm:
        s = _settings(settings, tmp_path, url=llm.url, allowed=["next_meeting"], mcp=[
            MCPServerSettings(name="calendar", command=[sys.executable, str(MCP_SERVER), str(log)])])
        result = asyncio.run(talk_file(wav, tmp_path / "o.wav", None, s, runtime=runtime))
        requests = list(llm.requests)
    said = transcriber.transcribe(read_wav(tmp_path / "o.wav")).lower()
    print("said:", said)
    assert "meeting" in said and "team" in said and "monday" in said, said
    assert [t["function"]["name"] for t in requests[0]["tools"]] == ["next_meeting"]
    assert [(r["name"], r["ok"]) for r in result.events.of("tool_result")] == [("next_meeting", True)]
    assert _mcp_calls(log) == ["next_meeting"]


def test_tools_package_imports_run_one_way():
    """voice/tools imports neither a transport nor the session (transports -> session -> tools)."""
    import ast

    for path in (ROOT / "voice" / "tools").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("voice.transports", "voice.session", "voice.talk", "voice.service")), \
                    f"{path.name} imports {name}"
