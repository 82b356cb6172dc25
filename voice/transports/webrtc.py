"""WebRTC (browser) sessions: pipecat's SmallWebRTC transport, one pipeline per peer.

* :class:`VoiceWebRTCTransport` is ``SmallWebRTCTransport`` with an input that
  re-chunks the peer's audio into exact 20 ms frames at 16 kHz (the pipeline's
  rate) and starts the session's input clock on the first frame.
* :func:`run_webrtc_session` runs ``voice.session.run_session`` on it, forwards
  every session event to the page over the data channel (JSON, see
  :mod:`voice.transports.page_messages`) and ends the session when the peer leaves: an explicit
  ``{"type": "bye"}``, the peer connection closing or failing (ICE consent
  lost), heartbeats stopping, or no microphone audio arriving any more.
* :func:`allow_loopback_candidates` makes aioice offer a 127.0.0.1 host
  candidate (it skips loopback by default), so a browser or client on the same
  machine can always connect.

Messages to the page: JSON over the data channel, as listed in
:mod:`voice.transports.page_messages`.
Messages from the page: ``{"type": "heartbeat"}`` (every second or so) and ``{"type": "bye"}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from loguru import logger
from pipecat.frames.frames import InputAudioRawFrame
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import IceServer, SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCInputTransport, SmallWebRTCTransport

from voice.audio import PIPELINE_RATE, FrameChunker
from voice.events import EventLog, SessionClock
from voice.transports.page_messages import EventForwarder

OUTPUT_RATE = 48000  # Opus' native rate: aiortc's encoder does no further resampling

# Packets the agent's audio receiver holds back before decoding. aiortc's
# default (4) adds 80-100 ms to every word the user says. The agent does not
# play this audio out, it only listens (VAD, ASR), so a late packet costs no
# glitch: nothing is held, and reordered packets still wait for the missing one.
AUDIO_JITTER_PREFETCH = 0

# Peer-liveness limits (seconds).
CONNECT_TIMEOUT_S = 30.0  # offer answered but ICE/DTLS never completed
HEARTBEAT_TIMEOUT_S = 10.0  # the page sent heartbeats, then stopped
AUDIO_TIMEOUT_S = 10.0  # microphone audio flowed, then stopped (a vanished peer)


# --------------------------------------------------------------------------- ICE


_loopback_patched = False


def allow_loopback_candidates() -> None:
    """Make aioice gather a 127.0.0.1 host candidate too (idempotent, process-wide).

    aioice's ``get_host_addresses`` drops 127.0.0.1 and aiortc exposes no
    setting for it; wrapping that one function is the smallest change that
    lets peers on the same machine connect when no other interface is up.
    Remote peers simply never get an answer on the loopback pair.
    """
    global _loopback_patched
    if _loopback_patched:
        return
    import aioice.ice as ice

    original = ice.get_host_addresses

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
        if use_ipv4 and "127.0.0.1" not in addresses:
            addresses = ["127.0.0.1", *addresses]
        return addresses

    get_host_addresses.__wrapped__ = original  # type: ignore[attr-defined]
    ice.get_host_addresses = get_host_addresses
    _loopback_patched = True


def ice_servers(settings) -> list[IceServer]:
    """``settings.webrtc`` as aiortc ICE servers (TURN URLs get the configured credentials)."""
    w = settings.webrtc
    password = w.turn_password.get_secret_value() if w.turn_password is not None else None
    servers = []
    for url in w.ice_servers:
        if url.startswith(("turn:", "turns:")):
            servers.append(IceServer(urls=url, username=w.turn_username, credential=password))
        else:
            servers.append(IceServer(urls=url))
    return servers


def page_ice_servers(settings) -> list[dict[str, Any]]:
    """The same servers in the browser's RTCIceServer shape (for the page's own RTCPeerConnection)."""
    out = []
    for s in ice_servers(settings):
        d: dict[str, Any] = {"urls": s.urls}
        if s.username:
            d["username"] = s.username
        if s.credential:
            d["credential"] = s.credential
        out.append(d)
    return out


# ---------------------------------------------------------------------- transport


def set_audio_jitter_prefetch(pc, prefetch: int = AUDIO_JITTER_PREFETCH) -> None:
    """Replace the audio receive buffer of ``pc``'s audio transceivers with a shorter one.

    aiortc has no setting for it; pipecat replaces the video receiver's buffer
    the same way (``SmallWebRTCTrack``). Call before media flows.
    """
    for transceiver in pc.getTransceivers():
        if transceiver.kind == "audio" and transceiver.receiver is not None:
            transceiver.receiver._RTCRtpReceiver__jitter_buffer = AudioJitterBuffer(hold=prefetch)


class AudioJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, releasing an audio packet once ``hold`` later ones are in.

    aiortc's own buffer can only tell a frame is complete when the next packet
    arrives, which suits video; an audio packet is a whole Opus frame, so with
    ``hold=0`` it is decoded the moment it arrives in order. A reordered packet
    still waits for the missing one. ``hold=n`` (n >= 1) equals aiortc's prefetch n.
    """

    def __init__(self, hold: int = 0, capacity: int = 16):
        super().__init__(capacity=capacity)
        self.hold = hold

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        ready = 0
        while ready <= self.hold and self._packets[(self._origin + ready) % self._capacity] is not None:
            ready += 1
        if ready <= self.hold:
            return None
        head = self._packets[self._origin % self._capacity]
        self.remove(1)
        return JitterFrame(data=head._data, timestamp=head.timestamp)


def transport_params() -> TransportParams:
    return TransportParams(audio_in_enabled=True, audio_in_sample_rate=PIPELINE_RATE, audio_in_channels=1,
                           audio_out_enabled=True, audio_out_sample_rate=OUTPUT_RATE)


class ClockedInputTransport(SmallWebRTCInputTransport):
    """Peer audio as exact 20 ms, 16 kHz mono frames; starts the session clock on the first one."""

    def __init__(self, client, params: TransportParams, *, clock: SessionClock, **kwargs):
        super().__init__(client, params, **kwargs)
        self._clock = clock
        self._chunker = FrameChunker()
        self.last_audio_at: float | None = None  # monotonic time of the last frame from the peer

    async def push_audio_frame(self, frame: InputAudioRawFrame):
        self.last_audio_at = time.monotonic()
        self._clock.start()
        for chunk in self._chunker.push(frame.audio):
            await super().push_audio_frame(
                InputAudioRawFrame(audio=chunk, sample_rate=PIPELINE_RATE, num_channels=1))


class VoiceWebRTCTransport(SmallWebRTCTransport):
    def __init__(self, connection: SmallWebRTCConnection, clock: SessionClock,
                 params: TransportParams | None = None):
        super().__init__(connection, params or transport_params())
        self._clock = clock

    def input(self) -> ClockedInputTransport:
        if not self._input:
            self._input = ClockedInputTransport(self._client, self._params, clock=self._clock,
                                                name=self._input_name)
        return self._input


# ------------------------------------------------------------------------ session


class WebRTCSession:
    """One browser (or aiortc) peer and its pipeline; created by the service per offer."""

    def __init__(self, connection: SmallWebRTCConnection, runtime, settings, events: EventLog):
        self.connection = connection
        self.runtime = runtime
        self.settings = settings
        self.events = events
        self.session = None  # voice.session.Session, once the pipeline is built
        self.transport = VoiceWebRTCTransport(connection, events.clock)
        self.end_reason: str | None = None
        self.started_at = time.monotonic()
        self.connected_at: float | None = None
        self.last_heartbeat: float | None = None
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        set_audio_jitter_prefetch(connection.pc)
        self._forwarder = EventForwarder(connection.send_app_message, asyncio.get_running_loop())
        events.subscribe(self._forwarder)
        self._register_handlers()

    @property
    def id(self) -> str:
        return self.events.session_id

    @property
    def pc_id(self) -> str:
        return self.connection.pc_id

    def busy(self) -> bool:
        return self.session is not None and self.session.busy()

    def _register_handlers(self) -> None:
        t = self.transport

        @t.event_handler("on_client_connected")
        async def _connected(transport, connection):
            self.connected_at = time.monotonic()
            self.ready.set()
            self._forwarder.send({"type": "ready", "session": self.id})

        @t.event_handler("on_client_disconnected")
        async def _disconnected(transport, connection):
            await self.stop("peer disconnected")

        @t.event_handler("on_app_message")
        async def _message(transport, message, sender):
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "heartbeat":
                self.last_heartbeat = time.monotonic()
            elif kind == "bye":
                await self.stop("peer said bye")

    async def stop(self, reason: str) -> None:
        """End the session now (idempotent); the pipeline is cancelled, the peer connection closed."""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        logger.info(f"webrtc session {self.id} ending: {reason}")
        if "peer" not in reason:
            self._forwarder.send({"type": "end", "session": self.id, "reason": reason})
        if self.session is not None:
            try:
                await self.session.cancel()
            except Exception as e:
                logger.debug(f"cancel failed: {e}")

    def _vanished(self) -> str | None:
        """Why the peer counts as gone, or None while it is alive."""
        now = time.monotonic()
        state = self.connection.pc.connectionState
        if state in ("failed", "closed"):
            return f"peer connection {state}"
        if self.connected_at is None and now - self.started_at > CONNECT_TIMEOUT_S:
            return "peer never connected"
        if self.last_heartbeat is not None and now - self.last_heartbeat > HEARTBEAT_TIMEOUT_S:
            return "peer heartbeats stopped"
        last_audio = self.transport.input().last_audio_at
        if last_audio is not None and now - last_audio > AUDIO_TIMEOUT_S:
            return "peer audio stopped"
        return None

    async def _watchdog(self) -> None:
        while self.end_reason is None:
            await asyncio.sleep(1.0)
            why = self._vanished()
            if why is not None:
                await self.stop(why)
                return

    async def run(self, on_start: Callable[[Any], None] | None = None) -> EventLog:
        """Run the pipeline until the peer leaves or :meth:`stop`; always closes the peer connection."""
        from voice.session import run_session

        def started(session):
            self.session = session
            if on_start is not None:
                on_start(session)

        self._forwarder.send({"type": "session", "session": self.id, "pipeline": self.settings.pipeline})
        if self.end_reason is not None:  # stopped before the pipeline was built
            await self._close()
            return self.events
        watchdog = asyncio.create_task(self._watchdog(), name=f"webrtc-watchdog-{self.id}")
        try:
            await run_session(self.transport, self.runtime, self.settings, transport_name="webrtc",
                              events=self.events, on_start=started, call_control=self._call_control())
        except Exception as e:
            logger.exception(f"webrtc session {self.id} failed: {e}")
            self._forwarder.send({"type": "end", "session": self.id, "reason": "server error"})
            if self.end_reason is None:
                self.end_reason = f"error: {e}"
        finally:
            watchdog.cancel()
            self.end_reason = self.end_reason or "pipeline ended"
            await self._close()
        return self.events

    def _call_control(self):
        """end_call (voice/tools) closes the peer connection, once the goodbye has left."""
        from voice.tools import CallControl

        async def hangup() -> None:
            await asyncio.sleep(0.3)  # what the output transport has handed to aiortc, still in flight
            await self.stop("the agent ended the call")

        return CallControl(hangup=hangup)

    async def _close(self) -> None:
        self._forwarder.closed = True
        try:
            await self.connection.disconnect()
        except Exception as e:
            logger.debug(f"disconnect failed: {e}")
        self.events.close()
        self.done.set()
