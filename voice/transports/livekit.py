"""LiveKit mode: a worker that LiveKit dispatches to rooms, running our own pipeline in each.

* :func:`run_worker` (``voice worker``) loads the models once, then registers
  with a LiveKit server through the official ``livekit-agents`` package
  (``AgentServer`` + one ``rtc_session`` entrypoint). Jobs run as threads of
  this process (``JobExecutorType.THREAD``), so every room shares the one set
  of models, exactly as ``voice serve`` does; the worker reports its load as
  live sessions / ``max_sessions`` so LiveKit stops dispatching to a full one.
* Inside a room, :func:`run_room_session` joins with the job's own token
  (or one the worker mints from the API key) through pipecat's
  ``LiveKitTransport`` and runs ``voice.session.run_session`` on it: the
  same VAD, ASR, turn controller, LLM and TTS as the browser and phone paths.
  The agent listens to one caller (the first remote participant that
  publishes audio) and ends when that caller leaves. The page's session
  messages (``voice.transports.page_messages``: transcripts, state, latency)
  go to the caller as reliable data packets (:class:`RoomMessages`).
* :func:`mint_room_token` makes the page's room token (``GET /api/livekit/token``).

What runs against a real LiveKit server has not been exercised here (none can
run on the development machines): see README "LiveKit mode".
"""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import sys
import threading
import time
import uuid
from urllib.parse import urlparse

import numpy as np
from loguru import logger

from voice.audio import PIPELINE_RATE, FrameChunker
from voice.transports.page_messages import EventForwarder

OUTPUT_RATE = 48000  # Opus' native rate: LiveKit's encoder does no further resampling
NO_CALLER_TIMEOUT_S = 60.0  # dispatched, but nobody with a microphone ever came
END_FLUSH_S = 1.0  # how long a server-side end waits for its "end" message to leave


class LiveKitConfigError(ValueError):
    """A LiveKit setting the user must fix (one line)."""


# ----------------------------------------------------------------------- settings


def check_url(url: str) -> tuple[str, int]:
    """(host, port) of a ws://, wss://, http:// or https:// LiveKit URL; LiveKitConfigError otherwise."""
    if not url:
        raise LiveKitConfigError("the LiveKit URL is missing: pass --livekit-url ws://HOST:7880 "
                                 "(or set VOICE_LIVEKIT__URL)")
    parsed = urlparse(url)
    if parsed.scheme not in ("ws", "wss", "http", "https") or not parsed.hostname:
        raise LiveKitConfigError(f"--livekit-url must look like ws://HOST:7880 or wss://HOST, not {url!r}")
    try:
        port = parsed.port
    except ValueError:
        raise LiveKitConfigError(f"--livekit-url has an invalid port: {url!r}") from None
    if port is None:
        port = 443 if parsed.scheme in ("wss", "https") else 80
    return parsed.hostname, port


def check_credentials(lk) -> None:
    if not lk.api_key:
        raise LiveKitConfigError("the LiveKit API key is missing: pass --api-key (or set VOICE_LIVEKIT__API_KEY)")
    if not lk.api_secret.get_secret_value():
        raise LiveKitConfigError("the LiveKit API secret is missing: pass --api-secret "
                                 "(or set VOICE_LIVEKIT__API_SECRET)")


def wait_reachable(url: str, timeout_s: float) -> None:
    """Return once a TCP connection to the server opens; LiveKitConfigError after ``timeout_s``."""
    host, port = check_url(url)
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, max(0.2, timeout_s))):
                return
        except OSError as e:
            last = e.strerror or str(e) or type(e).__name__
        if time.monotonic() >= deadline:
            raise LiveKitConfigError(f"cannot reach the LiveKit server at {url} ({host}:{port}): {last}")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


# ------------------------------------------------------------------------ tokens


def mint_room_token(lk, *, room: str, identity: str | None = None, name: str | None = None,
                    ttl_s: int | None = None, dispatch_agent: bool = True) -> str:
    """A JWT that lets one participant join ``room`` (publish, subscribe, data), for ``ttl_s``.

    With an ``agent_name`` set (explicit dispatch) the token also asks LiveKit to
    dispatch that agent to the room when the participant creates it.
    """
    from livekit import api

    identity = identity or f"user-{uuid.uuid4().hex[:10]}"
    token = (
        api.AccessToken(lk.api_key, lk.api_secret.get_secret_value())
        .with_identity(identity)
        .with_name(name or identity)
        .with_ttl(datetime.timedelta(seconds=ttl_s or lk.token_ttl_s))
        .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True,
                                     can_publish_data=True))
    )
    if dispatch_agent and lk.agent_name:
        token = token.with_room_config(api.RoomConfiguration(
            agents=[api.RoomAgentDispatch(agent_name=lk.agent_name)]))
    return token.to_jwt()


def mint_agent_token(lk, *, room: str, identity: str) -> str:
    """The worker's own token for a room (used when the job carries none)."""
    from livekit import api

    return (
        api.AccessToken(lk.api_key, lk.api_secret.get_secret_value())
        .with_identity(identity)
        .with_name("voice agent")
        .with_kind("agent")
        .with_ttl(datetime.timedelta(hours=6))
        .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True,
                                     can_publish_data=True, agent=True))
        .to_jwt()
    )


# ---------------------------------------------------------------------- audio in


class LiveKitAudioConverter:
    """One participant's ``rtc.AudioFrame`` stream -> 16 kHz mono int16 PCM (streaming, soxr).

    LiveKit hands out 10 ms frames at the track's rate (48 kHz, 1 or 2
    channels); the pipeline wants 16 kHz mono.
    """

    def __init__(self, out_rate: int = PIPELINE_RATE):
        self.out_rate = out_rate
        self._rate: int | None = None
        self._stream = None

    def convert(self, frame) -> bytes:
        samples = np.frombuffer(bytes(frame.data), dtype=np.int16)
        channels = frame.num_channels
        if channels > 1:
            samples = samples.reshape(-1, channels).astype(np.int32).mean(axis=1)
        audio = samples.astype(np.float32) / 32768.0
        if frame.sample_rate != self.out_rate:
            if self._rate != frame.sample_rate:
                import soxr

                self._rate = frame.sample_rate
                self._stream = soxr.ResampleStream(frame.sample_rate, self.out_rate, 1, dtype="float32")
            audio = self._stream.resample_chunk(audio)
        return (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16).tobytes()


def make_transport(url: str, token: str, room: str, clock, on_caller=None):
    """pipecat's LiveKitTransport with our input: one caller, exact 20 ms 16 kHz frames, the session clock.

    ``on_caller(identity)`` is called once, when the caller's first audio arrives.
    """
    from pipecat.frames.frames import AudioRawFrame, InputAudioRawFrame
    from pipecat.transports.livekit.transport import LiveKitInputTransport, LiveKitParams, LiveKitTransport

    class CallerInputTransport(LiveKitInputTransport):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.caller: str | None = None
            self.last_audio_at: float | None = None
            self._converters: dict[str, LiveKitAudioConverter] = {}
            self._chunker = FrameChunker()

        async def _convert_livekit_audio_to_pipecat(self, audio_frame_event, participant_id):
            conv = self._converters.setdefault(participant_id, LiveKitAudioConverter())
            return AudioRawFrame(audio=conv.convert(audio_frame_event.frame), sample_rate=PIPELINE_RATE,
                                 num_channels=1)

        async def push_audio_frame(self, frame):
            who = getattr(frame, "user_id", None)
            if self.caller is None and who:
                self.caller = who
                logger.info(f"livekit: listening to {who}")
                if on_caller is not None:
                    on_caller(who)
            if who and who != self.caller:
                return  # one conversation: other participants' audio is not the caller's
            self.last_audio_at = time.monotonic()
            clock.start()
            for chunk in self._chunker.push(frame.audio):
                await super().push_audio_frame(
                    InputAudioRawFrame(audio=chunk, sample_rate=PIPELINE_RATE, num_channels=1))

    class VoiceLiveKitTransport(LiveKitTransport):
        def input(self):
            if not self._input:
                self._input = CallerInputTransport(self, self._client, self._params, name=self._input_name)
            return self._input

    params = LiveKitParams(audio_in_enabled=True, audio_in_sample_rate=PIPELINE_RATE, audio_in_channels=1,
                           audio_out_enabled=True, audio_out_sample_rate=OUTPUT_RATE, audio_out_channels=1,
                           audio_in_user_tracks=True)
    return VoiceLiveKitTransport(url, token, room, params=params)


# ------------------------------------------------------------------ in a room


class RoomMessages:
    """The page's session messages to the room's caller, as reliable LiveKit data packets.

    ``publish(text, identity)`` sends one packet (pipecat's
    ``LiveKitTransport.send_message``; ``identity`` None = the whole room).
    Messages wait until the room is joined (:meth:`joined`): a packet sent before
    is dropped by the transport, and the first one says which session this is.
    One task sends them, so they arrive in order. Until the caller is known they
    go to the room (only the caller is in it, usually); then to the caller only.
    """

    def __init__(self, publish, max_queued: int = 1000):
        self._publish = publish
        self._queue: asyncio.Queue[str] = asyncio.Queue(max_queued)
        self._joined = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.caller: str | None = None
        self.dropped = 0

    def deliver(self, message: dict) -> None:
        """Queue one message (on the event loop's thread; :class:`EventForwarder` sees to that)."""
        try:
            self._queue.put_nowait(json.dumps(message))
        except asyncio.QueueFull:  # a room that stopped taking packets must not grow memory
            self.dropped += 1
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._send_all(), name="livekit-room-messages")

    def joined(self) -> None:
        self._joined.set()

    async def _send_all(self) -> None:
        await self._joined.wait()
        while True:
            text = await self._queue.get()
            try:
                await self._publish(text, self.caller)
            except Exception as e:  # a failed packet must not stop the rest, nor the session
                logger.debug(f"livekit: data packet not sent: {e}")
            finally:
                self._queue.task_done()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued message has been handed to the room; False on timeout."""
        if not self._joined.is_set():
            return self._queue.empty()
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class SessionCounter:
    """Live room sessions of this worker against ``max_sessions`` (LiveKit sees it as the load)."""

    def __init__(self, max_sessions: int):
        self.max_sessions = max_sessions
        self._live = 0
        self._lock = threading.Lock()

    def try_reserve(self) -> bool:
        with self._lock:
            if self._live >= self.max_sessions:
                return False
            self._live += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._live = max(0, self._live - 1)

    @property
    def live(self) -> int:
        return self._live

    def load(self, *_args) -> float:
        return min(1.0, self._live / self.max_sessions)


async def run_room_session(url: str, token: str, room: str, runtime, settings, *,
                           no_caller_timeout_s: float = NO_CALLER_TIMEOUT_S):
    """Join ``room`` and hold one conversation until the caller leaves; returns the event log."""
    from voice.events import EventLog, SessionClock, new_session_id
    from voice.session import run_session

    events = EventLog(new_session_id(), SessionClock())
    state: dict = {"session": None, "ended": None}

    def caller_found(identity: str) -> None:
        messages.caller = identity
        forwarder.send({"type": "ready", "session": events.session_id})

    transport = make_transport(url, token, room, events.clock, on_caller=caller_found)
    messages = RoomMessages(transport.send_message)
    forwarder = EventForwarder(messages.deliver, asyncio.get_running_loop())
    events.subscribe(forwarder)

    async def end(reason: str):
        if state["ended"] is None:
            state["ended"] = reason
            logger.info(f"livekit session {events.session_id} in {room} ending: {reason}")
            if reason not in ("caller left", "disconnected from the room"):
                forwarder.send({"type": "end", "session": events.session_id, "reason": reason})
                await messages.flush(END_FLUSH_S)
            if state["session"] is not None:
                await state["session"].cancel()

    @transport.event_handler("on_connected")
    async def _joined(_transport):
        messages.joined()

    @transport.event_handler("on_participant_disconnected")
    async def _left(_transport, participant_id):
        if participant_id == transport.input().caller:
            await end("caller left")

    @transport.event_handler("on_disconnected")
    async def _disconnected(_transport, *args):
        await end("disconnected from the room")

    async def watchdog():
        started = time.monotonic()
        while state["ended"] is None:
            await asyncio.sleep(1.0)
            last = transport.input().last_audio_at
            if last is None and time.monotonic() - started > no_caller_timeout_s:
                await end("no caller")
            elif last is not None and time.monotonic() - last > 10.0:
                await end("caller audio stopped")

    forwarder.send({"type": "session", "session": events.session_id, "pipeline": settings.pipeline})
    dog = asyncio.create_task(watchdog(), name=f"livekit-watchdog-{events.session_id}")
    try:
        await run_session(transport, runtime, settings, transport_name="livekit", events=events,
                          on_start=lambda s: state.update(session=s), callee=room)
    finally:
        dog.cancel()
        forwarder.closed = True
        messages.close()
    return events


# ----------------------------------------------------------------------- worker


def job_credentials(ctx, lk) -> tuple[str, str]:
    """(url, token) to join the job's room: the job's own when LiveKit sent them, else minted."""
    info = getattr(ctx, "_info", None)
    url = getattr(info, "url", "") or lk.url
    token = getattr(info, "token", "")
    if not token:
        token = mint_agent_token(lk, room=ctx.job.room.name, identity=f"agent-{ctx.job.id}")
    return url, token


def build_server(settings, runtime, counter: SessionCounter, *, health_port: int = 8081,
                 max_retry: int = 16):
    """The livekit-agents ``AgentServer`` for this process (not started)."""
    from livekit.agents import AgentServer, JobContext, JobExecutorType, JobRequest

    lk = settings.livekit
    server = AgentServer(
        job_executor_type=JobExecutorType.THREAD,  # jobs share this process's models
        num_idle_processes=1,
        load_threshold=(counter.max_sessions - 0.5) / counter.max_sessions,
        load_fnc=counter.load,
        ws_url=lk.url, api_key=lk.api_key, api_secret=lk.api_secret.get_secret_value(),
        host="0.0.0.0", port=health_port, max_retry=max_retry,
    )

    async def on_request(req: JobRequest) -> None:
        if counter.live >= counter.max_sessions:
            logger.info(f"livekit: refusing room {req.room.name}: {counter.live}/{counter.max_sessions} live")
            await req.reject()
            return
        await req.accept(name="voice agent", identity=f"agent-{req.id}")

    async def entrypoint(ctx: JobContext) -> None:
        if not counter.try_reserve():
            logger.warning(f"livekit: room {ctx.job.room.name} assigned while full; leaving")
            ctx.shutdown("busy")
            return
        try:
            url, token = job_credentials(ctx, lk)
            await run_room_session(url, token, ctx.job.room.name, runtime, settings)
        except Exception as e:
            logger.exception(f"livekit session in {ctx.job.room.name} failed: {e}")
        finally:
            counter.release()
            ctx.shutdown("session ended")

    server.rtc_session(entrypoint, agent_name=lk.agent_name, on_request=on_request)
    return server


def run_worker(settings, *, connect_timeout_s: float = 10.0, health_port: int = 8081,
               max_retry: int = 16) -> int:
    """``voice worker``: check the server is reachable, load the models, register, serve rooms."""
    import signal

    lk = settings.livekit
    check_url(lk.url)
    check_credentials(lk)
    wait_reachable(lk.url, connect_timeout_s)

    from voice.runtime import Runtime

    runtime = Runtime.load(settings)
    counter = SessionCounter(settings.max_sessions)
    server = build_server(settings, runtime, counter, health_port=health_port, max_retry=max_retry)
    print(f"voice worker: models loaded in {runtime.load_seconds:.1f}s; registering with {lk.url} as "
          f"agent {lk.agent_name or '(automatic dispatch)'}, up to {settings.max_sessions} rooms", flush=True)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        run = asyncio.create_task(server.run(devmode=False))
        stop = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
        if run in done:
            run.result()  # a terminal connection failure raises here
            return
        print("voice worker: draining (no new rooms; live ones may finish)", flush=True)
        try:
            await asyncio.wait_for(server.drain(), settings.security.shutdown_grace_s
                                   if hasattr(settings, "security") else 10)
        except (asyncio.TimeoutError, Exception):
            pass
        await server.aclose()

    try:
        asyncio.run(main())
    except RuntimeError as e:
        raise LiveKitConfigError(f"LiveKit worker stopped: {e}") from None
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: voice worker --livekit-url ... --api-key ... --api-secret ...")
