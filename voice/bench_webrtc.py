"""`talk_file` over the real WebRTC endpoint, on loopback.

``talk_file_webrtc`` has the contract of :func:`voice.talk.talk_file`: INPUT is
played in real time as a microphone would, OUTPUT.wav (16 kHz mono) is
time-synchronous with it (t=0 shared: the first input sample), and the
session's events are written as JSONL. The difference is the path: the
service app runs in this process under uvicorn on a free 127.0.0.1 port, an
aiortc peer sends its offer to ``POST /api/offer`` over HTTP, streams INPUT as
Opus over RTP and records the agent's audio from its incoming track.

The clocks
  * input: t=0 is the moment the first INPUT sample is due on the wire (the
    outgoing track is paced by wall time, 20 ms per frame);
  * output: each received frame is placed by its RTP timestamp, anchored so
    that the earliest-arriving frame lands at its arrival time. That is a
    receiver with a fixed playout delay equal to the smallest one-way delay
    seen (network, Opus, aiortc's jitter buffer), without drift from
    event-loop stalls;
  * events: the server's session clock starts at the first frame it receives;
    every ``t`` is shifted onto the input clock (same process, same monotonic
    clock, so the shift is exact). ``t_server`` keeps the original.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from voice.audio import FRAME_MS, PIPELINE_RATE, float_to_pcm16, read_wav, resample, write_wav
from voice.talk import TalkResult

OUTPUT_RATE = 16000
RTP_AUDIO_RATE = 48000
READY_TIMEOUT_S = 30.0
PRE_ROLL_S = 0.3  # silence streamed after the server hears us, before INPUT starts
# The caller's receive buffer, in 20 ms frames, modelled on Chromium: on this
# loopback its getStats() shows a jitter buffer target of 22-25 ms and 28-29 ms
# average delay per sample (tests/test_browser.py prints them). One packet held
# is 20 ms for a packet's first sample; two (the earlier setting) were 40 ms.
# aiortc's own default is 4.
CLIENT_JITTER_PREFETCH = 1


class WebRTCBenchError(RuntimeError):
    pass


# ------------------------------------------------------------------ app on loopback


class _Server:
    """uvicorn on an already-bound socket, without touching the process's signal handlers."""

    def __init__(self, app):
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                yield

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
        self.task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self.task.done():
                self.task.result()
                raise WebRTCBenchError("the HTTP server stopped while starting")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 15)
        self.sock.close()


@contextlib.asynccontextmanager
async def serve_in_process(settings, runtime):
    """The service app (``voice.service.create_app``) on a free 127.0.0.1 port; yields (base_url, app)."""
    from voice.service import create_app

    app = create_app(settings, runtime)
    server = _Server(app)
    await server.start()
    try:
        yield server.url, app
    finally:
        await server.stop()


# ----------------------------------------------------------------------- the peer


class WavTrack(MediaStreamTrack):
    """Outgoing microphone: silence until :meth:`play`, then the clip at wall-clock pace, then silence.

    Frames are 48 kHz, as a browser captures: at 16 kHz, aiortc's Opus encoder
    resamples, and its resampler's delay holds every packet back one frame
    (20 ms) that a browser never pays.
    """

    kind = "audio"

    def __init__(self, audio: np.ndarray):
        super().__init__()
        self._pcm = np.frombuffer(float_to_pcm16(resample(audio, PIPELINE_RATE, RTP_AUDIO_RATE)), dtype=np.int16)
        self._n = RTP_AUDIO_RATE * FRAME_MS // 1000
        self._ts = 0
        self._start: float | None = None
        self._play_from: int | None = None  # sample index (track timeline) where the clip starts
        self._play_requested = False
        self.t0: float | None = None  # monotonic time the clip's first sample is due
        self.finished = asyncio.Event()

    def play(self) -> None:
        self._play_requested = True

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        # Like a microphone, a frame leaves once its last sample is captured.
        due = self._start + (self._ts + self._n) / RTP_AUDIO_RATE
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if self._play_requested and self._play_from is None:
            self._play_from = self._ts
            self.t0 = due - self._n / RTP_AUDIO_RATE  # when the clip's first sample was "captured"
        chunk = np.zeros(self._n, dtype=np.int16)
        if self._play_from is not None:
            i = self._ts - self._play_from
            part = self._pcm[i:i + self._n]
            chunk[:len(part)] = part
            if i + self._n >= len(self._pcm):
                self.finished.set()
        frame = AudioFrame(format="s16", layout="mono", samples=self._n)
        frame.planes[0].update(chunk.tobytes())
        frame.sample_rate = RTP_AUDIO_RATE
        frame.pts = self._ts
        frame.time_base = fractions.Fraction(1, RTP_AUDIO_RATE)
        self._ts += self._n
        return frame


class Recorder:
    """The incoming (agent) track: every decoded frame with its RTP timestamp and arrival time."""

    def __init__(self):
        self.frames: list[tuple[float, int, np.ndarray]] = []  # (arrival, pts unwrapped, mono float32 @48k)
        self.last_voiced: float = 0.0
        self._pts_base: int | None = None
        self._last_raw: int | None = None
        self._wraps = 0
        self.task: asyncio.Task | None = None

    def start(self, track) -> None:
        self.task = asyncio.create_task(self._run(track))

    async def _run(self, track) -> None:
        while True:
            try:
                frame = await track.recv()
            except (MediaStreamError, asyncio.CancelledError):
                return
            arrival = time.monotonic()
            pcm = frame.to_ndarray().astype(np.float32) / 32768.0
            channels = len(frame.layout.channels)
            mono = pcm.reshape(-1, channels).mean(axis=1) if channels > 1 else pcm.reshape(-1)
            if frame.sample_rate != RTP_AUDIO_RATE:
                mono = resample(mono, frame.sample_rate, RTP_AUDIO_RATE)
            raw = int(frame.pts) if frame.pts is not None else None
            if raw is None:
                continue
            if self._last_raw is not None and raw < self._last_raw - (1 << 31):
                self._wraps += 1
            self._last_raw = raw
            pts = raw + (self._wraps << 32)
            if self._pts_base is None:
                self._pts_base = pts
            self.frames.append((arrival, pts - self._pts_base, mono.astype(np.float32)))
            if len(mono) and float(np.sqrt(np.mean(mono * mono))) > 0.003:
                self.last_voiced = arrival

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task

    def _anchor(self) -> float:
        """Monotonic time of RTP position 0 as the earliest-arriving frame places it."""
        return min(arrival - rel / RTP_AUDIO_RATE for arrival, rel, _ in self.frames)

    def late_frames(self, limit_s: float) -> int:
        """Frames that arrived more than ``limit_s`` after their playout time (anchored on the best one)."""
        if not self.frames:
            return 0
        anchor = self._anchor()
        return sum(1 for arrival, rel, _ in self.frames if arrival - (anchor + rel / RTP_AUDIO_RATE) > limit_s)

    def render(self, t0: float, min_seconds: float) -> tuple[np.ndarray, float | None]:
        """16 kHz mono on the input clock (t0 = monotonic time of input t=0); also the playout delay used."""
        length = int(round(min_seconds * RTP_AUDIO_RATE))
        if not self.frames:
            return np.zeros(int(round(min_seconds * OUTPUT_RATE)), dtype=np.float32), None
        anchor = self._anchor()
        placed = []
        for _, rel, mono in self.frames:
            start = int(round((anchor - t0) * RTP_AUDIO_RATE)) + rel
            if start + len(mono) <= 0:
                continue
            if start < 0:
                mono, start = mono[-start:], 0
            placed.append((start, mono))
            length = max(length, start + len(mono))
        out = np.zeros(length, dtype=np.float32)
        for start, mono in placed:
            out[start:start + len(mono)] = mono
        first_arrival = self.frames[0][0]
        delay = first_arrival - (anchor + self.frames[0][1] / RTP_AUDIO_RATE)  # 0 for the best frame
        return resample(out, RTP_AUDIO_RATE, OUTPUT_RATE).astype(np.float32), round(delay, 4)


@dataclass
class WebRTCTalkResult(TalkResult):
    messages: list[dict[str, Any]] = field(default_factory=list)  # what arrived over the data channel
    pc_id: str | None = None
    recorder: Recorder | None = None  # the received agent audio, frame by frame


class OfferRejected(WebRTCBenchError):
    def __init__(self, status: int, body: Any):
        super().__init__(f"offer rejected: HTTP {status} {body}")
        self.status = status
        self.body = body


class Peer:
    """An aiortc client of the service: WAV microphone up, recorded agent audio down, data channel events."""

    def __init__(self, audio: np.ndarray | None = None, *, jitter_prefetch: int = CLIENT_JITTER_PREFETCH):
        from aiortc import RTCConfiguration, RTCPeerConnection

        from voice.transports.webrtc import allow_loopback_candidates, set_audio_jitter_prefetch

        allow_loopback_candidates()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = WavTrack(np.zeros(0, np.float32) if audio is None else audio)
        self.recorder = Recorder()
        self.messages: list[dict[str, Any]] = []
        self.ready = asyncio.Event()
        self.answer: dict[str, Any] | None = None
        self._waiters: list[tuple[Any, asyncio.Future]] = []
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", self._on_message)
        self.pc.on("track", lambda remote: self.recorder.start(remote) if remote.kind == "audio" else None)
        self.pc.addTrack(self.track)
        set_audio_jitter_prefetch(self.pc, jitter_prefetch)

    def _on_message(self, raw) -> None:
        try:
            message = json.loads(raw)
        except (ValueError, TypeError):
            return
        if not isinstance(message, dict):
            return
        self.messages.append(message)
        if message.get("type") == "ready":
            self.ready.set()
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(message):
                fut.set_result(message)

    async def wait_message(self, pred, timeout: float) -> dict[str, Any]:
        """The first data channel message (already received or coming) for which ``pred`` is true."""
        for m in self.messages:
            if pred(m):
                return m
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove((pred, fut))

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "event" and m.get("event") == kind]

    async def connect(self, base_url: str, *, pipeline: str | None = None, timeout: float = 30) -> dict[str, Any]:
        """Offer over ``POST /api/offer`` and apply the answer; OfferRejected on a 4xx/5xx."""
        import httpx
        from aiortc import RTCSessionDescription

        await self.pc.setLocalDescription(await self.pc.createOffer())
        payload = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        if pipeline:
            payload["pipeline"] = pipeline
        async with httpx.AsyncClient(timeout=timeout) as client:
            r = await client.post(f"{base_url}/api/offer", json=payload)
        if r.status_code != 200:
            try:
                body = r.json()
            except ValueError:
                body = r.text[:200]
            raise OfferRejected(r.status_code, body)
        self.answer = r.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.answer["sdp"], type=self.answer["type"]))
        return self.answer

    def send(self, message: dict[str, Any]) -> None:
        if self.channel.readyState == "open":
            self.channel.send(json.dumps(message))

    async def close(self, *, bye: bool = True) -> None:
        if bye:
            with contextlib.suppress(Exception):
                self.send({"type": "bye"})
                await asyncio.sleep(0.05)
        await self.recorder.stop()
        await self.pc.close()


async def keep_line_open(recorder: Recorder, busy, max_tail_s: float, *, done=lambda: False) -> None:
    """After the clip: keep streaming silence while the agent still owes or plays a reply.

    Ends once ``busy()`` is false and nothing voiced arrived for 0.6 s, when
    ``done()`` (the session ended), or after ``max_tail_s``.
    """
    end_of_input = time.monotonic()
    quiet_since = None
    while time.monotonic() - end_of_input < max_tail_s:
        await asyncio.sleep(FRAME_MS / 1000)
        now = time.monotonic()
        if busy() or now - recorder.last_voiced < 0.15:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= 0.6:
            break
        if done():
            break


def write_events(events_path, events: list[dict[str, Any]]) -> None:
    """The session's events as JSONL (nothing when ``events_path`` is None)."""
    if events_path is None:
        return
    Path(events_path).parent.mkdir(parents=True, exist_ok=True)
    with open(events_path, "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e, default=str) + "\n")


async def talk_over_webrtc(base_url: str, app, audio: np.ndarray, *, pipeline: str | None = None,
                           max_tail_s: float = 20.0, jitter_prefetch: int = CLIENT_JITTER_PREFETCH) -> dict[str, Any]:
    """One aiortc session against a service running in this process: play ``audio`` (16 kHz float), record the reply."""
    peer = Peer(audio, jitter_prefetch=jitter_prefetch)
    track, recorder = peer.track, peer.recorder
    session = None
    try:
        answer = await peer.connect(base_url, pipeline=pipeline)
        session = app.state.voice.webrtc.get(answer["pc_id"])
        if session is None:
            raise WebRTCBenchError("the WebRTC session ended as soon as it started (a server error: see the log)")

        # Wait until the server's pipeline hears us, then start the clip.
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (session.ready.is_set() and session.events.clock.started):
            if time.monotonic() > deadline or session.done.is_set():
                raise WebRTCBenchError(f"the WebRTC session did not start (state {peer.pc.connectionState})")
            await asyncio.sleep(0.02)
        await asyncio.sleep(PRE_ROLL_S)
        track.play()
        await track.finished.wait()
        assert track.t0 is not None

        await keep_line_open(recorder, session.busy, max_tail_s, done=session.done.is_set)
        # Shift server event times onto the input clock (shared monotonic clock).
        shift = (time.monotonic() - track.t0) - session.events.clock.now()
    finally:
        await peer.close()
        if session is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(session.done.wait(), 15)
    events = [{**e, "t": round(e["t"] + shift, 4), "t_server": e["t"]} for e in session.events.events]
    return {"t0": track.t0, "recorder": recorder, "events": events, "session": session,
            "messages": peer.messages, "pc_id": answer["pc_id"], "shift": shift}


async def talk_file_webrtc(input_wav, output_wav, events_path, settings, runtime=None, *,
                           max_tail_s: float = 20.0, jitter_prefetch: int = CLIENT_JITTER_PREFETCH) -> WebRTCTalkResult:
    """Like :func:`voice.talk.talk_file`, through ``POST /api/offer`` and a loopback WebRTC peer."""
    from voice.events import EventLog
    from voice.talk import shared_runtime

    audio = read_wav(input_wav, PIPELINE_RATE)
    runtime = runtime or shared_runtime(settings)
    async with serve_in_process(settings, runtime) as (base_url, app):
        run = await talk_over_webrtc(base_url, app, audio, pipeline=settings.pipeline, max_tail_s=max_tail_s,
                                     jitter_prefetch=jitter_prefetch)
    input_seconds = len(audio) / PIPELINE_RATE
    out, _ = run["recorder"].render(run["t0"], input_seconds)
    write_wav(output_wav, out, OUTPUT_RATE)
    log = EventLog(run["session"].id)
    log.events = run["events"]
    write_events(events_path, log.events)
    return WebRTCTalkResult(Path(output_wav), log, input_seconds, len(out) / OUTPUT_RATE,
                            messages=run["messages"], pc_id=run["pc_id"])


# ------------------------------------------------------- against a separate service


async def talk_file_webrtc_remote(input_wav, output_wav, events_path, base_url: str, *,
                                  pipeline: str | None = None, max_tail_s: float = 20.0,
                                  ready_timeout_s: float = READY_TIMEOUT_S,
                                  jitter_prefetch: int = CLIENT_JITTER_PREFETCH) -> WebRTCTalkResult:
    """Like :func:`talk_file_webrtc`, against a service in another process (``voice serve``).

    The caller is then the only thing in this process, as a browser would be:
    its Opus and RTP work does not share the agent's process. The session's
    events arrive over the data channel; their ``t`` is moved onto the input
    clock by the arrival of the first one that names a time (an estimate off
    by the data channel's delay, a few ms on loopback); ``t_server`` keeps the
    original.
    """
    from voice.events import EventLog

    audio = read_wav(input_wav, PIPELINE_RATE)
    peer = Peer(audio, jitter_prefetch=jitter_prefetch)
    track, recorder = peer.track, peer.recorder
    arrivals: dict[int, float] = {}
    on_message = peer._on_message

    def stamped(raw) -> None:  # note when each message arrived, for the clock estimate
        arrivals[len(peer.messages)] = time.monotonic()
        on_message(raw)

    peer.channel.remove_all_listeners("message")
    peer.channel.on("message", stamped)
    try:
        answer = await peer.connect(base_url, pipeline=pipeline)
        try:
            await asyncio.wait_for(peer.ready.wait(), ready_timeout_s)
        except asyncio.TimeoutError:
            raise WebRTCBenchError(f"the WebRTC session did not start (state {peer.pc.connectionState})") from None
        await asyncio.sleep(PRE_ROLL_S + 0.2)  # the server's clock starts on our first frame
        track.play()
        await track.finished.wait()
        assert track.t0 is not None
        await keep_line_open(recorder, lambda: not peer.events("agent_audio_stop"), max_tail_s)
    finally:
        await peer.close()
    shift = None
    for i, m in enumerate(peer.messages):
        if m.get("type") == "event" and isinstance(m.get("t"), (int, float)) and i in arrivals:
            shift = (arrivals[i] - track.t0) - m["t"]
            break
    events = [{**{k: v for k, v in m.items() if k != "type"},
               "t": round(m["t"] + (shift or 0.0), 4) if isinstance(m.get("t"), (int, float)) else m.get("t"),
               "t_server": m.get("t")}
              for m in peer.messages if m.get("type") == "event"]
    input_seconds = len(audio) / PIPELINE_RATE
    out, _ = recorder.render(track.t0, input_seconds)
    write_wav(output_wav, out, OUTPUT_RATE)
    log = EventLog(str(answer.get("session", answer.get("pc_id"))))
    log.events = events
    write_events(events_path, events)
    return WebRTCTalkResult(Path(output_wav), log, input_seconds, len(out) / OUTPUT_RATE,
                            messages=peer.messages, pc_id=answer.get("pc_id"), recorder=recorder)
