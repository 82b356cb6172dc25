"""The HTTP API over real HTTP (uvicorn on loopback): bad input, admission control, vanishing peers.

Real models, real aiortc peers, no mocks; no timing assertions (the waits are
generous deadlines, not measurements).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "What is the capital of France?"


# --------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def runtime_and_settings():
    from voice.runtime import Runtime
    from voice.settings import load_settings

    settings = load_settings()
    return Runtime.load(settings), settings


def _live(runtime_and_settings, **overrides):
    from voice.service import BackgroundServer, create_app

    runtime, settings = runtime_and_settings
    return BackgroundServer(create_app(settings.model_copy(update=overrides), runtime))


@pytest.fixture(scope="module")
def url(runtime_and_settings):
    with _live(runtime_and_settings, max_sessions=1) as base:
        yield base


@pytest.fixture(scope="module")
def question_audio(tmp_path_factory) -> np.ndarray:
    from voice.audio import read_wav

    path = tmp_path_factory.mktemp("speech") / "question.wav"
    subprocess.run(["espeak-ng", "-w", str(path), QUESTION], check=True, capture_output=True)
    speech = read_wav(path, 16000) * 0.8
    return np.concatenate([np.zeros(8000, np.float32), speech, np.zeros(16000 * 4, np.float32)])


async def _offer_sdp(*, audio: bool = True) -> str:
    """A real browser-like offer (aiortc), with or without a microphone track."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    from voice.transports.webrtc import allow_loopback_candidates

    allow_loopback_candidates()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("events")
    if audio:
        pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def _health(base: str) -> dict:
    return httpx.get(f"{base}/health", timeout=10).json()


async def _wait_sessions(base: str, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        live = (await asyncio.to_thread(_health, base))["sessions"]
        if live == n or time.monotonic() > deadline:
            return live
        await asyncio.sleep(0.25)


def _post(base: str, body, *, content_type="application/json", **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{base}/api/offer", content=content, headers={"Content-Type": content_type},
                      timeout=30, **kw)


def _error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "Traceback" not in r.text
    return body["error"]


# --------------------------------------------------------------------- basics


def test_health_and_page(url):
    h = _health(url)
    assert h["status"] == "ok" and h["ready"] is True
    assert h["sessions"] == 0 and h["max_sessions"] == 1
    page = httpx.get(url + "/", timeout=10)
    assert page.status_code == 200 and "<button id=\"connect\"" in page.text
    assert httpx.get(url + "/app.js", timeout=10).status_code == 200
    cfg = httpx.get(url + "/api/config", timeout=10).json()
    assert "cascaded" in cfg["pipelines"] and isinstance(cfg["ice_servers"], list)
    _error(httpx.get(url + "/no/such/thing", timeout=10), 404)


# --------------------------------------------------------------------- bad input


def test_wrong_content_type(url):
    assert "application/json" in _error(_post(url, "sdp=v%3D0", content_type="application/x-www-form-urlencoded"), 415)
    _error(_post(url, b"{}", content_type="text/plain"), 415)


def test_oversized_body(url):
    big = {"sdp": "v=0\r\n" + "a=x\r\n" * 20000, "type": "offer"}
    assert "too large" in _error(_post(url, big), 413)

    def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(100):
            yield b" " * 1024

    r = httpx.post(f"{url}/api/offer", content=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
    _error(r, 413)


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "json"),
    (b"[1, 2]", 400, "object"),
    ({"type": "offer"}, 400, "sdp"),
    ({"sdp": "hello, I am not SDP", "type": "offer"}, 400, "sdp"),
    ({"sdp": "v=0\r\nthis is garbage\r\nm=audio notaport\r\n", "type": "offer"}, 400, "sdp"),
    ({"sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "type": "offer"}, 400, "audio"),
    ({"sdp": 42, "type": "offer"}, 400, "sdp"),
])
def test_bad_offers(url, body, status, words):
    assert words in _error(_post(url, body), status).lower()


async def test_offer_checks_with_real_sdp(url):
    sdp = await _offer_sdp()
    assert "type" in _error(_post(url, {"sdp": sdp, "type": "answer"}), 400)
    assert "pipeline" in _error(_post(url, {"sdp": sdp, "type": "offer", "pipeline": "telepathy"}), 400)
    no_audio = await _offer_sdp(audio=False)
    assert "audio" in _error(_post(url, {"sdp": no_audio, "type": "offer"}), 400).lower()
    assert "pc_id" in _error(_post(url, {"sdp": sdp, "type": "offer", "pc_id": "nope"}), 404)
    # A mangled fingerprint/ICE section: parseable SDP that cannot be negotiated.
    broken = "\r\n".join(l for l in sdp.split("\r\n") if not l.startswith(("a=fingerprint", "a=ice-ufrag")))
    _error(_post(url, {"sdp": broken, "type": "offer"}), 400)
    assert _health(url)["sessions"] == 0, "a rejected offer must not hold a session"


def test_patch_errors(url):
    def patch(body, ctype="application/json"):
        content = json.dumps(body) if not isinstance(body, bytes) else body
        return httpx.patch(f"{url}/api/offer", content=content, headers={"Content-Type": ctype}, timeout=10)

    _error(patch({"candidates": []}), 400)
    _error(patch({"pc_id": "unknown", "candidates": []}), 404)
    _error(patch(b"{}", "text/plain"), 415)


# ------------------------------------------------------- sessions, admission


@pytest.mark.slow
async def test_admission_control_and_closed_pc_id(url):
    from voice.bench_webrtc import OfferRejected, Peer

    first = Peer()
    answer = await first.connect(url)
    try:
        await asyncio.wait_for(first.ready.wait(), 30)
        session_msg = await first.wait_message(lambda m: m.get("type") == "session", 10)
        assert session_msg["session"] == answer["session"]
        assert _health(url)["sessions"] == 1

        second = Peer()
        with pytest.raises(OfferRejected) as rejected:
            await second.connect(url)
        await second.close(bye=False)
        assert rejected.value.status == 503
        assert rejected.value.body["error"] == "busy"
    finally:
        await first.close()
    assert await _wait_sessions(url, 0, 30) == 0

    # The ended session's pc_id is gone for good: a clear 410, not a 500.
    sdp = await _offer_sdp()
    assert "ended" in _error(_post(url, {"sdp": sdp, "type": "offer", "pc_id": answer["pc_id"]}), 410)
    r = httpx.patch(f"{url}/api/offer", json={"pc_id": answer["pc_id"], "candidates": []}, timeout=10)
    _error(r, 410)

    # And the slot is free again.
    third = Peer()
    await third.connect(url)
    await asyncio.wait_for(third.ready.wait(), 30)
    await third.close()
    assert await _wait_sessions(url, 0, 30) == 0


async def test_pipeline_selection(runtime_and_settings):
    """The offer's pipeline picks the engine; one that cannot load is a clear 503, then no longer offered."""
    import dataclasses
    import threading

    from voice.bench_webrtc import OfferRejected, Peer
    from voice.service import BackgroundServer, create_app

    runtime, settings = runtime_and_settings
    if not hasattr(runtime, "native_model"):
        pytest.skip("this build has no native engine")

    def with_native(spec: str):  # the loaded models, another native model spec
        return dataclasses.replace(runtime, native_spec=spec, _native=None, _native_lock=threading.Lock())

    with BackgroundServer(create_app(settings, with_native("moshi:/nonexistent/weights"))) as base:
        assert "native" in httpx.get(f"{base}/api/config", timeout=10).json()["pipelines"]
        peer = Peer()
        with pytest.raises(OfferRejected) as rejected:
            await peer.connect(base, pipeline="native")
        await peer.close(bye=False)
        assert rejected.value.status == 503
        assert rejected.value.body["error"] == "pipeline unavailable"
        assert "native model" in rejected.value.body["detail"]
        assert httpx.get(f"{base}/api/config", timeout=10).json()["pipelines"] == ["cascaded"]
        assert _health(base)["sessions"] == 0

    with BackgroundServer(create_app(settings, with_native("moshi:tiny"))) as base:
        peer = Peer()
        await peer.connect(base, pipeline="native", timeout=120)
        try:
            start = await peer.wait_message(lambda m: m.get("event") == "session_start", 60)
            assert start["pipeline"] == "native"
            assert (await peer.wait_message(lambda m: m.get("type") == "session", 10))["pipeline"] == "native"
        finally:
            await peer.close()
        assert await _wait_sessions(base, 0, 30) == 0


VANISHING_CLIENT = textwrap.dedent("""
    import asyncio, sys
    import numpy as np
    from voice.audio import read_wav
    from voice.bench_webrtc import Peer

    async def main(url, wav):
        audio = read_wav(wav, 16000)
        peer = Peer(np.concatenate([audio, audio, audio]))
        await peer.connect(url)
        await asyncio.wait_for(peer.ready.wait(), 30)
        peer.track.play()
        print("playing", flush=True)
        await peer.wait_message(lambda m: m.get("event") == "user_speech_start", 60)
        print("speaking", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


@pytest.mark.slow
async def test_vanishing_client_only_ends_its_own_session(runtime_and_settings, question_audio, tmp_path):
    """A peer killed mid-turn (SIGKILL: no bye, no DTLS close) is torn down; another peer keeps talking."""
    from voice.audio import write_wav
    from voice.bench_webrtc import Peer

    wav = tmp_path / "q.wav"
    write_wav(wav, question_audio, 16000)
    with _live(runtime_and_settings, max_sessions=3) as base:
        proc = subprocess.Popen([sys.executable, "-c", VANISHING_CLIENT, base, str(wav)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        survivor = Peer(question_audio)
        try:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 90)
            assert line.strip() == "playing", line
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 90)
            assert line.strip() == "speaking", line

            await survivor.connect(base)
            await asyncio.wait_for(survivor.ready.wait(), 30)
            assert _health(base)["sessions"] == 2

            proc.send_signal(signal.SIGKILL)  # vanishes mid-turn
            proc.wait(10)
            survivor.track.play()

            # The survivor's conversation goes on: its question is recognised and answered, with audio.
            endpoint = await survivor.wait_message(lambda m: m.get("event") == "endpoint", 90)
            assert "capital" in endpoint["text"].lower() or "france" in endpoint["text"].lower(), endpoint
            await survivor.wait_message(lambda m: m.get("event") == "agent_text", 90)
            deadline = time.monotonic() + 30
            while survivor.recorder.last_voiced == 0.0 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert survivor.recorder.last_voiced > 0, "no agent audio reached the surviving peer"

            # The vanished peer's session is torn down (ICE consent / audio watchdog), the survivor's is not.
            assert await _wait_sessions(base, 1, 90) == 1
            assert survivor.pc.connectionState == "connected"
            assert not any(m.get("type") == "end" for m in survivor.messages)
        finally:
            if proc.poll() is None:
                proc.kill()
            await survivor.close()
        assert await _wait_sessions(base, 0, 30) == 0
