"""Short acknowledgements synthesised once at start-up with the agent's own voice."""

from __future__ import annotations

import numpy as np

# Piper cannot say "mm-hmm" or "uh-huh" (it spells them out): words it says cleanly.
PHRASES = ("Yeah.", "Right.", "Okay.", "I see.")
MAX_SECONDS = 0.8


def synthesize_backchannels(synth, phrases=PHRASES, max_seconds: float = MAX_SECONDS,
                            volume: float = 0.7) -> list[tuple[str, bytes, int]]:
    """(text, int16 PCM, rate) per phrase: leading/trailing silence trimmed, faded, at most ``max_seconds``."""
    out = []
    for text in phrases:
        audio = np.frombuffer(synth.synthesize(text), dtype=np.int16).astype(np.float32) / 32768.0
        loud = np.flatnonzero(np.abs(audio) > 0.02)
        if len(loud) == 0:
            continue
        audio = audio[loud[0]:loud[-1] + 1][: int(max_seconds * synth.sample_rate)]
        fade = min(len(audio), int(0.02 * synth.sample_rate))
        audio[-fade:] *= np.linspace(1.0, 0.0, fade)
        # Said softer than a reply, as people do.
        out.append((text.rstrip("."), (np.clip(audio * volume, -1, 1) * 32767).astype(np.int16).tobytes(),
                    synth.sample_rate))
    return out
