"""``load_native(spec)``: one string names a native speech model and where its weights are.

    moshi                    kyutai/moshiko-pytorch-bf16 (local Hugging Face cache, else download)
    moshi:tiny               random tiny Mimi + LM (tests, CI, no weights)
    moshi:/path/to/dir       a local directory laid out like the hub repository
    moshi:org/repo           another hub repository
    mini-omni                gpt-omni/mini-omni from the local Hugging Face cache
    mini-omni:tiny           random tiny Qwen2 + Whisper encoder + SNAC
    mini-omni:/path/to/dir   a local directory (published or converted layout)
"""

from __future__ import annotations

from typing import Any

from models.native.base import DuplexModel
from models.weights import WeightsNotFound

ENGINES = ("moshi", "mini-omni")


def parse_spec(spec: str) -> tuple[str, str | None]:
    engine, sep, source = spec.strip().partition(":")
    engine = engine.strip().lower().replace("_", "-")
    if engine == "miniomni":
        engine = "mini-omni"
    if engine not in ENGINES:
        raise ValueError(f"unknown native model '{spec}': expected one of {', '.join(ENGINES)} [:tiny|:PATH|:REPO]")
    return engine, (source.strip() or None) if sep else None


def load_native(spec: str, *, device: str = "auto", **kwargs: Any) -> DuplexModel:
    """``device``: "auto" (CUDA when torch sees a GPU; tiny random weights stay on the CPU), "cpu", "cuda[:N]"."""
    engine, source = parse_spec(spec)
    if device != "auto":
        _check_device(device)
        kwargs["device"] = device
    if engine == "moshi":
        from models.native import moshi
        if source == "tiny":
            return moshi.build_tiny(**kwargs)
        return moshi.load_moshi(source or moshi.DEFAULT_REPO, **kwargs)
    from models.native import mini_omni
    if source == "tiny":
        return mini_omni.build_tiny(**kwargs)
    return mini_omni.load_mini_omni(source or mini_omni.DEFAULT_REPO, **kwargs)


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"native.device is {device!r} but this torch sees no CUDA GPU "
                             f"(torch {torch.__version__}); use \"cpu\" or \"auto\"")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"native.device is {device!r} but torch sees {torch.cuda.device_count()} CUDA GPU(s)")


__all__ = ["load_native", "parse_spec", "WeightsNotFound"]
