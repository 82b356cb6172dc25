"""LiveKit mode, against the livekit packages' own objects (no LiveKit server can run here).

Exercised: room/agent token minting checked with ``livekit.api.TokenVerifier``;
``livekit.rtc.AudioFrame`` -> pipeline PCM conversion; the token endpoint;
``voice worker`` argument checks and its one-line failure on an unreachable
server; livekit-agents' ``AgentServer`` (as ``build_server`` configures it)
failing cleanly against an HTTP endpoint that is not LiveKit. Not exercised:
registration, dispatch and media with a real LiveKit server.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import importlib.util  # noqa: E402

if importlib.util.find_spec("livekit") is None or importlib.util.find_spec("livekit.agents") is None:
    pytest.skip("LiveKit mode needs the livekit extra: pip install -e '.[livekit]'", allow_module_level=True)
import livekit.agents  # noqa: E402,F401  (installed but broken, e.g. a missing dependency: fail, not skip)

from livekit import api, rtc  # noqa: E402

from voice.audio import FrameChunker  # noqa: E402
from voice.settings import load_settings  # noqa: E402
from voice.transports import livekit as lkmod  # noqa: E402

KEY, SECRET = "devkey", "a-secret-of-at-least-32-characters-long"


def _settings(**livekit):
    data = {"url": "ws://127.0.0.1:7880", "api_key": KEY, "api_secret": SECRET, **livekit}
    return load_settings(livekit=data)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------ tokens


def test_room_token_verifies_with_livekit():
    lk = _settings().livekit
    before = int(time.time())
    token = lkmod.mint_room_token(lk, room="call-1", identity="user-abc", name="Ann", ttl_s=120)
    claims = api.TokenVerifier(KEY, SECRET).verify(token)
    assert claims.identity == "user-abc" and claims.name == "Ann"
    assert claims.video.room_join and claims.video.room == "call-1"
    assert claims.video.can_publish and claims.video.can_subscribe and claims.video.can_publish_data
    assert not claims.video.room_admin and not claims.video.room_create
    # explicit dispatch: the token asks for our agent in the room it creates
    assert [a.agent_name for a in claims.room_config.agents] == ["voice-agent"]
    import jwt

    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert before + 110 <= exp <= before + 130


def test_room_token_rejected_with_another_secret():
    lk = _settings().livekit
    token = lkmod.mint_room_token(lk, room="r")
    with pytest.raises(Exception):
        api.TokenVerifier(KEY, "another-secret-of-at-least-32-chars!!").verify(token)
    with pytest.raises(Exception):
        api.TokenVerifier("otherkey", SECRET).verify(token)


def test_room_token_without_agent_name_has_no_dispatch():
    lk = _settings(agent_name="").livekit
    claims = api.TokenVerifier(KEY, SECRET).verify(lkmod.mint_room_token(lk, room="r"))
    assert not claims.room_config or not list(claims.room_config.agents)


def test_agent_token():
    lk = _settings().livekit
    claims = api.TokenVerifier(KEY, SECRET).verify(lkmod.mint_agent_token(lk, room="r9", identity="agent-j1"))
    assert claims.identity == "agent-j1" and claims.kind == "agent"
    assert claims.video.agent and claims.video.room == "r9" and claims.video.room_join


# ------------------------------------------------------------------------- audio


def _tone_frames(rate: int, channels: int, seconds: float, hz: float, amp: float = 0.3):
    n = int(rate * seconds)
    t = np.arange(n) / rate
    mono = (amp * np.sin(2 * np.pi * hz * t) * 32767).astype(np.int16)
    per = rate // 100  # LiveKit delivers 10 ms frames
    for i in range(0, n - per + 1, per):
        chunk = np.repeat(mono[i:i + per, None], channels, axis=1).reshape(-1)
        yield rtc.AudioFrame(chunk.tobytes(), rate, channels, per)


@pytest.mark.parametrize("rate,channels", [(48000, 2), (48000, 1), (16000, 1), (24000, 2)])
def test_livekit_frames_to_pipeline_pcm(rate, channels):
    conv, chunker = lkmod.LiveKitAudioConverter(), FrameChunker()
    out = []
    for frame in _tone_frames(rate, channels, 1.0, 440.0):
        assert isinstance(frame, rtc.AudioFrame) and frame.num_channels == channels
        out += chunker.push(conv.convert(frame))
    assert out and all(len(c) == 640 for c in out)  # exact 20 ms, 16 kHz mono int16
    pcm = np.frombuffer(b"".join(out), dtype=np.int16).astype(np.float32) / 32768
    assert 0.9 * 16000 <= len(pcm) <= 16000
    body = pcm[1600:-1600]
    spectrum = np.abs(np.fft.rfft(body * np.hanning(len(body))))
    peak_hz = np.argmax(spectrum) * 16000 / len(body)
    assert abs(peak_hz - 440) < 5
    assert 0.25 < np.abs(body).max() < 0.35  # level kept through mixdown and resampling


def test_transport_is_pipecats_livekit_transport_with_our_input():
    from pipecat.transports.livekit.transport import LiveKitInputTransport, LiveKitTransport

    from voice.events import SessionClock

    clock = SessionClock()
    t = lkmod.make_transport("ws://127.0.0.1:7880", "token", "room", clock)
    assert isinstance(t, LiveKitTransport) and isinstance(t.input(), LiveKitInputTransport)
    assert t.input() is t.input()
    p = t._params
    assert (p.audio_in_sample_rate, p.audio_out_sample_rate, p.audio_out_channels) == (16000, 48000, 1)

    frame = next(_tone_frames(48000, 1, 0.01, 440.0))
    converted = asyncio.run(t.input()._convert_livekit_audio_to_pipecat(rtc.AudioFrameEvent(frame), "alice"))
    assert converted.sample_rate == 16000 and converted.num_channels == 1


# --------------------------------------------------------------- token endpoint


def test_token_endpoint():
    from fastapi.testclient import TestClient

    from voice.service import create_app

    off = TestClient(create_app(load_settings(), None))
    r = off.get("/api/livekit/token", params={"room": "a"})
    assert r.status_code == 404 and "LiveKit mode is off" in r.json()["error"]

    client = TestClient(create_app(_settings(), None))
    r = client.get("/api/livekit/token", params={"room": "support-7", "name": "Ann"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["url"] == "ws://127.0.0.1:7880" and body["room"] == "support-7"
    assert r.headers["cache-control"] == "no-store"
    claims = api.TokenVerifier(KEY, SECRET).verify(body["token"])
    assert claims.video.room == "support-7" and claims.identity == body["identity"] and claims.name == "Ann"

    generated = client.get("/api/livekit/token").json()
    assert generated["room"].startswith("call-")
    # The page learns from its config which route it may offer.
    assert client.get("/api/config").json()["livekit"] is True
    assert off.get("/api/config").json()["livekit"] is False
    for bad in ("", "a b", "x" * 65, "../etc", "room/1"):
        r = client.get("/api/livekit/token", params={"room": bad})
        assert r.status_code == 400 if bad else r.status_code in (200, 400)


def test_token_endpoint_needs_a_credential_when_required():
    from fastapi.testclient import TestClient

    from voice.service import create_app

    if not hasattr(load_settings(), "security"):
        pytest.skip("this build has no security settings")
    settings = load_settings(livekit={"url": "ws://lk:7880", "api_key": KEY, "api_secret": SECRET},
                             security={"api_key": "service-key", "require_token": True})
    client = TestClient(create_app(settings, None))
    assert client.get("/api/livekit/token", params={"room": "r"}).status_code == 401
    r = client.get("/api/livekit/token", params={"room": "r"}, headers={"Authorization": "Bearer service-key"})
    assert r.status_code == 200


# ------------------------------------------------------------------------ worker


def _voice(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "voice.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_worker_unreachable_server_fails_with_one_line():
    port = _free_port()  # nothing listens there
    r = _voice("worker", "--livekit-url", f"ws://127.0.0.1:{port}", "--api-key", KEY, "--api-secret", SECRET,
               "--connect-timeout", "1")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("voice: error: cannot reach the LiveKit server at ws://127.0.0.1:")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args,words", [
    (["--livekit-url", "ftp://host", "--api-key", "k", "--api-secret", "s"], "must look like ws://"),
    (["--livekit-url", "ws://:7880", "--api-key", "k", "--api-secret", "s"], "must look like ws://"),
    (["--livekit-url", "ws://h:99999", "--api-key", "k", "--api-secret", "s"], "invalid port"),
    (["--api-key", "k", "--api-secret", "s"], "URL is missing"),
    (["--livekit-url", "ws://h:7880", "--api-secret", "s"], "API key is missing"),
    (["--livekit-url", "ws://h:7880", "--api-key", "k"], "API secret is missing"),
])
def test_worker_argument_errors(args, words):
    env_free = [a for a in args]
    r = subprocess.run([sys.executable, "-m", "voice.cli", "worker", *env_free], capture_output=True, text=True,
                       timeout=120, env={k: v for k, v in __import__("os").environ.items()
                                         if not k.startswith(("LIVEKIT_", "VOICE_LIVEKIT"))})
    assert r.returncode == 2
    assert words in r.stderr and "Traceback" not in r.stderr


async def test_agent_server_gives_up_on_a_non_livekit_endpoint():
    """livekit-agents' AgentServer, set up as ``voice worker`` sets it up, against plain HTTP that 404s."""
    from aiohttp import web

    app = web.Application()
    app.router.add_get("/{tail:.*}", lambda request: web.Response(status=404, text="not livekit"))
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        settings = _settings(url=f"ws://127.0.0.1:{port}")
        lkmod.wait_reachable(settings.livekit.url, 2.0)  # the pre-flight check passes: something listens
        server = lkmod.build_server(settings, runtime=None, counter=lkmod.SessionCounter(4),
                                    health_port=0, max_retry=0)
        with pytest.raises(RuntimeError, match="failed to connect to livekit"):
            await asyncio.wait_for(server.run(devmode=False), 60)
        await server.aclose()
    finally:
        await runner.cleanup()


def test_session_counter_is_the_load():
    c = lkmod.SessionCounter(2)
    assert c.load() == 0.0 and c.try_reserve() and c.try_reserve() and not c.try_reserve()
    assert c.load() == 1.0
    c.release()
    assert c.live == 1 and c.load() == 0.5


# ----------------------------------------------------------- page messages in a room


async def test_room_messages_wait_for_the_room_keep_their_order_and_find_the_caller():
    """The page's session messages as data packets: none before the room is joined (pipecat's
    sender drops them), then every one in order, events from other threads too; to the room
    until the caller is known, to the caller after."""
    import json
    import threading

    from voice.events import EventLog
    from voice.transports.page_messages import EventForwarder

    sent: list[tuple[dict, str | None]] = []

    async def publish(text: str, identity: str | None) -> None:  # the room's sender
        await asyncio.sleep(0.001 * (len(sent) % 3))  # packets take uneven time to go out
        sent.append((json.loads(text), identity))

    messages = lkmod.RoomMessages(publish)
    forwarder = EventForwarder(messages.deliver, asyncio.get_running_loop())
    events = EventLog("s-1")
    events.subscribe(forwarder)
    forwarder.send({"type": "session", "session": "s-1", "pipeline": "cascaded"})
    events.emit("state", state="listening")
    await asyncio.sleep(0.05)
    assert sent == [], "nothing goes out before the room is joined"

    messages.joined()
    worker = threading.Thread(target=lambda: [events.emit("asr_text", turn=1, text=f"word {k}") for k in range(20)])
    worker.start()
    worker.join()
    assert await messages.flush(2.0)
    messages.caller = "user-abc"
    forwarder.send({"type": "ready", "session": "s-1"})
    events.emit("turn_metrics", turn=1, voice_to_voice=np.float32(0.71))
    assert await messages.flush(2.0)
    messages.close()

    kinds = [m.get("event", m["type"]) for m, _ in sent]
    assert kinds == ["session", "state"] + ["asr_text"] * 20 + ["ready", "turn_metrics"]
    assert [m["text"] for m, _ in sent if m.get("event") == "asr_text"] == [f"word {k}" for k in range(20)]
    assert all(who is None for _, who in sent[:22]) and all(who == "user-abc" for _, who in sent[22:])
    assert sent[-1][0]["voice_to_voice"] == pytest.approx(0.71) and sent[-1][0]["type"] == "event"


async def test_room_messages_survive_a_failing_sender_and_stay_bounded():
    import json

    sent: list[dict] = []

    async def publish(text: str, identity: str | None) -> None:
        message = json.loads(text)
        if message.get("n") == 1:
            raise ConnectionError("room gone")
        sent.append(message)

    messages = lkmod.RoomMessages(publish, max_queued=3)
    for n in range(5):
        messages.deliver({"type": "event", "n": n})
    assert messages.dropped == 2  # not joined yet: three wait, the rest are dropped
    messages.joined()
    assert await messages.flush(2.0)
    assert [m["n"] for m in sent] == [0, 2]
    messages.close()
