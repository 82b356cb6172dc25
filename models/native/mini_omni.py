"""Mini-Omni (gpt-omni) rebuilt on transformers' Qwen2 + a Whisper audio encoder + SNAC.

The model reads the user's whole turn (Whisper features through an adapter
MLP), then decodes 8 streams in parallel: one text stream and 7 audio streams
whose tokens, after undoing the delay pattern, are one SNAC frame per step.

Vocabulary (one embedding table and one output head):

    [0, T)                    text, T = text_vocab + text_special (152000)
    [T + i*A, T + (i+1)*A)    audio layer i = 0..6, A = audio_vocab + audio_special (4160)

Within each block the first ``*_vocab`` ids are real tokens and the specials
follow: text eot, pad, input, answer, asr; audio eoa, pad, input, answer.

Delay pattern: audio layer i lags the text by i+1 steps, so SNAC frame k is
``[step k+1 layer 0, step k+2 layer 1, ..., step k+7 layer 6]``.

Batch parallel decoding (Mini-Omni's "A1A2 batch"): row 0's prompt ends with
the answer-audio marker and it speaks; row 1's ends with pad-audio and it only
writes text. Each step takes the 7 audio tokens from row 0 and the text token
from row 1, feeds that text token to both rows (row 1 gets pad audio), forces
text padding after end-of-text, and stops when audio layer 6 emits
end-of-audio.

Per step the 7 audio tokens map onto SNAC's 3 levels as
coarse = [l0], mid = [l1, l4], fine = [l2, l3, l5, l6]; special ids are masked
to 0 before SNAC (a random or undertrained model emits them).
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.native.base import DuplexModel, StepOutput
from models.weights import WeightsNotFound

CONVERTED_FORMAT = "voice-agent-mini-omni/1"
DEFAULT_REPO = "gpt-omni/mini-omni"
SNAC_REPO = "hubertsiuzdak/snac_24khz"

# hubertsiuzdak/snac_24khz config.json
SNAC_24KHZ: dict[str, Any] = {
    "sampling_rate": 24000, "encoder_dim": 48, "encoder_rates": [2, 4, 8, 8],
    "decoder_dim": 1024, "decoder_rates": [8, 8, 4, 2], "attn_window_size": None,
    "codebook_size": 4096, "codebook_dim": 8, "vq_strides": [4, 2, 1], "noise": True,
    "depthwise": True,
}

WHISPER_SAMPLE_RATE = 16000
WHISPER_HOP = 160
WHISPER_N_FFT = 400


@dataclass(frozen=True)
class MiniOmniConfig:
    # Qwen2 backbone (Qwen2-0.5B shape)
    hidden_size: int = 896
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    intermediate_size: int = 4864
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_positions: int = 2048
    # vocabulary layout
    text_vocab: int = 151936
    text_special: int = 64
    audio_vocab: int = 4096
    audio_special: int = 64
    audio_layers: int = 7
    # whisper encoder (whisper-small) and its adapter
    whisper_n_mels: int = 80
    whisper_n_ctx: int = 1500  # 30 s of 20 ms features
    whisper_dim: int = 768
    whisper_heads: int = 12
    whisper_layers: int = 12
    adapter_intermediate: int = 4864
    # SNAC decoder
    snac: dict = field(default_factory=lambda: dict(SNAC_24KHZ))

    # -- layout --------------------------------------------------------------
    @property
    def padded_text(self) -> int:
        return self.text_vocab + self.text_special

    @property
    def padded_audio(self) -> int:
        return self.audio_vocab + self.audio_special

    @property
    def vocab_size(self) -> int:
        return self.padded_text + self.audio_layers * self.padded_audio

    @property
    def eot(self) -> int:
        return self.text_vocab

    @property
    def pad_t(self) -> int:
        return self.text_vocab + 1

    @property
    def input_t(self) -> int:
        return self.text_vocab + 2

    @property
    def answer_t(self) -> int:
        return self.text_vocab + 3

    @property
    def eoa(self) -> int:
        return self.audio_vocab

    @property
    def pad_a(self) -> int:
        return self.audio_vocab + 1

    @property
    def input_a(self) -> int:
        return self.audio_vocab + 2

    @property
    def answer_a(self) -> int:
        return self.audio_vocab + 3

    def layershift(self, token, layer: int):
        """Layer-local audio id -> global vocabulary id."""
        return token + self.padded_text + layer * self.padded_audio

    @property
    def samples_per_step(self) -> int:
        """One step = one SNAC frame = the coarse stride in latent frames x hop."""
        hop = int(np.prod(self.snac["encoder_rates"]))
        return hop * int(self.snac["vq_strides"][0])

    @property
    def max_input_s(self) -> float:
        return self.whisper_n_ctx * 2 * WHISPER_HOP / WHISPER_SAMPLE_RATE

    def qwen2_config(self):
        from transformers import Qwen2Config
        return Qwen2Config(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=self.max_positions, rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            tie_word_embeddings=False, use_cache=True)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MiniOmniConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


FULL = MiniOmniConfig()
TINY = MiniOmniConfig(
    hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
    max_positions=1024, text_vocab=960, audio_vocab=256, whisper_n_ctx=250, whisper_dim=32,
    whisper_heads=2, whisper_layers=1, adapter_intermediate=128,
    snac=dict(SNAC_24KHZ, encoder_dim=8, decoder_dim=32, codebook_size=256),
)


def config_from_litgpt_yaml(path: Path, base: MiniOmniConfig = FULL) -> MiniOmniConfig:
    """The published ``model_config.yaml`` (litgpt Config) -> MiniOmniConfig."""
    import yaml

    c = yaml.safe_load(Path(path).read_text())
    if c.get("asr_adapter", "llamamlp") != "llamamlp":
        raise ValueError(f"unsupported asr_adapter {c.get('asr_adapter')!r} (only llamamlp)")
    text_special, audio_special = base.text_special, base.audio_special
    cfg = replace(
        base,
        hidden_size=c.get("n_embd", base.hidden_size),
        num_layers=c.get("n_layer", base.num_layers),
        num_heads=c.get("n_head", base.num_heads),
        num_kv_heads=c.get("n_query_groups", base.num_kv_heads),
        intermediate_size=c.get("intermediate_size", base.intermediate_size),
        adapter_intermediate=c.get("intermediate_size", base.adapter_intermediate),
        rope_theta=float(c.get("rope_base", base.rope_theta)),
        rms_norm_eps=float(c.get("norm_eps", base.rms_norm_eps)),
        max_positions=c.get("block_size", base.max_positions),
        text_vocab=c.get("text_vocab_size", base.padded_text) - text_special,
        audio_vocab=c.get("audio_vocab_size", base.padded_audio) - audio_special,
        whisper_dim=c.get("whisper_adapter_dim", base.whisper_dim),
    )
    padded = c.get("padded_vocab_size")
    if padded is not None and padded != cfg.vocab_size:
        raise ValueError(f"padded_vocab_size {padded} != layout {cfg.vocab_size}")
    return cfg


# -- Whisper front end ---------------------------------------------------------

def _whisper():
    try:
        import whisper.audio
        import whisper.model
        return whisper
    except Exception:  # not installed, or its import needs numba/tiktoken that are missing
        return None


def _hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mel = f / f_sp
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(n_mels: int = 80, sr: int = WHISPER_SAMPLE_RATE, n_fft: int = WHISPER_N_FFT) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels) (Slaney scale and norm): what Whisper ships."""
    fftfreqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, len(fftfreqs)))
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


def log_mel(audio_16k: np.ndarray, n_mels: int, n_frames: int):
    """Whisper's log-mel spectrogram of the audio padded/trimmed to ``n_frames`` frames."""
    import torch

    n_samples = n_frames * WHISPER_HOP
    a = np.asarray(audio_16k, dtype=np.float32).reshape(-1)[:n_samples]
    a = np.pad(a, (0, n_samples - len(a)))
    w = _whisper()
    if w is not None and n_mels in (80, 128):
        return w.audio.log_mel_spectrogram(torch.from_numpy(a), n_mels)
    x = torch.from_numpy(a)
    stft = torch.stft(x, WHISPER_N_FFT, WHISPER_HOP, window=torch.hann_window(WHISPER_N_FFT),
                      return_complex=True)
    mag = stft[..., :-1].abs() ** 2
    spec = torch.from_numpy(mel_filterbank(n_mels)) @ mag
    log_spec = torch.clamp(spec, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def _compat_audio_encoder(n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int):
    """whisper.model.AudioEncoder, same parameter names, for machines without openai-whisper."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class LayerNorm(nn.LayerNorm):
        # Normalise in fp32 whatever the weights' dtype (bf16 on a GPU), as whisper does.
        def forward(self, x):
            return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                                self.bias.float(), self.eps).type(x.dtype)

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.query = nn.Linear(n_state, n_state)
            self.key = nn.Linear(n_state, n_state, bias=False)
            self.value = nn.Linear(n_state, n_state)
            self.out = nn.Linear(n_state, n_state)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = (p(x).view(b, t, n_head, -1).transpose(1, 2) for p in (self.query, self.key, self.value))
            a = F.scaled_dot_product_attention(q, k, v)
            return self.out(a.transpose(1, 2).reshape(b, t, n_state))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attention()
            self.attn_ln = LayerNorm(n_state)
            self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
            self.mlp_ln = LayerNorm(n_state)

        def forward(self, x):
            x = x + self.attn(self.attn_ln(x))
            return x + self.mlp(self.mlp_ln(x))

    class AudioEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
            self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
            inc = np.log(10000) / (n_state // 2 - 1)
            inv = torch.exp(-inc * torch.arange(n_state // 2))
            st = torch.arange(n_ctx)[:, None] * inv[None, :]
            self.register_buffer("positional_embedding", torch.cat([torch.sin(st), torch.cos(st)], dim=1))
            self.blocks = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_post = LayerNorm(n_state)

        def forward(self, x):
            x = F.gelu(self.conv1(x))
            x = F.gelu(self.conv2(x)).permute(0, 2, 1)
            x = (x + self.positional_embedding).to(x.dtype)
            for block in self.blocks:
                x = block(x)
            return self.ln_post(x)

    return AudioEncoder()


def build_audio_encoder(cfg: MiniOmniConfig, prefer_whisper: bool = True):
    w = _whisper() if prefer_whisper else None
    args = (cfg.whisper_n_mels, cfg.whisper_n_ctx, cfg.whisper_dim, cfg.whisper_heads, cfg.whisper_layers)
    if w is not None:
        return w.model.AudioEncoder(*args)
    return _compat_audio_encoder(*args)


# -- the network -----------------------------------------------------------------

def _build_net(cfg: MiniOmniConfig):
    """nn.Module with ``lm`` (Qwen2ForCausalLM) and ``adapter`` (whisper features -> LM width)."""
    import torch
    from torch import nn
    from transformers import Qwen2ForCausalLM

    class Adapter(nn.Module):  # litgpt whisperMLP (LLaMA MLP, no bias)
        def __init__(self):
            super().__init__()
            self.gate_proj = nn.Linear(cfg.whisper_dim, cfg.adapter_intermediate, bias=False)
            self.up_proj = nn.Linear(cfg.whisper_dim, cfg.adapter_intermediate, bias=False)
            self.down_proj = nn.Linear(cfg.adapter_intermediate, cfg.hidden_size, bias=False)

        def forward(self, x):
            return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            qc = cfg.qwen2_config()
            qc._attn_implementation = "sdpa"
            self.lm = Qwen2ForCausalLM(qc)
            self.adapter = Adapter()

    return Net()


# -- checkpoint conversion ---------------------------------------------------------

def convert_state_dict(sd: dict, cfg: MiniOmniConfig) -> dict:
    """litgpt (Mini-Omni ``lit_model.pth``) state dict -> ours (``lm.*`` Qwen2 names, ``adapter.*``).

    litgpt fuses q/k/v in one matrix, interleaved per KV group: for each of the
    ``num_kv_heads`` groups, ``num_heads // num_kv_heads`` query heads, then one
    key head, then one value head.
    """
    hs = cfg.hidden_size // cfg.num_heads
    groups, q_per_kv = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
    out: dict = {}
    simple = {
        "transformer.wte.weight": "lm.model.embed_tokens.weight",
        "transformer.ln_f.weight": "lm.model.norm.weight",
        "lm_head.weight": "lm.lm_head.weight",
        "whisper_adapter.fc_1.weight": "adapter.gate_proj.weight",
        "whisper_adapter.fc_2.weight": "adapter.up_proj.weight",
        "whisper_adapter.proj.weight": "adapter.down_proj.weight",
    }
    per_layer = {
        "norm_1.weight": "input_layernorm.weight",
        "norm_2.weight": "post_attention_layernorm.weight",
        "attn.proj.weight": "self_attn.o_proj.weight",
        "mlp.fc_1.weight": "mlp.gate_proj.weight",
        "mlp.fc_2.weight": "mlp.up_proj.weight",
        "mlp.proj.weight": "mlp.down_proj.weight",
    }
    for key, value in sd.items():
        k = key
        for prefix in ("_forward_module.", "module."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if k in simple:
            out[simple[k]] = value
            continue
        if k.startswith(("transformer.post_adapter", "post_adapter")):
            continue  # Mini-Omni runs with post_adapter = False
        parts = k.split(".")
        if len(parts) >= 4 and parts[0] == "transformer" and parts[1] == "h":
            i, rest = int(parts[2]), ".".join(parts[3:])
            base = f"lm.model.layers.{i}."
            if rest in per_layer:
                out[base + per_layer[rest]] = value
                continue
            if rest in ("attn.attn.weight", "attn.attn.bias"):
                kind = rest.rsplit(".", 1)[1]
                fused = value.reshape(groups, q_per_kv + 2, hs, *value.shape[1:])
                q = fused[:, :q_per_kv].reshape(cfg.num_heads * hs, *value.shape[1:])
                kk = fused[:, q_per_kv].reshape(groups * hs, *value.shape[1:])
                v = fused[:, q_per_kv + 1].reshape(groups * hs, *value.shape[1:])
                out[base + f"self_attn.q_proj.{kind}"] = q.contiguous()
                out[base + f"self_attn.k_proj.{kind}"] = kk.contiguous()
                out[base + f"self_attn.v_proj.{kind}"] = v.contiguous()
                continue
        raise ValueError(f"unexpected key in the Mini-Omni checkpoint: {key}")
    return out


def to_litgpt_state_dict(sd: dict, cfg: MiniOmniConfig) -> dict:
    """Inverse of :func:`convert_state_dict` (re-fuses q/k/v per KV group)."""
    import torch

    hs = cfg.hidden_size // cfg.num_heads
    groups, q_per_kv = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads
    simple = {
        "lm.model.embed_tokens.weight": "transformer.wte.weight",
        "lm.model.norm.weight": "transformer.ln_f.weight",
        "lm.lm_head.weight": "lm_head.weight",
        "adapter.gate_proj.weight": "whisper_adapter.fc_1.weight",
        "adapter.up_proj.weight": "whisper_adapter.fc_2.weight",
        "adapter.down_proj.weight": "whisper_adapter.proj.weight",
    }
    per_layer = {
        "input_layernorm.weight": "norm_1.weight",
        "post_attention_layernorm.weight": "norm_2.weight",
        "self_attn.o_proj.weight": "attn.proj.weight",
        "mlp.gate_proj.weight": "mlp.fc_1.weight",
        "mlp.up_proj.weight": "mlp.fc_2.weight",
        "mlp.down_proj.weight": "mlp.proj.weight",
    }
    out: dict = {}
    for k, value in sd.items():
        if k in simple:
            out[simple[k]] = value
            continue
        parts = k.split(".")
        i, rest = int(parts[3]), ".".join(parts[4:])
        if rest in per_layer:
            out[f"transformer.h.{i}.{per_layer[rest]}"] = value
        elif rest.startswith("self_attn.q_proj."):
            kind = rest.rsplit(".", 1)[1]
            base = f"lm.model.layers.{i}.self_attn."
            q = sd[base + f"q_proj.{kind}"].reshape(groups, q_per_kv, hs, *value.shape[1:])
            kk = sd[base + f"k_proj.{kind}"].reshape(groups, 1, hs, *value.shape[1:])
            v = sd[base + f"v_proj.{kind}"].reshape(groups, 1, hs, *value.shape[1:])
            fused = torch.cat([q, kk, v], dim=1).reshape(-1, *value.shape[1:])
            out[f"transformer.h.{i}.attn.attn.{kind}"] = fused.contiguous()
        elif rest.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
            continue
        else:
            raise ValueError(f"unexpected key: {k}")
    return out


def convert_checkpoint(src_dir: str | Path, dst_dir: str | Path) -> Path:
    """Published Mini-Omni checkpoint directory -> our layout (config.json + model.safetensors).

    Copies the text tokenizer and the Whisper checkpoint (``small.pt``) when present.
    """
    import torch
    from safetensors.torch import save_file

    src, dst = Path(src_dir), Path(dst_dir)
    weights = src / "lit_model.pth"
    if not weights.is_file():
        raise WeightsNotFound(f"Mini-Omni checkpoint not found: {weights}")
    cfg = config_from_litgpt_yaml(src / "model_config.yaml") if (src / "model_config.yaml").is_file() else FULL
    sd = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    ours = convert_state_dict(sd, cfg)
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ours.items()}, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(json.dumps({"format": CONVERTED_FORMAT, **cfg.to_dict()}, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json", "small.pt"):
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)
    if (src / "snac").is_dir() and not (dst / "snac").exists():
        shutil.copytree(src / "snac", dst / "snac")
    return dst


# -- token bookkeeping -------------------------------------------------------------

def frames_from_steps(steps: np.ndarray, n_layers: int = 7) -> np.ndarray:
    """Undo the delay pattern: per-step audio tokens [n_steps, 7] -> SNAC frames [n_frames, 7].

    Frame k takes layer i from step k + i + 1.
    """
    steps = np.asarray(steps).reshape(-1, n_layers)
    n = max(0, len(steps) - n_layers)
    out = np.empty((n, n_layers), dtype=np.int64)
    for i in range(n_layers):
        out[:, i] = steps[i + 1:i + 1 + n, i]
    return out


def snac_codes(frames: np.ndarray, codebook_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SNAC frames [n, 7] -> (coarse [n], mid [2n], fine [4n]); ids >= codebook_size masked to 0."""
    f = np.asarray(frames, dtype=np.int64).reshape(-1, 7)
    f = np.where((f >= codebook_size) | (f < 0), 0, f)
    coarse = f[:, 0]
    mid = f[:, [1, 4]].reshape(-1)
    fine = f[:, [2, 3, 5, 6]].reshape(-1)
    return coarse, mid, fine


class _TextStream:
    """Incremental detokenizer: emits only complete new text."""

    def __init__(self, tokenizer, text_vocab: int) -> None:
        self.tok, self.text_vocab = tokenizer, text_vocab
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token: int) -> str:
        if self.tok is None or token >= self.text_vocab or token < 0:
            return ""
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.emitted):
            return ""
        new, self.emitted = text[len(self.emitted):], text
        return new


@dataclass
class MiniOmniState:
    turns: int = 0
    last_text: str = ""
    cancelled: bool = False


class MiniOmni(DuplexModel):
    """Half-duplex: ``respond`` answers a whole user turn."""

    full_duplex = False

    def __init__(self, cfg: MiniOmniConfig, net, encoder, snac, *, tokenizer=None,
                 name: str = "mini-omni", temperature: float = 0.0, top_k: int = 1,
                 max_steps: int = 1500, snac_stride: int = 4, snac_context: int = 1,
                 seed: int | None = None) -> None:
        import torch

        self.cfg = cfg
        self.net = net.eval()
        self.encoder = encoder.eval()
        self.snac = snac.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.temperature, self.top_k = temperature, top_k
        self.max_steps = max_steps
        self.snac_stride, self.snac_context = snac_stride, snac_context
        self.sample_rate = int(cfg.snac["sampling_rate"])
        self.input_rate = WHISPER_SAMPLE_RATE
        self.frame_size = cfg.samples_per_step
        p = next(net.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.snac_device = next(snac.parameters()).device
        self._lock = threading.Lock()
        self._gen = torch.Generator(device=self.device)
        if seed is not None:
            self._gen.manual_seed(seed)

    @property
    def max_input_s(self) -> float:
        return self.cfg.max_input_s

    # -- state ---------------------------------------------------------------
    def new_state(self) -> MiniOmniState:
        return MiniOmniState()

    def reset(self, state: MiniOmniState) -> None:
        state.turns, state.last_text, state.cancelled = 0, "", False

    # -- pieces (public for tests and the benchmark) -------------------------
    def audio_features(self, user_audio_16k: np.ndarray):
        """Whisper features [T, whisper_dim] of the turn (at most ``max_input_s``)."""
        import torch

        cfg = self.cfg
        n_frames = 2 * cfg.whisper_n_ctx
        mel = log_mel(user_audio_16k, cfg.whisper_n_mels, n_frames)
        enc_p = next(self.encoder.parameters())
        with torch.no_grad():
            feats = self.encoder(mel[None].to(enc_p.device, enc_p.dtype))[0]
        duration_ms = 1000.0 * len(user_audio_16k) / WHISPER_SAMPLE_RATE
        n = min(int(duration_ms / 20) + 1, cfg.whisper_n_ctx)
        return feats[:n]

    def prompt_ids(self, n_feats: int):
        """[2, 8, n_feats + 3]: row 0 answers with audio, row 1 with text only."""
        import torch

        cfg = self.cfg
        rows = []
        for last_a in (cfg.answer_a, cfg.pad_a):
            streams = [[cfg.layershift(t, i) for t in [cfg.input_a] + [cfg.pad_a] * n_feats + [cfg.eoa, last_a]]
                       for i in range(cfg.audio_layers)]
            streams.append([cfg.input_t] + [cfg.pad_t] * n_feats + [cfg.eot, cfg.answer_t])
            rows.append(streams)
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def embed(self, ids, feats=None):
        """Mean of the 8 streams' embeddings; adapted features overwrite audio rows 1..T."""
        wte = self.net.lm.model.embed_tokens
        x = wte(ids)  # [B, 8, L, H]
        if feats is not None:
            a = self.net.adapter(feats.to(x.dtype))  # [T, H]
            x = x.clone()
            x[:, :self.cfg.audio_layers, 1:1 + a.shape[0]] = a
        return x.mean(dim=1)

    def next_ids(self, audio_tokens, text_token: int):
        """Inputs [2, 8, 1] for the next step from row 0's audio and row 1's text."""
        import torch

        cfg = self.cfg
        layers = torch.arange(cfg.audio_layers, device=self.device)
        row0 = cfg.layershift(audio_tokens.to(self.device), layers)
        row1 = cfg.layershift(torch.full_like(row0, cfg.pad_a), layers)
        t = torch.full((1,), text_token, dtype=torch.long, device=self.device)
        return torch.stack([torch.cat([row0, t]), torch.cat([row1, t])])[:, :, None]

    def split_logits(self, logits):
        """[B, V] -> text [B, padded_text], audio [B, 7, padded_audio]."""
        cfg = self.cfg
        text = logits[:, :cfg.padded_text]
        audio = logits[:, cfg.padded_text:].reshape(logits.shape[0], cfg.audio_layers, cfg.padded_audio)
        return text, audio

    def choose(self, logits):
        import torch

        if self.temperature <= 0 or self.top_k == 1:
            return logits.argmax(dim=-1)
        lg = logits.float() / self.temperature
        if self.top_k and self.top_k > 0:
            v, _ = torch.topk(lg, min(self.top_k, lg.shape[-1]))
            lg = lg.masked_fill(lg < v[..., -1:], float("-inf"))
        probs = torch.softmax(lg, dim=-1)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=self._gen).reshape(probs.shape[:-1])

    def pick(self, logits) -> tuple[Any, int]:
        """Parallel decoding: audio tokens from row 0, the text token from row 1."""
        text_logits, audio_logits = self.split_logits(logits)
        return self.choose(audio_logits[0]), int(self.choose(text_logits[1:2])[0])

    def _forward_last(self, embeds, cache):
        with self._lock:
            out = self.net.lm(inputs_embeds=embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def generate(self, feats, max_steps: int | None = None, state: MiniOmniState | None = None):
        """Yield (audio tokens [7] layer-local, text token) per step, KV-cached, batch 2."""
        import torch
        from transformers import DynamicCache

        cfg = self.cfg
        max_steps = self.max_steps if max_steps is None else max_steps
        limit = cfg.max_positions - feats.shape[0] - 3
        max_steps = max(0, min(max_steps, limit))
        cache = DynamicCache()
        text_end = False
        with torch.no_grad():
            logits = self._forward_last(self.embed(self.prompt_ids(feats.shape[0]), feats), cache)
            for _ in range(max_steps):
                audio, text = self.pick(logits)
                if text_end:
                    text = cfg.pad_t
                if int(audio[-1]) == cfg.eoa:
                    return
                if text == cfg.eot:
                    text_end = True
                yield audio, text
                if state is not None and state.cancelled:
                    return
                logits = self._forward_last(self.embed(self.next_ids(audio, text)), cache)

    def decode_frames(self, frames: np.ndarray):
        """SNAC frames [n, 7] -> float32 audio [n * frame_size]."""
        import torch

        coarse, mid, fine = snac_codes(frames, int(self.cfg.snac["codebook_size"]))
        codes = [torch.from_numpy(c)[None].to(self.snac_device) for c in (coarse, mid, fine)]
        with torch.no_grad(), self._lock:
            audio = self.snac.decode(codes)
        return audio[0, 0].float().cpu().numpy().astype(np.float32, copy=False)

    # -- the turn ------------------------------------------------------------------
    def respond(self, state: MiniOmniState, user_audio_16k: np.ndarray,
                max_steps: int | None = None) -> Iterator[StepOutput]:
        """One StepOutput per LM step (text); audio arrives every ``snac_stride`` frames."""
        state.cancelled = False
        feats = self.audio_features(np.asarray(user_audio_16k, dtype=np.float32))
        yield from self.stream_reply(state, self.generate(feats, max_steps, state))

    def stream_reply(self, state: MiniOmniState, tokens) -> Iterator[StepOutput]:
        """StepOutputs from a stream of (audio tokens [7], text token): text, SNAC audio, the end."""
        text_stream = _TextStream(self.tokenizer, self.cfg.text_vocab)
        steps: list[np.ndarray] = []
        done_frames = 0
        pieces: list[str] = []
        for audio_tok, text_tok in tokens:
            steps.append(audio_tok.cpu().numpy())
            text = text_stream.push(text_tok)
            if text:
                pieces.append(text)
            audio = np.zeros(0, dtype=np.float32)
            ready = max(0, len(steps) - self.cfg.audio_layers)
            if ready - done_frames >= self.snac_stride:
                audio = self._decode_range(steps, done_frames, ready)
                done_frames = ready
            yield StepOutput(audio=audio, text=text, text_token=text_tok)
        ready = max(0, len(steps) - self.cfg.audio_layers)
        tail = self._decode_range(steps, done_frames, ready) if ready > done_frames else np.zeros(0, np.float32)
        state.turns += 1
        state.last_text = "".join(pieces)
        yield StepOutput(audio=tail, end=True)

    def _decode_range(self, steps: list[np.ndarray], start: int, end: int) -> np.ndarray:
        """Audio of frames [start, end), decoded with up to ``snac_context`` frames of left context."""
        frames = frames_from_steps(np.stack(steps), self.cfg.audio_layers)
        lo = max(0, start - self.snac_context)
        audio = self.decode_frames(frames[lo:end])
        return audio[(start - lo) * self.frame_size:]


    def batch_engine(self, slots: int) -> "MiniOmniBatch":
        """Concurrent replies decoded in one batch (see models.native.batching.BatchedReplies)."""
        return MiniOmniBatch(self, slots)


class _Reply:
    """One reply in a ``MiniOmniBatch``: its prompt, its progress, its rows' padding, its output queue."""

    def __init__(self, feats, max_steps: int, state: MiniOmniState) -> None:
        import queue

        self.feats, self.max_steps, self.state = feats, max_steps, state
        self.out: queue.Queue = queue.Queue()  # (audio tokens, text token) ..., then None or an exception
        self.logits = None
        self.steps = 0
        self.text_end = False
        self.pad = 0  # left padding of this reply's rows in the batch's KV cache
        self.done = False
        self.gone = False  # its reader stopped reading

    def finish(self, item=None) -> None:
        if not self.done:
            self.done = True
            self.out.put(item)


class MiniOmniBatch:
    """Up to ``slots`` replies decoded together: one LM call per step for all of them.

    Each reply is Mini-Omni's batch-2 parallel decoding (row 0 speaks, row 1 writes
    the text); the batch holds two rows per reply in one KV cache, left-padded to
    a common length, with an attention mask over the padding and each row's own
    positions, as Hugging Face batches prompts of different lengths. A reply
    joins after its prefill, which runs alone (its prompt length is its own), and
    leaves when it ends or is cancelled; its tokens are what ``generate`` gives
    alone (greedy), whatever else is in the batch. Replies beyond ``slots`` wait.
    """

    def __init__(self, model: MiniOmni, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a batch needs at least one slot, got {slots}")
        self.model = model
        self.slots = int(slots)
        self._waiting: list[_Reply] = []
        self._active: list[_Reply] = []
        self._cache = None
        self._lock = threading.Lock()  # the waiting list (added to from the readers' threads)
        self.last_joined = 0  # replies prefilled in the last step

    def add(self, feats, max_steps: int | None, state: MiniOmniState) -> _Reply:
        cfg = self.model.cfg
        max_steps = self.model.max_steps if max_steps is None else max_steps
        max_steps = max(0, min(max_steps, cfg.max_positions - feats.shape[0] - 3))
        reply = _Reply(feats, max_steps, state)
        with self._lock:
            self._waiting.append(reply)
        return reply

    def pending(self) -> int:
        """Replies waiting or decoding."""
        with self._lock:
            return len(self._waiting) + len(self._active)

    def active(self) -> int:
        return len(self._active)

    # -- the KV cache of the batch ---------------------------------------------------
    @staticmethod
    def _pad_left(t, n: int):
        import torch

        if n <= 0:
            return t
        return torch.cat([t.new_zeros(*t.shape[:2], n, t.shape[3]), t], dim=2)

    def _join(self, reply: _Reply, cache) -> None:
        if not self._active:
            self._cache, reply.pad = cache, 0
            self._active.append(reply)
            return
        import torch

        old = self._cache.get_seq_length()
        new = cache.get_seq_length()
        length = max(old, new)
        for r in self._active:
            r.pad += length - old
        reply.pad = length - new
        for mine, theirs in zip(self._cache.layers, cache.layers):
            mine.keys = torch.cat([self._pad_left(mine.keys, length - old),
                                   self._pad_left(theirs.keys, length - new)], dim=0)
            mine.values = torch.cat([self._pad_left(mine.values, length - old),
                                     self._pad_left(theirs.values, length - new)], dim=0)
        self._active.append(reply)

    def _drop_finished(self) -> None:
        import torch

        keep = [i for i, r in enumerate(self._active) if not r.done]
        if len(keep) == len(self._active):
            return
        self._active = [self._active[i] for i in keep]
        if not keep:
            self._cache = None
            return
        rows = torch.tensor([2 * i + j for i in keep for j in (0, 1)], dtype=torch.long,
                            device=self.model.device)
        trim = min(r.pad for r in self._active)  # columns that are padding for every row left
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, rows)[:, :, trim:]
            layer.values = layer.values.index_select(0, rows)[:, :, trim:]
        for r in self._active:
            r.pad -= trim

    # -- one step --------------------------------------------------------------------
    def step(self) -> int:
        """Admit waiting replies (prefill each alone), then one decoding step for every active reply.

        Returns how many replies the batched LM call carried (0: none was needed).
        """
        import torch
        from transformers import DynamicCache

        m, cfg = self.model, self.model.cfg
        with self._lock:
            room = self.slots - len(self._active)
            joining, self._waiting = self._waiting[:max(0, room)], self._waiting[max(0, room):]
        with torch.no_grad():
            for reply in joining:
                if reply.gone or reply.state.cancelled:
                    reply.finish()
                    continue
                cache = DynamicCache()
                reply.logits = m._forward_last(m.embed(m.prompt_ids(reply.feats.shape[0]), reply.feats), cache)
                reply.feats = None
                self._join(reply, cache)
            self.last_joined = len(joining)
            nxt = []
            for r in self._active:  # generate()'s rules, reply by reply
                if r.gone or r.steps >= r.max_steps:
                    r.finish()
                    continue
                audio, text = m.pick(r.logits)
                if r.text_end:
                    text = cfg.pad_t
                if int(audio[-1]) == cfg.eoa:
                    r.finish()
                    continue
                if text == cfg.eot:
                    r.text_end = True
                r.out.put((audio, text))
                r.steps += 1
                if r.state.cancelled or r.steps >= r.max_steps:
                    r.finish()
                    continue
                nxt.append(m.next_ids(audio, text))
            self._drop_finished()
            if not self._active:
                return 0
            length = self._cache.get_seq_length()
            n = 2 * len(self._active)
            mask = torch.ones(n, length + 1, dtype=torch.long, device=m.device)
            pos = torch.empty(n, 1, dtype=torch.long, device=m.device)
            for i, r in enumerate(self._active):
                mask[2 * i:2 * i + 2, :r.pad] = 0
                pos[2 * i:2 * i + 2, 0] = length - r.pad
            with m._lock:
                out = m.net.lm(inputs_embeds=m.embed(torch.cat(nxt, dim=0)), attention_mask=mask,
                               position_ids=pos, past_key_values=self._cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1]
            for i, r in enumerate(self._active):
                r.logits = logits[2 * i:2 * i + 2]
        return len(self._active)

    def fail(self, error: BaseException) -> None:
        """A step failed: every reply ends with the error."""
        with self._lock:
            replies, self._waiting = self._waiting + self._active, []
        self._active, self._cache = [], None
        for r in replies:
            r.finish(error)


# -- building and loading ------------------------------------------------------------

def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _require(pkg: str, pip_name: str):
    try:
        return __import__(pkg)
    except ImportError:
        raise WeightsNotFound(f"the Mini-Omni engine needs '{pip_name}' (pip install {pip_name})") from None


def build(cfg: MiniOmniConfig, *, device: str = "cpu", dtype=None, seed: int = 0,
          prefer_whisper: bool = True, **kwargs) -> MiniOmni:
    """Random weights of the given shape (tests, benchmarks)."""
    import torch

    _require("transformers", "transformers")
    snac_mod = _require("snac", "snac==1.2.1")
    dtype = dtype or torch.float32
    torch.manual_seed(seed)
    with torch.device(device):  # initialise where the weights will live (full size on a GPU)
        net = _build_net(cfg).to(dtype=dtype)
        encoder = build_audio_encoder(cfg, prefer_whisper).to(dtype=dtype)
        snac = snac_mod.SNAC(**cfg.snac)
    return MiniOmni(cfg, net, encoder, snac, seed=seed, **kwargs)


def build_tiny(seed: int = 0, **kwargs) -> MiniOmni:
    # Random weights never emit end-of-audio: cap replies at ~5 s (60 SNAC frames).
    kwargs.setdefault("max_steps", 60)
    m = build(TINY, seed=seed, **kwargs)
    m.name = "mini-omni:tiny"
    return m


def _load_whisper_encoder(path: Path, cfg: MiniOmniConfig):
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    dims = ckpt["dims"]
    cfg2 = replace(cfg, whisper_n_mels=dims["n_mels"], whisper_n_ctx=dims["n_audio_ctx"],
                   whisper_dim=dims["n_audio_state"], whisper_heads=dims["n_audio_head"],
                   whisper_layers=dims["n_audio_layer"])
    enc = build_audio_encoder(cfg2)
    enc_sd = {k[len("encoder."):]: v for k, v in ckpt["model_state_dict"].items() if k.startswith("encoder.")}
    enc.load_state_dict(enc_sd)
    return enc, cfg2


def _load_snac(directory: Path | None):
    snac_mod = _require("snac", "snac==1.2.1")
    import torch

    candidates = [directory / "snac", directory / "snac_24khz"] if directory else []
    try:
        from huggingface_hub import snapshot_download
        candidates.append(Path(snapshot_download(SNAC_REPO, local_files_only=True)))
    except Exception:
        pass
    for d in candidates:
        if (d / "config.json").is_file() and (d / "pytorch_model.bin").is_file():
            snac_cfg = dict(SNAC_24KHZ, **json.loads((d / "config.json").read_text()))
            model = snac_mod.SNAC(**snac_cfg)
            model.load_state_dict(torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True))
            return model, snac_cfg
    raise WeightsNotFound(f"SNAC 24 kHz weights not found: put {SNAC_REPO} (config.json, pytorch_model.bin) "
                          f"in {directory / 'snac' if directory else '<model dir>/snac'}")


def load_mini_omni(source: str, *, device: str | None = None, dtype=None, **kwargs) -> MiniOmni:
    """Mini-Omni from a local directory: ours (config.json + model.safetensors) or the published
    layout (lit_model.pth + model_config.yaml, converted in memory), plus ``small.pt`` (Whisper
    small), ``tokenizer.json`` and ``snac/``. A repo id is looked up in the Hugging Face cache only.
    """
    import torch

    _require("transformers", "transformers")
    directory = Path(source).expanduser()
    if not directory.is_dir() and source.count("/") == 1 and not source.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download
            directory = Path(snapshot_download(source, local_files_only=True))
        except Exception:
            raise WeightsNotFound(f"Mini-Omni weights '{source}' are not in the Hugging Face cache: "
                                  f"download them and pass the directory") from None
    if not directory.is_dir():
        raise WeightsNotFound(f"Mini-Omni weights directory not found: {directory}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    ours, lit = directory / "model.safetensors", directory / "lit_model.pth"
    try:
        if ours.is_file():
            from safetensors.torch import load_file
            raw = json.loads((directory / "config.json").read_text())
            cfg = MiniOmniConfig.from_dict(raw)
            sd = load_file(str(ours))
        elif lit.is_file():
            yaml_path = directory / "model_config.yaml"
            cfg = config_from_litgpt_yaml(yaml_path) if yaml_path.is_file() else FULL
            sd = convert_state_dict(torch.load(lit, map_location="cpu", weights_only=True), cfg)
        else:
            raise WeightsNotFound(f"no model.safetensors or lit_model.pth in {directory}")
        whisper_ckpt = directory / "small.pt"
        if not whisper_ckpt.is_file():
            raise WeightsNotFound(f"Whisper small checkpoint not found: {whisper_ckpt}")
        encoder, cfg = _load_whisper_encoder(whisper_ckpt, cfg)
        snac, snac_cfg = _load_snac(directory)
        cfg = replace(cfg, snac=snac_cfg)
        net = _build_net(cfg)
        net.load_state_dict(sd, strict=True)
    except WeightsNotFound:
        raise
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise WeightsNotFound(f"cannot load Mini-Omni from {directory}: {_one_line(e)}") from None
    tokenizer = None
    if (directory / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    net = net.to(device=device, dtype=dtype)
    encoder = encoder.to(device=device, dtype=dtype)
    snac = snac.to(device)
    return MiniOmni(cfg, net, encoder, snac, tokenizer=tokenizer, name=f"mini-omni:{source}", **kwargs)
