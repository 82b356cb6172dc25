"""Models loaded once per process and shared by every session."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from loguru import logger

from models.asr import BatchingTranscriber, Transcriber, load_transcriber
from models.backchannel import synthesize_backchannels
from models.cpu import CpuWatch, TrackedExecutor, model_executor
from models.llm import LocalLLM, load_local_llm
from models.tts import PiperSynth
from models.turn import SmartTurn


class LiveSessions:
    """How many conversations this process runs now (``voice.session.run_session`` counts them).

    Read from model threads: a second live conversation streams audio on the
    same cores (10-14 % of a core per WebRTC session), and llama.cpp's two
    threads then wait on each other at every operation (models/llm.py).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    @contextmanager
    def live(self) -> Iterator[None]:
        with self._lock:
            self.count += 1
        try:
            yield
        finally:
            with self._lock:
                self.count -= 1


@dataclass
class Runtime:
    transcriber: Transcriber
    synth: PiperSynth
    local_llm: LocalLLM | None
    smart_turn: SmartTurn
    backchannels: list = field(default_factory=list)
    load_seconds: float = 0.0
    # Pause-time analysis (ASR, then Smart Turn) runs here in arrival order: on
    # 2 cores, two models at once make both slower than one after the other.
    analysis: TrackedExecutor = field(default_factory=lambda: TrackedExecutor(1, thread_name_prefix="analysis"))
    # Blocking reply work (a reply's whole LLM generation, each Piper chunk) runs here, not on
    # the event loop's default executor: that one has cpu_count + 4 threads (6 on 2 cores), and
    # aiortc encodes every outgoing Opus frame on it, so a few long generations there delayed
    # every session's audio packets.
    reply_threads: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(64, thread_name_prefix="reply"))
    native_spec: str = "moshi"
    native_device: str = "auto"  # settings.native.device
    native_slots: int = 8  # settings.native.slots: sessions (Moshi) / replies (Mini-Omni) per batch; 0: unbatched
    native_max_wait_ms: float | None = None  # settings.native.max_wait_ms (Moshi's tick policy)
    sessions: LiveSessions = field(default_factory=LiveSessions)
    _native: object = None
    _native_lock: threading.Lock = field(default_factory=threading.Lock)

    def native_model(self):
        """The native speech-to-speech model, loaded on first use (WeightsNotFound if absent)."""
        with self._native_lock:
            if self._native is None:
                from models.native.loader import load_native

                started = time.perf_counter()
                model = load_native(self.native_spec, device=self.native_device)
                if self.native_slots > 0 and hasattr(model, "batch_engine"):
                    from models.native.batching import BatchedDuplex, BatchedReplies

                    if model.full_duplex:
                        wait = None if self.native_max_wait_ms is None else self.native_max_wait_ms / 1000.0
                        model = BatchedDuplex(model, self.native_slots, max_wait_s=wait)
                    else:
                        model = BatchedReplies(model, self.native_slots)
                self._native = model
                logger.info(f"native model {model.name} loaded in {time.perf_counter() - started:.2f}s")
            return self._native

    def native_status(self) -> dict | None:
        """The native batch's slots and recent tick times (/health); None when not batched or not loaded."""
        status = getattr(self._native, "status", None)
        return status() if callable(status) else None

    def native_refusal(self) -> str | None:
        """Why a new native session is refused now (no free slot, no margin; counted); None if it is not."""
        admits = getattr(self._native, "admits", None)
        return admits(record=True) if callable(admits) else None

    @classmethod
    def load(cls, settings) -> "Runtime":
        """Load ASR, TTS and (for the llama-cpp backend) the LLM; WeightsNotFound on missing weights.

        The models load on a thread at model priority (``settings.model_nice``), so the
        thread pools they create run there too; so do the executors their work runs on.
        """
        with model_executor(1, "load", settings.model_nice) as loader:
            return loader.submit(cls._load, settings).result()

    @classmethod
    def _load(cls, settings) -> "Runtime":
        started = time.perf_counter()
        # The sessions' pipeline code (pipecat's services, the OpenAI client) takes about
        # 1 s to import. Imported here, with the models, it no longer blocks the event
        # loop on the first call (its peer connection took 1.2 s instead of 0.03 s).
        import voice.session  # noqa: F401

        transcriber = load_transcriber(settings.asr)
        synth = PiperSynth(settings.tts.voice, settings.tts.speaker_id, settings.tts.length_scale)
        analysis = model_executor(1, "analysis", settings.model_nice, executor=TrackedExecutor)
        sessions = LiveSessions()
        local_llm = None
        if settings.llm.backend == "llama-cpp" and settings.pipeline == "cascaded":
            # Another process busy on a core (issue 20): a reply on more threads than the cores
            # left free has one share a core with it, and llama.cpp's threads wait for each other
            # after every operation (next to a llama.cpp neighbour on one of 2 cores: first token
            # 3.7 s, a one-sentence reply 4-16 s on 2 threads; 0.04 s and 0.12-0.21 s on one).
            cpu = CpuWatch()
            want = settings.llm.threads
            local_llm = load_local_llm(settings.llm, speech_first=synth.speech_first,
                                       busy_elsewhere=lambda: analysis.in_flight > 0 or sessions.count > 1
                                       or cpu.threads_for(want) < want)
            local_llm.warm_up(settings.llm.system_prompt)
        smart_turn = SmartTurn()
        backchannels = synthesize_backchannels(synth)
        runtime = cls(transcriber, synth, local_llm, smart_turn, backchannels, time.perf_counter() - started,
                      analysis=analysis, reply_threads=model_executor(64, "reply", settings.model_nice),
                      native_spec=settings.native.model, native_device=settings.native.device,
                      native_slots=settings.native.slots,
                      native_max_wait_ms=settings.native.max_wait_ms, sessions=sessions)
        if settings.asr.batch_max > 1 and hasattr(transcriber, "transcribe_batch"):
            runtime.transcriber = BatchingTranscriber(transcriber, runtime.analysis, settings.asr.batch_max)
        if settings.pipeline == "native":
            runtime.native_model()
        logger.info(f"models loaded in {runtime.load_seconds:.2f}s")
        return runtime
