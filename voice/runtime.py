"""Models loaded once per process and shared by every session."""

from __future__ import annotations

import time
from dataclasses import dataclass

from loguru import logger

from models.asr import Transcriber, load_transcriber
from models.llm import LocalLLM, load_local_llm
from models.tts import PiperSynth


@dataclass
class Runtime:
    transcriber: Transcriber
    synth: PiperSynth
    local_llm: LocalLLM | None
    load_seconds: float = 0.0

    @classmethod
    def load(cls, settings) -> "Runtime":
        """Load ASR, TTS and (for the llama-cpp backend) the LLM; WeightsNotFound on missing weights."""
        started = time.perf_counter()
        transcriber = load_transcriber(settings.asr)
        synth = PiperSynth(settings.tts.voice, settings.tts.speaker_id, settings.tts.length_scale)
        local_llm = None
        if settings.llm.backend == "llama-cpp":
            local_llm = load_local_llm(settings.llm)
            local_llm.warm_up(settings.llm.system_prompt)
        runtime = cls(transcriber, synth, local_llm, time.perf_counter() - started)
        logger.info(f"models loaded in {runtime.load_seconds:.2f}s")
        return runtime
