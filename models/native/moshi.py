"""Moshi (kyutai) through the ``moshi`` package: Mimi codec + LMGen, one frame per step.

Every session gets its own streaming state (Mimi's encoder/decoder caches,
LMGen's delay buffer and the LM's KV caches). The modules are shared; before a
step the session's state objects are attached to them under a lock, so any
number of sessions can run on one loaded model (one step at a time).
``MoshiBatch`` (``batch_engine``) instead steps a pool of sessions in one
batched call; ``models.native.batching`` schedules it.

``tiny`` builds a random-weight Mimi + LM small enough for CPU tests; the real
model loads from a local directory or a Hugging Face repo id.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.native.base import DuplexModel, StepOutput, as_float_frame
from models.weights import WeightsNotFound

DEFAULT_REPO = "kyutai/moshiko-pytorch-bf16"
MOSHI_NAME = "model.safetensors"
MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
TEXT_TOKENIZER_NAME = "tokenizer_spm_32k_3.model"

# Full-size configuration, copied from moshi 0.2.13 (moshi.models.loaders):
# the package keeps these in private names.
SEANET_KWARGS: dict[str, Any] = {
    "channels": 1, "dimension": 512, "causal": True, "n_filters": 64, "n_residual_layers": 1,
    "activation": "ELU", "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0,
    "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none",
    "pad_mode": "constant", "ratios": [8, 6, 5, 4], "true_skip": True,
}
QUANTIZER_KWARGS: dict[str, Any] = {
    "dimension": 256, "n_q": 32, "bins": 2048, "input_dimension": 512, "output_dimension": 512,
}
MIMI_TRANSFORMER_KWARGS: dict[str, Any] = {
    "d_model": 512, "num_heads": 8, "num_layers": 8, "causal": True, "layer_scale": 0.01,
    "context": 250, "conv_layout": True, "max_period": 10000, "gating": "none",
    "norm": "layer_norm", "positional_embedding": "rope", "dim_feedforward": 2048,
    "input_dimension": 512, "output_dimensions": [512],
}
MIMI_CONFIG: dict[str, Any] = {
    "sample_rate": 24000, "channels": 1, "frame_rate": 12.5,
    "seanet": SEANET_KWARGS, "quantizer": QUANTIZER_KWARGS, "transformer": MIMI_TRANSFORMER_KWARGS,
}
LM_KWARGS: dict[str, Any] = {
    "dim": 4096, "text_card": 32000, "existing_text_padding_id": 3, "n_q": 16, "dep_q": 8,
    "card": 2048, "num_heads": 32, "num_layers": 32, "hidden_scale": 4.125, "causal": True,
    "layer_scale": None, "context": 3000, "max_period": 10000, "gating": "silu",
    "norm": "rms_norm_f32", "positional_embedding": "rope", "depformer_dim": 1024,
    "depformer_dim_feedforward": int(4.125 * 1024), "depformer_num_heads": 16,
    "depformer_num_layers": 6, "depformer_layer_scale": None, "depformer_multi_linear": True,
    "depformer_context": 8, "depformer_max_period": 10000, "depformer_gating": "silu",
    "depformer_pos_emb": "none", "depformer_weights_per_step": True,
    "delays": [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1],
}


def tiny_mimi_config() -> dict[str, Any]:
    """~0.5 M parameters; same rates (24 kHz, 12.5 Hz, 1920-sample frames) as the real Mimi."""
    cfg = copy.deepcopy(MIMI_CONFIG)
    cfg["seanet"].update(n_filters=8, dimension=64)
    cfg["quantizer"].update(dimension=32, input_dimension=64, output_dimension=64)
    cfg["transformer"].update(d_model=64, num_heads=2, num_layers=1, dim_feedforward=128,
                              input_dimension=64, output_dimensions=[64])
    return cfg


def tiny_lm_kwargs() -> dict[str, Any]:
    kw = copy.deepcopy(LM_KWARGS)
    kw.update(dim=64, num_heads=4, num_layers=2, hidden_scale=2, context=250, text_card=1000,
              depformer_dim=32, depformer_dim_feedforward=64, depformer_num_heads=2,
              depformer_num_layers=1)
    return kw


def _require_moshi():
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    try:
        from moshi.models import LMGen, loaders
    except ImportError as e:
        raise WeightsNotFound("the Moshi engine needs the 'moshi' package "
                              f"(pip install --no-deps moshi==0.2.13): {e}") from None
    return loaders, LMGen


def _default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class MoshiState:
    """One session: the streaming states of Mimi, LMGen and the LM, detached from the modules."""

    mimi: dict[str, Any]
    gen: dict[str, Any]
    lm: dict[str, Any]
    steps: int = 0
    text_pieces: list[str] = field(default_factory=list)


class MoshiDuplex(DuplexModel):
    full_duplex = True

    def __init__(self, mimi, lm, *, text_tokenizer=None, name: str = "moshi",
                 temp: float = 0.8, temp_text: float = 0.7, top_k: int = 250, top_k_text: int = 25,
                 use_sampling: bool = True) -> None:
        _, LMGen = _require_moshi()
        self.name = name
        self.mimi = mimi
        self.lm = lm
        self.gen_kwargs = dict(use_sampling=use_sampling, temp=temp, temp_text=temp_text,
                               top_k=top_k, top_k_text=top_k_text)
        self.lm_gen = LMGen(lm, **self.gen_kwargs)
        self.text_tokenizer = text_tokenizer
        self.sample_rate = int(mimi.sample_rate)
        self.input_rate = self.sample_rate
        self.frame_size = int(mimi.frame_size)
        self.device = next(lm.parameters()).device
        self._pad_ids = {int(lm.text_padding_token_id), int(lm.end_of_text_padding_id)}
        self._lock = threading.Lock()
        self._extra_gens: weakref.WeakSet = weakref.WeakSet()  # the LMGens of live batch engines

    # -- state ---------------------------------------------------------------
    def new_state(self) -> MoshiState:
        with self._lock:
            self._detach()
            mimi_stack = self.mimi.streaming(1)
            gen_stack = self.lm_gen.streaming(1)  # also puts the LM in streaming mode
            state = MoshiState(mimi=self.mimi.get_streaming_state(),
                               gen=self.lm_gen.get_streaming_state(),
                               lm=self.lm.get_streaming_state())
            # Closing the stacks only detaches the state objects from the modules;
            # they keep their caches and are attached again before each step.
            gen_stack.close()
            mimi_stack.close()
            return state

    def _detach(self) -> None:
        for m in (*list(self._extra_gens), self.lm_gen, self.lm, self.mimi):
            if m.is_streaming:
                m._stop_streaming()

    def _attach(self, state: MoshiState) -> None:
        self.mimi.set_streaming_state(state.mimi)
        self.lm_gen.set_streaming_state(state.gen)
        self.lm.set_streaming_state(state.lm)

    def reset(self, state: MoshiState) -> None:
        with self._lock:
            self._attach(state)
            try:
                self.mimi.reset_streaming()
                self.lm_gen.reset_streaming()  # resets the LM through its callback
            finally:
                self._detach()
            state.steps = 0
            state.text_pieces.clear()

    # -- inference -----------------------------------------------------------
    def text_of(self, token: int) -> str:
        if token in self._pad_ids or token < 0 or self.text_tokenizer is None:
            return ""
        return self.text_tokenizer.id_to_piece(token).replace("\u2581", " ")

    def step(self, state: MoshiState, pcm: np.ndarray) -> StepOutput:
        import torch

        frame = as_float_frame(pcm, self.frame_size)
        x = torch.from_numpy(frame).to(self.device).view(1, 1, -1)
        with self._lock, torch.no_grad():
            self._attach(state)
            try:
                codes = self.mimi.encode(x)
                tokens = self.lm_gen.step(codes)
                out = None if tokens is None else self.mimi.decode(tokens[:, 1:])
            finally:
                self._detach()
        state.steps += 1
        if tokens is None:
            return StepOutput(audio=self.silence())
        token = int(tokens[0, 0, 0])
        audio = out[0, 0].float().cpu().numpy().astype(np.float32, copy=False)
        text = self.text_of(token)
        if text:
            state.text_pieces.append(text)
        return StepOutput(audio=audio, text=text, text_token=token)

    def batch_engine(self, slots: int) -> "MoshiBatch":
        """A pool of ``slots`` sessions stepped together (see models.native.batching)."""
        return MoshiBatch(self, slots)


class MoshiBatch:
    """The streaming state of ``slots`` sessions at once, stepped by one batched model call.

    Built on moshi's own batch support: every streaming module keeps its state per
    batch item, ``reset_streaming(mask)`` resets chosen items and ``set_exec_mask``
    leaves the state of masked items untouched by a step, so a slot without a frame
    this tick, or a free slot, computes but does not advance. A slot reset when its
    session joins starts from the same state as a fresh session alone, so with
    greedy decoding each slot produces what ``MoshiDuplex.step`` produces for the
    same frames, whoever else is in the batch (to float rounding of batched kernels).

    Its states live detached from the shared modules like ``MoshiState``'s and are
    attached under the model's lock for each step, so batch engines and lone
    sessions can share one loaded model.
    """

    def __init__(self, model: MoshiDuplex, slots: int) -> None:
        import torch
        from moshi.models import LMGen
        from moshi.modules.streaming import StreamingModule

        if slots < 1:
            raise ValueError(f"a batch needs at least one slot, got {slots}")
        self.model = model
        self.slots = int(slots)
        # support_out_of_sync: LMGen otherwise returns None for the whole batch for a
        # step after any reset (its shared offset_cpu goes back to 0); each slot's own
        # offset says whether its output is real yet.
        self.gen = LMGen(model.lm, support_out_of_sync=True, **model.gen_kwargs)
        with model._lock:
            model._extra_gens.add(self.gen)
            model._detach()
            mimi_stack = model.mimi.streaming(self.slots)
            gen_stack = self.gen.streaming(self.slots)
            self._mimi = model.mimi.get_streaming_state()
            self._gen = self.gen.get_streaming_state()
            self._lm = model.lm.get_streaming_state()
            # Mimi's decoding half gets its own mask: a slot whose tokens are not ready
            # yet (the acoustic delay is filling) must not advance its decoder.
            self._decode_states = [m._streaming_state for part in (model.mimi.upsample,
                                   model.mimi.decoder_transformer, model.mimi.decoder)
                                   if part is not None for m in part.modules()
                                   if isinstance(m, StreamingModule) and m._streaming_state is not None]
            gen_stack.close()
            mimi_stack.close()
        self._x = torch.zeros(self.slots, 1, model.frame_size, dtype=torch.float32)

    def _attach(self) -> None:
        self.model.mimi.set_streaming_state(self._mimi)
        self.gen.set_streaming_state(self._gen)
        self.model.lm.set_streaming_state(self._lm)

    def step(self, frames: dict[int, np.ndarray], reset: tuple[int, ...] | list[int] = ()
             ) -> dict[int, StepOutput]:
        """One model step for every slot in ``frames`` (slot -> input frame); others stand still.

        ``reset``: slots to return to a fresh session's state first (a session joined).
        """
        import torch

        m = self.model
        n = self.slots
        bad = [i for i in (*frames, *reset) if not 0 <= i < n]
        if bad:
            raise ValueError(f"slot {bad[0]} is not in 0..{n - 1}")
        x = self._x
        x.zero_()
        run = torch.zeros(n, dtype=torch.bool)
        for i, pcm in frames.items():
            x[i, 0] = torch.from_numpy(as_float_frame(pcm, m.frame_size))
            run[i] = True
        if not frames:
            return {}
        dev = m.device
        with m._lock, torch.no_grad():
            self._attach()
            try:
                if reset:
                    mask = torch.zeros(n, dtype=torch.bool)
                    mask[list(reset)] = True
                    mask = mask.to(dev)
                    m.mimi.reset_streaming(mask)
                    self.gen.reset_streaming(mask)
                run_d = run.to(dev)
                m.mimi.set_exec_mask(run_d)
                self.gen.set_exec_mask(run_d)
                codes = m.mimi.encode(x.to(dev))
                tokens = self.gen.step(codes)  # [n, 9, 1]; never None with support_out_of_sync
                ready = run_d & (self._gen[""].offsets > self.gen.max_delay)
                audio = None
                if bool(ready.any()):
                    for st in self._decode_states:
                        st.set_exec_mask(ready)
                    codes_out = torch.where(ready[:, None, None], tokens[:, 1:], torch.zeros_like(tokens[:, 1:]))
                    audio = m.mimi.decode(codes_out)[:, 0].float().cpu().numpy()
                ready_h = ready.cpu().numpy()
                text_h = tokens[:, 0, 0].cpu().numpy()
            finally:
                m._detach()
        out: dict[int, StepOutput] = {}
        for i in frames:
            if not ready_h[i]:
                out[i] = StepOutput(audio=m.silence())
                continue
            token = int(text_h[i])
            out[i] = StepOutput(audio=np.ascontiguousarray(audio[i], dtype=np.float32),
                                text=m.text_of(token), text_token=token)
        return out


# -- building and loading ------------------------------------------------------

def build_tiny(seed: int = 0, device: str = "cpu", **gen_kwargs) -> MoshiDuplex:
    """Random-weight tiny Mimi + LM running the real streaming loop (tests, CI)."""
    import torch

    loaders, _ = _require_moshi()
    torch.manual_seed(seed)
    mimi = loaders.get_mimi(None, mimi_config=tiny_mimi_config(), device=device, num_codebooks=8)
    lm = loaders.get_moshi_lm(None, lm_kwargs=tiny_lm_kwargs(), device=device, dtype=torch.float32)
    return MoshiDuplex(mimi, lm, name="moshi:tiny", **gen_kwargs)


def _local_checkpoint(directory: Path):
    """CheckpointInfo for a local directory laid out like the hub repository (no network)."""
    loaders, _ = _require_moshi()
    names = {"moshi_name": MOSHI_NAME, "mimi_name": MIMI_NAME, "tokenizer_name": TEXT_TOKENIZER_NAME}
    cfg_path = directory / "config.json"
    if cfg_path.is_file():
        raw = json.loads(cfg_path.read_text())
        names.update({k: raw[k] for k in names if k in raw})
    paths = {k: directory / v for k, v in names.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise WeightsNotFound(f"Moshi directory {directory} lacks {', '.join(missing)}")
    if cfg_path.is_file():
        return loaders.CheckpointInfo.from_hf_repo(
            str(directory), moshi_weights=paths["moshi_name"], mimi_weights=paths["mimi_name"],
            tokenizer=paths["tokenizer_name"], config_path=cfg_path)
    return loaders.CheckpointInfo(paths["moshi_name"], paths["mimi_name"], paths["tokenizer_name"])


def _hub_checkpoint(repo: str):
    loaders, _ = _require_moshi()
    try:
        from huggingface_hub import snapshot_download
        cached = Path(snapshot_download(repo, local_files_only=True))
        return _local_checkpoint(cached)
    except Exception:  # not (wholly) in the local cache: download if allowed
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        raise WeightsNotFound(f"Moshi weights '{repo}' are not in the Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        return loaders.CheckpointInfo.from_hf_repo(repo)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsNotFound(f"cannot get Moshi weights '{repo}': {first}") from None


def load_moshi(source: str = DEFAULT_REPO, *, device: str | None = None, dtype=None,
               **gen_kwargs) -> MoshiDuplex:
    """Moshi from a local directory or a hub repo id; WeightsNotFound when it is not there."""
    import torch

    _require_moshi()
    device = device or _default_device()
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    p = Path(source).expanduser()
    looks_local = source.startswith((".", "/", "~")) or p.exists() or source.count("/") != 1
    if looks_local:
        if not p.is_dir():
            raise WeightsNotFound(f"Moshi weights directory not found: {p}")
        info = _local_checkpoint(p)
    else:
        info = _hub_checkpoint(source)
    try:
        mimi = info.get_mimi(device=device)
        lm = info.get_moshi(device=device, dtype=dtype)
        tok = info.get_text_tokenizer() if Path(info.tokenizer).is_file() else None
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        text = " ".join(str(e).split())[:300] or type(e).__name__
        raise WeightsNotFound(f"cannot load Moshi weights from {source}: {text}") from None
    gen_defaults = dict(info.lm_gen_config or {})
    gen_defaults.update(gen_kwargs)
    allowed = {"temp", "temp_text", "top_k", "top_k_text", "use_sampling"}
    return MoshiDuplex(mimi, lm, text_tokenizer=tok, name=f"moshi:{source}",
                       **{k: v for k, v in gen_defaults.items() if k in allowed})
