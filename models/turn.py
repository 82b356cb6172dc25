"""Semantic end-of-turn model: pipecat's bundled Smart Turn v3.2 (ONNX, CPU)."""

from __future__ import annotations

import threading

import numpy as np


class SmartTurn:
    """P(turn complete) for the last 8 s of a user's speech, 16 kHz float32.

    Uses pipecat's LocalSmartTurnAnalyzerV3 for the model and its feature
    extraction. Its streaming API owns buffering and silence timing, which our
    controller does itself, so we call its per-clip prediction directly.
    """

    def __init__(self, threads: int = 1):
        from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3

        self._analyzer = LocalSmartTurnAnalyzerV3(cpu_count=threads)
        self._lock = threading.Lock()

    def probability(self, audio: np.ndarray) -> float:
        if len(audio) < 1600:
            return 0.0
        with self._lock:
            return float(self._analyzer._predict_endpoint(audio.astype(np.float32))["probability"])
