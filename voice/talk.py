"""`voice talk`: stream a WAV file through the live agent in real time.

The input is played as a microphone would: 20 ms frames at wall-clock pace.
The agent's audio is written as a speaker would play it: at the moment the
pipeline hands it over, on the same clock as the input, so OUTPUT.wav is
time-synchronous with INPUT.wav (t=0 shared, silence where the agent is
quiet). This is the contract the duplex benchmark relies on.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame, StartFrame
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

from voice.audio import FRAME_MS, PIPELINE_RATE, frames, read_wav, write_wav
from voice.events import EventLog, SessionClock, new_session_id

OUTPUT_RATE = 16000
SPEAKER_LEAD_S = 0.04  # how far ahead of "now" the simulated sound card buffers
UNDERRUN_MIN_S = 0.02  # a gap of one 20 ms frame or more is audible
UNDERRUN_WINDOW_S = 1.0


class FileInputTransport(BaseInputTransport):
    def __init__(self, audio: np.ndarray, clock: SessionClock, params: TransportParams, *,
                 busy, max_tail_s: float, on_done, echo=None):
        super().__init__(params)
        self._audio = audio
        # (speaker output transport, gain, delay s): a simulated loudspeaker-to-mic path.
        self._echo = echo
        self._clock = clock
        self._busy = busy
        self._max_tail_s = max_tail_s
        self._on_done = on_done
        self._task = None

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)
        self._task = self.create_task(self._play(), name="file-mic")

    async def _play(self):
        period = FRAME_MS / 1000
        silence = bytes(PIPELINE_RATE * FRAME_MS // 1000 * 2)
        t0 = time.monotonic()
        self._clock.start(t0)
        i = 0
        # A frame is pushed when its last sample has been "captured", as a
        # microphone delivers it, never before.
        for pcm in frames(self._audio):
            await asyncio.sleep(max(0.0, t0 + (i + 1) * period - time.monotonic()))
            await self.push_audio_frame(InputAudioRawFrame(audio=self._with_echo(pcm, i * period),
                                                           sample_rate=PIPELINE_RATE, num_channels=1))
            i += 1
        # The input is over; keep the line open (silence) while the agent is still answering.
        end_of_input = i * period
        quiet_since = None
        while i * period - end_of_input < self._max_tail_s:
            await asyncio.sleep(max(0.0, t0 + (i + 1) * period - time.monotonic()))
            await self.push_audio_frame(InputAudioRawFrame(audio=self._with_echo(silence, i * period),
                                                           sample_rate=PIPELINE_RATE, num_channels=1))
            i += 1
            if self._busy():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = i * period
            elif i * period - quiet_since >= 0.6:
                break
        await self._on_done()

    def _with_echo(self, pcm: bytes, t: float) -> bytes:
        if self._echo is None:
            return pcm
        speaker, gain, delay = self._echo
        mic = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        mic = mic + gain * speaker.segment(t - delay, len(mic))
        return (np.clip(mic, -1, 1) * 32767).astype(np.int16).tobytes()


class FileOutputTransport(BaseOutputTransport):
    def __init__(self, clock: SessionClock, params: TransportParams):
        super().__init__(params)
        self._clock = clock
        self._chunks: list[tuple[int, np.ndarray]] = []
        self._playhead = 0.0
        self.last_audio_end = 0.0
        # Underruns: (t, seconds) where the speaker ran dry in the middle of the agent's
        # speech (the next frame came after the buffered audio had played out, less
        # than UNDERRUN_WINDOW_S after it; a longer silence is a new utterance).
        self.underruns: list[tuple[float, float]] = []

    async def start(self, frame: StartFrame):
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        samples = np.frombuffer(frame.audio, dtype=np.int16)
        if frame.num_channels > 1:
            samples = samples.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
        now = self._clock.now()
        gap = now - self._playhead
        if self._chunks and UNDERRUN_MIN_S <= gap < UNDERRUN_WINDOW_S:
            self.underruns.append((round(self._playhead, 3), round(gap, 3)))
        self._playhead = max(self._playhead, now)
        start = int(round(self._playhead * OUTPUT_RATE))
        self._chunks.append((start, samples.copy()))
        self._playhead += len(samples) / frame.sample_rate
        self.last_audio_end = self._playhead
        await asyncio.sleep(max(0.0, self._playhead - SPEAKER_LEAD_S - self._clock.now()))
        return True

    def segment(self, t0: float, n: int) -> np.ndarray:
        """``n`` samples of what the speaker played from ``t0`` (zeros where it was quiet)."""
        out = np.zeros(n, dtype=np.float32)
        a = int(round(t0 * OUTPUT_RATE))
        for start, s in reversed(self._chunks[-64:]):
            lo, hi = max(a, start), min(a + n, start + len(s))
            if lo < hi:
                out[lo - a:hi - a] = s[lo - start:hi - start].astype(np.float32) / 32768.0
        return out

    def render(self, min_seconds: float) -> np.ndarray:
        length = int(round(min_seconds * OUTPUT_RATE))
        for start, s in self._chunks:
            if s.any():  # trailing silence the output pads with does not lengthen the file
                length = max(length, start + len(s))
        out = np.zeros(length, dtype=np.float32)
        for start, s in self._chunks:
            out[start:start + len(s)] = s.astype(np.float32) / 32768.0
        return out


class FileTransport(BaseTransport):
    def __init__(self, audio: np.ndarray, clock: SessionClock, *, busy, max_tail_s: float, on_done,
                 echo_db: float | None = None, echo_delay_s: float = 0.06):
        super().__init__()
        params = TransportParams(audio_in_enabled=True, audio_in_sample_rate=PIPELINE_RATE,
                                 audio_out_enabled=True, audio_out_sample_rate=OUTPUT_RATE,
                                 audio_out_end_silence_secs=0)
        self._output = FileOutputTransport(clock, params)
        echo = None if echo_db is None else (self._output, 10 ** (echo_db / 20), echo_delay_s)
        self._input = FileInputTransport(audio, clock, params, busy=busy, max_tail_s=max_tail_s,
                                         on_done=on_done, echo=echo)

    def input(self) -> FileInputTransport:
        return self._input

    def output(self) -> FileOutputTransport:
        return self._output


@dataclass
class TalkResult:
    output_path: Path
    events: EventLog
    input_seconds: float
    output_seconds: float
    underruns: list = field(default_factory=list)  # (t, gap s): see FileOutputTransport.underruns

    def turn_metrics(self) -> list[dict]:
        return self.events.of("turn_metrics")


_RUNTIME_CACHE: dict[str, object] = {}


def shared_runtime(settings):
    """Models for this settings object, loaded once per process."""
    from voice.runtime import Runtime

    key = json.dumps(settings.model_dump(mode="json", include={"asr", "llm", "tts", "native", "pipeline"}),
                     sort_keys=True, default=str)
    if key not in _RUNTIME_CACHE:
        _RUNTIME_CACHE[key] = Runtime.load(settings)
    return _RUNTIME_CACHE[key]


async def talk_file(input_wav, output_wav, events_path, settings, *, runtime=None,
                    max_tail_s: float = 20.0, echo_guard: bool = False,
                    simulate_echo_db: float | None = None, probe=None) -> TalkResult:
    """Run INPUT through the agent in real time; write OUTPUT (16 kHz) and the JSONL event log.

    ``simulate_echo_db`` feeds the agent's own output back into the microphone at
    that gain (a loudspeaker with no echo canceller); ``echo_guard`` turns the
    controller's guard against it on.
    """
    from voice.session import run_session
    from voice.tools import CallControl

    audio = read_wav(input_wav, PIPELINE_RATE)
    runtime = runtime or shared_runtime(settings)
    if settings.pipeline == "native" and runtime.native_model().full_duplex:
        # A full-duplex model talks (or breathes) all the time: there is no "done answering".
        max_tail_s = min(max_tail_s, 2.0)
    clock = SessionClock()
    events = EventLog(new_session_id(), clock, events_path)
    state = {}

    def busy() -> bool:
        if transport.output().last_audio_end > clock.now() - 0.1:
            return True
        return "session" in state and state["session"].busy()

    async def done():
        await state["session"].end()

    transport = FileTransport(audio, clock, busy=busy, max_tail_s=max_tail_s, on_done=done,
                              echo_db=simulate_echo_db)

    try:
        await run_session(transport, runtime, settings, transport_name="file", events=events,
                          echo_guard=echo_guard, on_start=lambda session: state.update(session=session),
                          probe=probe, call_control=CallControl(hangup=done))  # end_call ends the file's session
    finally:
        events.close()
    out = transport.output().render(len(audio) / PIPELINE_RATE)
    write_wav(output_wav, out, OUTPUT_RATE)
    return TalkResult(Path(output_wav), events, len(audio) / PIPELINE_RATE, len(out) / OUTPUT_RATE,
                      underruns=list(transport.output().underruns))

