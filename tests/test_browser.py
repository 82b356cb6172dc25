"""End to end in headless Chromium: the page, a fake microphone, the real service and models.

The fake microphone plays a question synthesized with espeak-ng at test time;
the page must show the recognised question, the agent's answer as spoken, and
receive the agent's audio. A screenshot lands in test-output/browser.png.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIR = ROOT / "test-output"
QUESTION = "What is the capital of France?"


def _require(tool: str) -> None:
    if shutil.which(tool) is None and not Path(tool).exists():
        pytest.skip(f"{tool} is not installed")


def synth_question(path: Path, rate: int = 48000, lead_s: int = 3) -> Path:
    """Silence (the page needs a moment to connect: Chromium starts the file at getUserMedia) + the
    question (espeak-ng) + 6 s silence, mono 16-bit WAV at ``rate``."""
    import soundfile as sf

    from voice.audio import read_wav, write_wav

    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), QUESTION], check=True, capture_output=True)
    speech = read_wav(raw, rate) * 0.8
    audio = np.concatenate([np.zeros(lead_s * rate, np.float32), speech, np.zeros(6 * rate, np.float32)])
    write_wav(path, audio, rate)
    assert sf.info(str(path)).samplerate == rate
    return path


def _health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def runtime_and_settings():
    from voice.runtime import Runtime
    from voice.settings import load_settings

    settings = load_settings()
    return Runtime.load(settings), settings


def _server(runtime_and_settings, **overrides):
    from voice.service import BackgroundServer, create_app

    runtime, settings = runtime_and_settings
    return BackgroundServer(create_app(settings.model_copy(update=overrides), runtime))


@pytest.fixture(scope="module")
def live_url(runtime_and_settings):
    with _server(runtime_and_settings) as url:
        yield url


def chromium_args(wav: Path | None, *, allow_mic: bool = True) -> list[str]:
    args = ["--headless=new", "--no-sandbox", "--use-fake-device-for-media-stream",
            "--allow-loopback-in-peer-connection",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
            "--autoplay-policy=no-user-gesture-required"]
    args.append("--use-fake-ui-for-media-stream" if allow_mic else "--deny-permission-prompts")
    if wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={wav.resolve()}%noloop")
    return args


def test_browser_conversation(live_url, tmp_path):
    _require(CHROMIUM)
    _require("espeak-ng")
    from playwright.sync_api import sync_playwright

    wav = synth_question(tmp_path / "question.wav")
    OUTPUT_DIR.mkdir(exist_ok=True)
    args = chromium_args(wav)
    console: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chrome-profile"), executable_path=CHROMIUM, headless=True, args=args,
            viewport={"width": 1100, "height": 800})
        try:
            page = context.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.goto(live_url + "/")
            assert page.locator("#state").get_attribute("data-state") == "idle"
            page.click("#connect")

            try:
                # The recognised question (partials or final), then the answer as spoken.
                user = page.locator("#transcript li.user").filter(has_text="capital")
                user.first.wait_for(timeout=90_000)
                agent = page.locator("#transcript li.agent")
                agent.first.wait_for(timeout=90_000)
                page.wait_for_function("document.querySelector('#transcript li.agent .text').textContent.trim().length > 0",
                                       timeout=30_000)
                # The agent's audio reached the page: RTP in, and a level above silence.
                page.wait_for_function("window.voiceApp.stats.agentPeak > 0.003", timeout=30_000)
                inbound = page.evaluate("""async () => {
                    const stats = await window.voiceApp.pc.getStats();
                    for (const s of stats.values())
                        if (s.type === 'inbound-rtp' && s.kind === 'audio') {
                            const n = s.jitterBufferEmittedCount || 1;  // the receive buffer, for bench/webrtc_latency's caller
                            return {packets: s.packetsReceived, bytes: s.bytesReceived, energy: s.totalAudioEnergy,
                                    jitter_buffer_ms: 1000 * s.jitterBufferDelay / n,
                                    jitter_target_ms: 1000 * s.jitterBufferTargetDelay / n};
                        }
                    return null;
                }""")
            except Exception:
                page.screenshot(path=str(OUTPUT_DIR / "browser-failed.png"), full_page=True)
                print("\n".join(console[-40:]))
                raise

            user_text = page.locator("#transcript li.user").first.inner_text()
            agent_text = page.locator("#transcript li.agent").first.inner_text()
            assert "capital" in user_text.lower() or "france" in user_text.lower(), user_text
            assert agent_text.strip(), "no agent text on the page"
            assert inbound is not None and inbound["packets"] > 0 and inbound["bytes"] > 0, inbound
            stats = page.evaluate("window.voiceApp.stats")
            assert stats["events"].get("state", 0) > 0
            assert page.locator("#session").inner_text().startswith("session ")

            # Let the answer finish so the screenshot shows the whole turn, with its latency row.
            page.wait_for_function("document.querySelectorAll('#latency tbody tr').length > 0", timeout=30_000)
            page.wait_for_function("window.voiceApp.state === 'listening'", timeout=60_000)
            page.screenshot(path=str(OUTPUT_DIR / "browser.png"), full_page=True)
            print(f"\nuser: {user_text!r}\nagent: {agent_text!r}\ninbound: {inbound}\n"
                  f"agent peak {stats['agentPeak']:.3f} mic peak {stats['micPeak']:.3f}")

            page.click("#connect")  # disconnect
            page.wait_for_function("window.voiceApp.state === 'idle'", timeout=10_000)
        finally:
            context.close()

    deadline = time.monotonic() + 30
    while _health(live_url)["sessions"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _health(live_url)["sessions"] == 0, "the session outlived its page"


def test_browser_errors_are_readable(runtime_and_settings, tmp_path):
    """A full service (503) and a denied microphone show a readable message, not a silent failure."""
    _require(CHROMIUM)
    from playwright.sync_api import sync_playwright

    with _server(runtime_and_settings, max_sessions=1) as url, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile-a"), executable_path=CHROMIUM, headless=True, args=chromium_args(None))
        try:
            first, second = context.new_page(), context.new_page()
            first.goto(url + "/")
            first.click("#connect")
            first.wait_for_function("window.voiceApp.sessionId && window.voiceApp.pc", timeout=30_000)
            second.goto(url + "/")
            second.click("#connect")
            second.wait_for_selector("#error:not([hidden])", timeout=30_000)
            assert "busy" in second.inner_text("#error").lower()
            assert second.locator("#connect").inner_text() == "Connect"
            first.click("#connect")
            first.wait_for_function("window.voiceApp.state === 'idle'", timeout=10_000)
        finally:
            context.close()

        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile-b"), executable_path=CHROMIUM, headless=True,
            args=chromium_args(None, allow_mic=False))
        try:
            page = context.new_page()
            page.goto(url + "/")
            page.click("#connect")
            page.wait_for_selector("#error:not([hidden])", timeout=30_000)
            assert "microphone" in page.inner_text("#error").lower()
        finally:
            context.close()


class _NotLiveKit:
    """Where the page is told the LiveKit server is: records each request, answers 401.

    No LiveKit server can run on these machines. This stands in for one only as
    far as refusing the join (as a server refuses a bad token: 401 on the
    signalling socket and on its validate endpoint, with CORS as LiveKit sends
    it), so the test sees what the page's real LiveKit client sent.
    """

    REASON = "no LiveKit server here (test stand-in)"

    def __init__(self):
        import http.server
        import threading

        requests = self.requests = []
        reason = self.REASON

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                requests.append(self.path)
                body = reason.encode()
                self.send_response(401)
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"ws://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


LIVEKIT_KEY, LIVEKIT_SECRET = "devkey", "a-secret-of-at-least-32-characters-long"


def _connect_in_livekit_mode(runtime_and_settings, tmp_path, livekit_url: str) -> dict:
    """The page against a service in LiveKit mode (LiveKit at ``livekit_url``): check the route it
    offers, press Connect, wait for the error and for the page to be idle again with the microphone
    released; return the error and what the page joined with."""
    from playwright.sync_api import sync_playwright

    from voice.settings import LiveKitSettings

    lk = LiveKitSettings(url=livekit_url, api_key=LIVEKIT_KEY, api_secret=LIVEKIT_SECRET, agent_name="voice-agent")
    with _server(runtime_and_settings, livekit=lk) as url, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=chromium_args(None))
        try:
            page = context.new_page()
            page.goto(url + "/")
            page.wait_for_selector("#route-row:not([hidden])", timeout=10_000)
            assert page.input_value("#route") == "livekit"
            assert page.is_disabled("#pipeline"), "the worker's engine answers in a room"
            page.click("#connect")
            page.wait_for_selector("#error:not([hidden])", timeout=30_000)
            page.wait_for_function("window.voiceApp.state === 'idle' && !window.voiceApp.mic"
                                   " && !window.voiceApp.room", timeout=10_000)
            assert page.locator("#connect").inner_text() == "Connect"
            return {"error": page.inner_text("#error"), "joined": page.evaluate("window.voiceApp.liveKit")}
        finally:
            context.close()


def test_browser_joins_a_livekit_room_when_the_server_is_in_livekit_mode(runtime_and_settings, tmp_path):
    """LiveKit mode: the page offers the LiveKit route, fetches a room token and hands it to the real
    LiveKit JS client (web/vendor), which opens LiveKit's signalling socket with it; a refused join is
    one readable line and the microphone is released. Media through a real LiveKit server is not
    exercised (none can run here)."""
    _require(CHROMIUM)
    from urllib.parse import parse_qs, urlparse

    api = pytest.importorskip("livekit.api")
    with _NotLiveKit() as stand_in:
        seen = _connect_in_livekit_mode(runtime_and_settings, tmp_path, stand_in.url)
    error, joined = seen["error"], seen["joined"]

    assert error.startswith(f"Cannot join the LiveKit room at {stand_in.url}"), error
    assert stand_in.REASON in error, error
    assert "\n" not in error.strip()
    # The LiveKit client opened the signalling path with the page's room token ...
    signalling = [r for r in stand_in.requests if urlparse(r).path.rstrip("/") in ("/rtc", "/rtc/v1")]
    assert signalling, stand_in.requests
    token = parse_qs(urlparse(signalling[0]).query)["access_token"][0]
    claims = api.TokenVerifier(LIVEKIT_KEY, LIVEKIT_SECRET).verify(token)
    # ... for the room and identity the service gave the page, asking for our agent there.
    assert claims.video.room == joined["room"] and claims.identity == joined["identity"]
    assert claims.video.room_join and claims.video.can_publish and claims.video.can_subscribe
    assert [a.agent_name for a in claims.room_config.agents] == ["voice-agent"]


def test_browser_says_when_the_livekit_server_is_down(runtime_and_settings, tmp_path):
    """Nothing listening at the LiveKit URL: one line naming it, back to idle, microphone released."""
    _require(CHROMIUM)
    import socket

    pytest.importorskip("livekit.api")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"ws://127.0.0.1:{s.getsockname()[1]}"  # free once the socket closes
    error = _connect_in_livekit_mode(runtime_and_settings, tmp_path, closed)["error"]
    assert error.startswith(f"Cannot join the LiveKit room at {closed}:"), error
    assert "\n" not in error.strip()
