"""Audio between the PJSIP conference bridge and asyncio, one call at a time.

The bridge runs at 8 kHz with 20 ms frames, clocked by PJSIP's null sound
device thread. Every 20 ms that thread calls :meth:`CallAudioPort.onFrameRequested`
(audio we send to the caller) and :meth:`CallAudioPort.onFrameReceived` (audio
the caller sent, already de-jittered and decoded by PJSIP). Neither callback
may block: they only touch an :class:`AudioBridge` (a lock-protected byte
buffer and a sink callable that the asyncio side installs).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable

import numpy as np

from voice.audio import resample_pcm16

SIP_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = SIP_RATE * FRAME_MS // 1000  # 160
FRAME_BYTES = FRAME_SAMPLES * 2  # 320
SILENCE = bytes(FRAME_BYTES)


class AudioBridge:
    """Thread-safe 8 kHz int16 mono hand-off for one call.

    asyncio side: :meth:`write` queues outgoing PCM, :meth:`buffered_ms` says
    how much is still waiting, :meth:`clear` drops it (barge-in), and
    :meth:`set_sink` installs a callable that receives each incoming 20 ms
    frame *on the media thread* (it must only hand off, e.g. with
    ``loop.call_soon_threadsafe``).

    PJSIP side: :meth:`pull_frame` always returns exactly one 20 ms frame
    (silence when nothing is queued) and :meth:`push_received` forwards a
    received frame to the sink.
    """

    BACKLOG_FRAMES = 150  # 3 s of caller audio kept while no sink is installed yet

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tx = bytearray()
        self._sink: Callable[[bytes], None] | None = None
        # Audio that arrives between the answer and the pipeline's start (building a session
        # takes a moment; callers speak at once). Handed to the first sink installed.
        self._backlog: list[bytes] | None = []
        self.last_pull = 0.0  # time.monotonic() of the last frame PJSIP asked for
        self.frames_pulled = 0
        self.frames_sent_audio = 0  # pulled frames that carried queued audio
        self.underruns = 0  # frames padded with silence while audio was queued mid-frame
        self.frames_received = 0

    # ---- asyncio side ----
    def write(self, pcm: bytes) -> None:
        with self._lock:
            self._tx += pcm

    def buffered_ms(self) -> float:
        with self._lock:
            return len(self._tx) / 2 / SIP_RATE * 1000.0

    def clear(self) -> None:
        with self._lock:
            self._tx.clear()

    def set_sink(self, sink: Callable[[bytes], None] | None) -> None:
        """Install (or remove) the receiver; the first one installed also gets the backlog, in order."""
        with self._lock:
            backlog, self._backlog = self._backlog, None
            self._sink = sink
            if sink is not None and backlog:
                for pcm in backlog:
                    sink(pcm)

    def clocked(self, within_s: float = 0.2) -> bool:
        """Whether PJSIP has been pulling audio recently (the call's media is live)."""
        return self.last_pull > 0 and time.monotonic() - self.last_pull < within_s

    # ---- PJSIP media thread side ----
    def pull_frame(self) -> bytes:
        with self._lock:
            self.last_pull = time.monotonic()
            self.frames_pulled += 1
            n = len(self._tx)
            if n == 0:
                return SILENCE
            self.frames_sent_audio += 1
            if n >= FRAME_BYTES:
                chunk = bytes(self._tx[:FRAME_BYTES])
                del self._tx[:FRAME_BYTES]
                return chunk
            self.underruns += 1
            chunk = bytes(self._tx) + bytes(FRAME_BYTES - n)
            self._tx.clear()
            return chunk

    def push_received(self, pcm: bytes) -> None:
        self.frames_received += 1
        sink = self._sink
        if sink is not None:
            sink(pcm)
            return
        with self._lock:
            if self._sink is not None:
                self._sink(pcm)
            elif self._backlog is not None:
                self._backlog.append(pcm)
                if len(self._backlog) > self.BACKLOG_FRAMES:
                    del self._backlog[0]


class EdgeUpsampler:
    """8 kHz -> 16 kHz for a stream of 20 ms frames, using ``voice.audio.resample_pcm16``.

    Resampling each 20 ms frame on its own leaves an edge artefact every
    frame (about -30 dB, measured). This keeps per-call state instead: each
    output frame is cut from the resampling of [previous frame | frame |
    5 ms look-ahead], which matches resampling the whole stream to within
    about -75 dB, at the cost of 5 ms latency.
    """

    LOOKAHEAD = 40  # input samples (5 ms at 8 kHz)

    def __init__(self, from_rate: int = SIP_RATE, to_rate: int = 16000) -> None:
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._hist = np.zeros(FRAME_SAMPLES, dtype=np.int16)  # left context
        self._pending = np.zeros(0, dtype=np.int16)

    def process(self, pcm: bytes) -> bytes:
        """Feed any amount of 8 kHz PCM; returns the 16 kHz PCM that is now final."""
        self._pending = np.concatenate([self._pending, np.frombuffer(pcm, dtype=np.int16)])
        out = []
        ratio = self.to_rate / self.from_rate
        while len(self._pending) >= FRAME_SAMPLES + self.LOOKAHEAD:
            frame = self._pending[:FRAME_SAMPLES]
            window = np.concatenate([self._hist, self._pending[:FRAME_SAMPLES + self.LOOKAHEAD]])
            up = np.frombuffer(resample_pcm16(window.tobytes(), self.from_rate, self.to_rate), dtype=np.int16)
            a = int(round(len(self._hist) * ratio))
            out.append(up[a:a + int(round(FRAME_SAMPLES * ratio))].tobytes())
            self._hist = frame
            self._pending = self._pending[FRAME_SAMPLES:]
        return b"".join(out)


_FAST_VECTOR_READ = True


def _byte_vector_bytes(vec) -> bytes:
    """Contents of a pjsua2 ByteVector (std::vector<unsigned char>).

    Iterating the SWIG vector costs ~270 us per 320-byte frame; reading the
    vector's [begin, end) pointers costs ~2 us. The fast path is checked
    against len() and falls back to iteration on any mismatch.
    """
    if not _FAST_VECTOR_READ:
        return bytes(vec)
    try:
        ptrs = (ctypes.c_void_p * 2).from_address(int(vec.this))
        begin, end = ptrs[0] or 0, ptrs[1] or 0
        n = end - begin
        if n == len(vec) and n >= 0:
            return ctypes.string_at(begin, n) if n else b""
    except Exception:  # noqa: BLE001 - fall back to the slow, safe path
        pass
    return bytes(vec)


def make_port_class():
    """The pjsua2 AudioMediaPort subclass (built lazily so importing this module needs no pjsua2)."""
    import pjsua2 as pj

    class CallAudioPort(pj.AudioMediaPort):
        """A conference-bridge port that plays ``bridge``'s queued audio and hands received audio to it."""

        def __init__(self, bridge: AudioBridge) -> None:
            super().__init__()
            self.bridge = bridge
            self._checked = False

        def create(self, name: str) -> None:
            fmt = pj.MediaFormatAudio()
            fmt.type = pj.PJMEDIA_TYPE_AUDIO
            fmt.clockRate = SIP_RATE
            fmt.channelCount = 1
            fmt.bitsPerSample = 16
            fmt.frameTimeUsec = FRAME_MS * 1000
            self.createPort(name, fmt)

        def onFrameRequested(self, frame) -> None:  # noqa: N802 - pjsua2 naming
            try:
                pcm = self.bridge.pull_frame()
            except Exception:  # noqa: BLE001 - never let an exception reach the media thread
                pcm = SILENCE
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
            frame.buf = pj.ByteVector(pcm)
            frame.size = len(pcm)

        def onFrameReceived(self, frame) -> None:  # noqa: N802 - pjsua2 naming
            try:
                if frame.type != pj.PJMEDIA_FRAME_TYPE_AUDIO or frame.size <= 0:
                    return
                pcm = _byte_vector_bytes(frame.buf)
                if not self._checked:
                    self._checked = True
                    slow = bytes(frame.buf)
                    if pcm != slow:  # one-time sanity check of the fast path
                        global _FAST_VECTOR_READ  # noqa: PLW0603
                        _FAST_VECTOR_READ = False
                        pcm = slow
                self.bridge.push_received(pcm)
            except Exception:  # noqa: BLE001
                pass

    return CallAudioPort
