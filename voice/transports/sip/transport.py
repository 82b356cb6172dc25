"""Pipecat glue: one SIP call as a pipecat transport.

Input: the caller's audio (8 kHz from PJSIP) is upsampled once at the edge to
16 kHz mono int16 and pushed as ``InputAudioRawFrame``; DTMF digits are pushed
as ``InputDTMFFrame``. When the caller hangs up, the input pushes an
``EndWorkerFrame`` upstream so the pipeline ends on its own.

Output: ``TransportParams(audio_out_sample_rate=8000)`` makes pipecat
resample TTS audio to 8 kHz once; :meth:`SIPCallOutputTransport.write_audio_frame`
queues it into the call and returns when at most ~60 ms is queued ahead (it
paces like a sound card). An interruption drops what is still queued.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    EndWorkerFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputDTMFFrame,
    OutputDTMFUrgentFrame,
    StartFrame,
)
from pipecat.audio.dtmf.types import KeypadEntry
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from voice.audio import resample_pcm16
from voice.events import EventLog, SessionClock

from .audio_port import SIP_RATE, EdgeUpsampler
from .call import SIPCall

PIPELINE_RATE = 16000
AHEAD_MS = 60.0  # most audio queued into the call ahead of playout
_MAX_INPUT_BACKLOG = 250  # 5 s of 20 ms frames; older input is dropped if the pipeline stalls


def sip_transport_params(**overrides: Any) -> TransportParams:
    base = dict(
        audio_in_enabled=True, audio_in_sample_rate=PIPELINE_RATE, audio_in_channels=1,
        audio_out_enabled=True, audio_out_sample_rate=SIP_RATE, audio_out_channels=1,
        audio_out_10ms_chunks=2, audio_out_end_silence_secs=0,
    )
    base.update(overrides)
    return TransportParams(**base)


class SIPCallInputTransport(BaseInputTransport):
    def __init__(self, transport: SIPCallTransport, call: SIPCall, params: TransportParams, **kwargs):
        super().__init__(params, **kwargs)
        self._transport = transport
        self._call = call
        self._queue: asyncio.Queue[bytes] | None = None
        self._reader: asyncio.Task | None = None
        self._upsampler = EdgeUpsampler(SIP_RATE, PIPELINE_RATE)
        self._attached = False

    async def start(self, frame: StartFrame):
        await super().start(frame)
        if self._attached:
            return
        self._attached = True
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        q = self._queue

        def sink(pcm: bytes) -> None:  # media thread
            try:
                loop.call_soon_threadsafe(q.put_nowait, pcm)
            except RuntimeError:
                pass

        await self.set_transport_ready(frame)
        self._reader = self.create_task(self._read_loop(), name="sip-input")
        self._call.audio.set_sink(sink)
        if self._call.connected_at is not None:
            logger.debug(f"sip: call {self._call.session_id} pipeline listening "
                         f"{time.monotonic() - self._call.connected_at:.2f}s after the answer")
        self._call.add_dtmf_listener(self._on_dtmf)
        self._call.add_end_listener(self._on_call_ended)
        await self._transport._call_event_handler("on_client_connected", self._call)

    async def _read_loop(self):
        assert self._queue is not None
        while True:
            pcm = await self._queue.get()
            while self._queue.qsize() > _MAX_INPUT_BACKLOG:
                self._queue.get_nowait()
            out = self._upsampler.process(pcm)
            if out:
                if self._transport.clock is not None:
                    # The session's input clock starts at the caller's first frame, as on WebRTC:
                    # every event time, latency and the echo guard's playback history read it.
                    self._transport.clock.start()
                await self.push_audio_frame(
                    InputAudioRawFrame(audio=out, sample_rate=PIPELINE_RATE, num_channels=1))

    def _on_dtmf(self, digit: str) -> None:
        try:
            entry = KeypadEntry(digit)
        except ValueError:
            return
        self.create_task(self.push_frame(InputDTMFFrame(button=entry)), name="sip-dtmf")

    def _on_call_ended(self) -> None:
        self.create_task(self._end_pipeline(), name="sip-hangup")

    async def _end_pipeline(self):
        await self._transport._call_event_handler("on_client_disconnected", self._call)
        await self.push_frame(EndWorkerFrame(reason="caller hung up"), FrameDirection.UPSTREAM)

    async def _detach(self):
        self._call.audio.set_sink(None)
        self._call.remove_dtmf_listener(self._on_dtmf)
        self._call.remove_end_listener(self._on_call_ended)
        if self._reader is not None:
            await self.cancel_task(self._reader)
            self._reader = None

    async def stop(self, frame):
        await self._detach()
        await super().stop(frame)

    async def cancel(self, frame):
        await self._detach()
        await super().cancel(frame)


class SIPCallOutputTransport(BaseOutputTransport):
    def __init__(self, transport: SIPCallTransport, call: SIPCall, params: TransportParams, **kwargs):
        super().__init__(params, **kwargs)
        self._transport = transport
        self._call = call
        self._ready = False

    async def start(self, frame: StartFrame):
        await super().start(frame)
        if not self._ready:
            self._ready = True
            await self.set_transport_ready(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self._call.audio.clear()  # barge-in: drop what is queued but not yet sent

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        call = self._call
        if call.ended:
            return False
        pcm = frame.audio
        if frame.sample_rate != SIP_RATE:
            pcm = resample_pcm16(pcm, frame.sample_rate, SIP_RATE)
        if frame.num_channels > 1:
            pcm = np.frombuffer(pcm, dtype=np.int16).reshape(-1, frame.num_channels)[:, 0].tobytes()
        ms = len(pcm) / 2 / SIP_RATE * 1000.0
        limit = max(AHEAD_MS - ms, 0.0)
        while call.audio.buffered_ms() > limit:
            if call.ended:
                call.audio.clear()
                return False
            if not call.audio.clocked(0.5):
                # PJSIP is not pulling audio (media not up, or gone): play into the void at
                # real time, like a sound card nobody listens to, instead of stalling pipecat.
                call.audio.clear()
                await asyncio.sleep(ms / 1000.0)
                return True
            await asyncio.sleep(0.01)
        call.audio.write(pcm)
        return True

    def _supports_native_dtmf(self) -> bool:
        return True

    async def _write_dtmf_native(self, frame: OutputDTMFFrame | OutputDTMFUrgentFrame):
        digits = "".join(str(b.value) for b in (frame.buttons or []))
        if digits:
            self._call.send_dtmf(digits)


class SIPCallTransport(BaseTransport):
    """A connected :class:`SIPCall` as a pipecat transport (16 kHz in, 8 kHz out).

    Events: ``on_client_connected(transport, call)`` when the pipeline starts,
    ``on_client_disconnected(transport, call)`` when the caller hangs up.
    """

    def __init__(self, call: SIPCall, params: TransportParams | None = None, *, name: str | None = None,
                 clock: SessionClock | None = None):
        super().__init__(name=name or f"SIPCallTransport#{call.session_id}")
        self.call = call
        self.clock = clock  # the session's input clock, started by the first caller frame
        self._params = params or sip_transport_params()
        self._input: SIPCallInputTransport | None = None
        self._output: SIPCallOutputTransport | None = None
        self._register_event_handler("on_client_connected")
        self._register_event_handler("on_client_disconnected")

    @property
    def params(self) -> TransportParams:
        return self._params

    def input(self) -> FrameProcessor:
        if self._input is None:
            self._input = SIPCallInputTransport(self, self.call, self._params, name=f"{self.name}-input")
        return self._input

    def output(self) -> FrameProcessor:
        if self._output is None:
            self._output = SIPCallOutputTransport(self, self.call, self._params, name=f"{self.name}-output")
        return self._output

    def hangup(self) -> None:
        self.call.hangup()


# ---------------------------------------------------------------------------- sessions

def call_control(call: SIPCall, drain_s: float = 3.0):
    """What the call-control tools (voice/tools) do on a phone call: BYE, REFER, RFC 4733.

    Hang-up and transfer first let the audio already queued for the caller play
    out (at most ``drain_s``), so the goodbye is heard whole.
    """
    from voice.tools import CallControl

    async def drained() -> None:
        deadline = asyncio.get_running_loop().time() + drain_s
        while call.audio.buffered_ms() > 0 and not call.ended and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)

    async def hangup() -> None:
        await drained()
        call.hangup()

    async def transfer(uri: str) -> None:
        await drained()
        call.transfer(uri)

    return CallControl(hangup=hangup, transfer=transfer, send_dtmf=call.send_dtmf)


async def pipeline_session(call: SIPCall, runtime: Any, app_settings: Any) -> None:
    """The real agent: the shared pipeline and turn-taking controller on this call."""
    from voice.session import run_session

    events = EventLog(call.session_id)
    await run_session(SIPCallTransport(call, clock=events.clock), runtime, app_settings, transport_name="sip",
                      session_id=call.session_id, echo_guard=True, events=events,
                      caller=call.caller, callee=call.callee, call_control=call_control(call))


class EchoResponder(FrameProcessor):
    """Bring-up responder: a short beep when the call starts, then the caller's audio echoed back."""

    def __init__(self, *, beep: bool = True, **kwargs):
        super().__init__(**kwargs)
        self._greeted = not beep

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            if not self._greeted:
                self._greeted = True
                t = np.arange(int(0.3 * PIPELINE_RATE)) / PIPELINE_RATE
                beep = (0.3 * np.sin(2 * np.pi * 660 * t) * 32767).astype(np.int16).tobytes()
                await self.push_frame(OutputAudioRawFrame(audio=beep, sample_rate=PIPELINE_RATE, num_channels=1))
            await self.push_frame(OutputAudioRawFrame(audio=frame.audio, sample_rate=frame.sample_rate,
                                                      num_channels=frame.num_channels))
        else:
            await self.push_frame(frame, direction)


async def echo_session(call: SIPCall, *, taps: list[FrameProcessor] | tuple = (), beep: bool = True) -> None:
    """Run the bring-up responder on a call until it ends (``taps`` go between input and responder)."""
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.workers.runner import WorkerRunner

    transport = SIPCallTransport(call)
    pipeline = Pipeline([transport.input(), *taps, EchoResponder(beep=beep), transport.output()])
    worker = PipelineWorker(pipeline, params=PipelineParams(audio_in_sample_rate=PIPELINE_RATE,
                                                            audio_out_sample_rate=SIP_RATE),
                            idle_timeout_secs=None, enable_rtvi=False, check_dangling_tasks=False)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    logger.debug(f"sip: echo responder on call {call.session_id}")
    await runner.run()
