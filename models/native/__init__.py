"""Native speech-to-speech models (Moshi, Mini-Omni) behind one numpy interface.

Heavy imports (torch, moshi, transformers, snac) happen only when a model is built.
"""

from models.native.base import DuplexModel, ModelBusy, StepOutput
from models.native.loader import load_native, parse_spec

__all__ = ["DuplexModel", "ModelBusy", "StepOutput", "load_native", "parse_spec"]
