"""One interface for native speech-to-speech models, framework-free (numpy in, numpy out).

A *full-duplex* model (Moshi) listens and speaks at once: the pipeline feeds it
one input frame per step and plays whatever it returns, silence included.

A *half-duplex* model (Mini-Omni) answers turns: ``step`` only listens (it
returns silence), and after the turn controller decides that the user has
finished, ``respond`` turns the whole user turn into a stream of outputs.

Per-session state is whatever ``new_state`` returns; the model object itself is
shared by every session and holds only weights.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class StepOutput:
    """What one model step produced.

    ``audio``: float32 mono at the model's ``sample_rate``. From ``step`` it is
    exactly ``frame_size`` samples (zeros while the model has nothing to say);
    from ``respond`` it is any length, often empty (audio comes in chunks).
    ``text``: the text decoded this step, '' for padding or when no tokenizer
    is available. ``text_token``: the raw text token id (None when none).
    ``end``: the response is finished (``respond`` only).
    """

    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    text: str = ""
    text_token: int | None = None
    end: bool = False


class ModelBusy(RuntimeError):
    """The model cannot take another session now (no free slot, or no real-time margin)."""


class DuplexModel(abc.ABC):
    """A native speech model behind a numpy interface."""

    name: str = "native"
    sample_rate: int  # rate of the audio the model produces
    input_rate: int  # rate of the user audio that step()/respond() take
    frame_size: int  # output samples per step (at sample_rate)
    full_duplex: bool = True

    @property
    def input_frame_size(self) -> int:
        """Input samples per step (at input_rate)."""
        return self.frame_size * self.input_rate // self.sample_rate

    @property
    def frame_ms(self) -> float:
        return 1000.0 * self.frame_size / self.sample_rate

    @abc.abstractmethod
    def new_state(self) -> Any:
        """Fresh streaming state for one session."""

    @abc.abstractmethod
    def reset(self, state: Any) -> None:
        """Return ``state`` to what ``new_state`` gave (start of a conversation)."""

    def close_state(self, state: Any) -> None:  # noqa: B027 - optional hook
        """Release what ``state`` holds (optional)."""

    def silence(self) -> np.ndarray:
        return np.zeros(self.frame_size, dtype=np.float32)

    def step(self, state: Any, pcm: np.ndarray) -> StepOutput:
        """Feed ``input_frame_size`` float32 samples at ``input_rate``; get one output frame.

        Half-duplex models only listen here: they return silence.
        """
        return StepOutput(audio=self.silence())

    def respond(self, state: Any, user_audio_16k: np.ndarray) -> Iterator[StepOutput]:
        """Half-duplex models: answer a finished user turn (float32 mono, 16 kHz)."""
        raise NotImplementedError(f"{self.name} is full-duplex: feed it with step()")


def as_float_frame(pcm: np.ndarray, n: int) -> np.ndarray:
    """float32 mono of exactly ``n`` samples (int16 is scaled, short input zero-padded)."""
    a = np.asarray(pcm)
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    a = a.astype(np.float32, copy=False).reshape(-1)
    if len(a) != n:
        if len(a) > n:
            raise ValueError(f"expected a frame of {n} samples, got {len(a)}")
        a = np.pad(a, (0, n - len(a)))
    return a
