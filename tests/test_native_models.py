"""Native speech-to-speech models on CPU with tiny random weights (no download, no GPU).

* Moshi: the real Mimi + LMGen streaming loop, frame by frame, sessions kept apart.
* Mini-Omni: the KV-cached batch-2 loop against a slow reference that recomputes
  the whole sequence each step; the delay pattern and SNAC level mapping against
  Mini-Omni's own reconstruction; the litgpt checkpoint converter; special-id masking.
* The pipecat processor around both, and the GPU benchmark's logic (--tiny).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

os.environ.setdefault("NO_TORCH_COMPILE", "1")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)

pytest.importorskip("moshi")
pytest.importorskip("snac")
pytest.importorskip("transformers")

from models.native import StepOutput, load_native  # noqa: E402
from models.native import mini_omni as MO  # noqa: E402
from models.weights import WeightsNotFound  # noqa: E402


def _noise(n: int, seed: int = 0, scale: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


# -- Moshi ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_moshi():
    return load_native("moshi:tiny", use_sampling=False)


def test_moshi_tiny_streams_frames(tiny_moshi):
    m = tiny_moshi
    assert m.full_duplex and m.sample_rate == 24000 and m.frame_size == 1920 and m.input_rate == 24000
    state = m.new_state()
    n = 12
    outs, times = [], []
    for i in range(n):
        t = time.perf_counter()
        outs.append(m.step(state, _noise(m.frame_size, i)))
        times.append(time.perf_counter() - t)
    for o in outs:
        assert isinstance(o, StepOutput)
        assert o.audio.dtype == np.float32 and o.audio.shape == (m.frame_size,)
        assert np.all(np.isfinite(o.audio))
    assert outs[0].text_token is None and not outs[0].audio.any()  # the delay is filling
    assert all(isinstance(o.text_token, int) for o in outs[1:])
    assert any(o.audio.any() for o in outs[1:])
    print(f"\nmoshi:tiny per-step {1000 * np.median(times[2:]):.1f} ms (frame {m.frame_ms:.0f} ms)")


def test_moshi_sessions_are_independent_and_reset(tiny_moshi):
    m = tiny_moshi
    frames = [_noise(m.frame_size, 100 + i) for i in range(5)]
    a, b = m.new_state(), m.new_state()
    out_a = [m.step(a, f) for f in frames]
    out_b = []
    for f in frames:  # interleave with the other session: b must not see a's history
        out_b.append(m.step(b, f))
        m.step(a, _noise(m.frame_size, 999))
    assert [o.text_token for o in out_a] == [o.text_token for o in out_b]
    for x, y in zip(out_a, out_b):
        np.testing.assert_allclose(x.audio, y.audio, atol=1e-5)
    m.reset(a)
    again = [m.step(a, f) for f in frames]
    assert [o.text_token for o in again] == [o.text_token for o in out_a]


def test_moshi_missing_weights_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFound, match="HF_HUB_OFFLINE"):
        load_native("moshi:nobody/not-a-cached-repo")
    with pytest.raises(WeightsNotFound) as e:
        load_native(f"moshi:{tmp_path / 'nowhere'}")
    assert "\n" not in str(e.value)
    (tmp_path / "partial").mkdir()
    with pytest.raises(WeightsNotFound, match="lacks"):
        load_native(f"moshi:{tmp_path / 'partial'}")


def test_native_device_is_honoured_and_checked():
    import torch

    from voice.settings import load_settings

    m = load_native("moshi:tiny", device="cpu", use_sampling=False)
    assert m.device == torch.device("cpu")
    if not torch.cuda.is_available():  # the CPU build on this machine and in CI
        with pytest.raises(ValueError) as e:
            load_native("moshi:tiny", device="cuda")
        assert "sees no CUDA GPU" in str(e.value) and "\n" not in str(e.value)
    assert load_settings(native={"device": "cuda:1"}).native.device == "cuda:1"
    with pytest.raises(ValueError):
        load_settings(native={"device": "gpu"})


# -- Mini-Omni: pieces ----------------------------------------------------------------

def test_layout_formula():
    c = MO.FULL
    assert (c.padded_text, c.padded_audio, c.vocab_size) == (152000, 4160, 181120)
    assert (c.eot, c.pad_t, c.input_t, c.answer_t) == (151936, 151937, 151938, 151939)
    assert (c.eoa, c.pad_a, c.input_a, c.answer_a) == (4096, 4097, 4098, 4099)
    assert c.layershift(4097, 3) == 4097 + 152000 + 3 * 4160
    assert c.samples_per_step == 2048 and c.max_input_s == 30.0
    t = MO.TINY
    assert t.vocab_size == t.padded_text + 7 * t.padded_audio
    assert t.snac["codebook_size"] == t.audio_vocab


def _reference_reconstruct(steps: list[list[int]]):
    """Mini-Omni's reconscruct_snac + reconstruct_tensors (utils/snac_utils.py), rewritten plainly."""
    layers = [[s[i] for s in steps] for i in range(7)]
    layers = [layers[i][i + 1:] for i in range(7)]
    flat = []
    for k in range(len(layers[6])):
        flat.append("#")
        flat += [layers[j][k] for j in range(7)]
    t1, t2, t3 = [], [], []
    for i in range(0, len(flat), 8):
        t1.append(flat[i + 1])
        t2.append(flat[i + 2])
        t3.append(flat[i + 3])
        t3.append(flat[i + 4])
        t2.append(flat[i + 5])
        t3.append(flat[i + 6])
        t3.append(flat[i + 7])
    return t1, t2, t3


def test_delay_pattern_and_snac_levels_match_reference():
    rng = np.random.default_rng(1)
    steps = rng.integers(0, 4096, size=(19, 7))
    frames = MO.frames_from_steps(steps)
    assert frames.shape == (12, 7)
    for k in range(12):  # layer i of frame k comes from step k + i + 1
        assert list(frames[k]) == [steps[k + i + 1, i] for i in range(7)]
    coarse, mid, fine = MO.snac_codes(frames, 4096)
    r1, r2, r3 = _reference_reconstruct(steps.tolist())
    assert coarse.tolist() == r1 and mid.tolist() == r2 and fine.tolist() == r3
    assert (len(coarse), len(mid), len(fine)) == (12, 24, 48)
    assert MO.frames_from_steps(steps[:7]).shape == (0, 7)


def test_special_ids_are_masked_before_snac():
    frame = np.array([[4096, 1, 2, 4159, 4, 5, 4097]])
    coarse, mid, fine = MO.snac_codes(frame, 4096)
    assert coarse.tolist() == [0] and mid.tolist() == [1, 4] and fine.tolist() == [2, 0, 5, 0]
    for codes in MO.snac_codes(np.full((3, 7), 5000), 4096):
        assert (codes == 0).all()


def test_mel_filters_and_encoder_match_whisper():
    whisper = pytest.importorskip("whisper")
    ours = MO.mel_filterbank(80)
    np.testing.assert_allclose(ours, whisper.audio.mel_filters("cpu", 80).numpy(), atol=1e-6)
    cfg = MO.TINY
    torch.manual_seed(0)
    ref = whisper.model.AudioEncoder(cfg.whisper_n_mels, cfg.whisper_n_ctx, cfg.whisper_dim,
                                     cfg.whisper_heads, cfg.whisper_layers).eval()
    compat = MO.build_audio_encoder(cfg, prefer_whisper=False).eval()
    assert type(compat).__module__ == MO.__name__
    compat.load_state_dict(ref.state_dict())
    mel = MO.log_mel(_noise(16000), cfg.whisper_n_mels, 2 * cfg.whisper_n_ctx)[None]
    with torch.no_grad():
        torch.testing.assert_close(compat(mel), ref(mel), atol=1e-5, rtol=1e-5)


# -- Mini-Omni: the decoding loop ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_omni():
    return load_native("mini-omni:tiny", max_steps=24)


def _slow_reference(model, feats, max_steps: int):
    """No KV cache: rebuild every stream's full sequence and run the whole LM each step."""
    cfg = model.cfg
    ids = model.prompt_ids(feats.shape[0])  # [2, 8, L]
    out = []
    text_end = False
    with torch.no_grad():
        for _ in range(max_steps):
            x = model.embed(ids, feats)
            logits = model.net.lm(inputs_embeds=x, use_cache=False).logits[:, -1]
            audio = logits[0, cfg.padded_text:].reshape(7, cfg.padded_audio).argmax(-1)
            text = int(logits[1, :cfg.padded_text].argmax())
            if text_end:
                text = cfg.pad_t
            if int(audio[6]) == cfg.eoa:
                break
            if text == cfg.eot:
                text_end = True
            out.append((audio.tolist(), text))
            col0 = [cfg.layershift(int(audio[i]), i) for i in range(7)] + [text]
            col1 = [cfg.layershift(cfg.pad_a, i) for i in range(7)] + [text]
            ids = torch.cat([ids, torch.tensor([col0, col1])[:, :, None]], dim=2)
    return out


def test_mini_omni_kv_loop_matches_slow_reference(tiny_omni):
    m = tiny_omni
    feats = m.audio_features(_noise(16000, 3))
    assert feats.shape == (51, m.cfg.whisper_dim)  # 1 s -> int(1000 / 20) + 1 features
    n = 16
    t = time.perf_counter()
    fast = [(a.tolist(), t_) for a, t_ in m.generate(feats, max_steps=n)]
    per_step = (time.perf_counter() - t) / max(1, len(fast))
    slow = _slow_reference(m, feats, n)
    assert fast == slow
    assert len(fast) > 0
    print(f"\nmini-omni:tiny per-step {1000 * per_step:.1f} ms (KV cache, batch 2, incl. prefill)")


def test_mini_omni_parallel_decoding_rules(tiny_omni, monkeypatch):
    """Scripted logits: text from row 1, audio from row 0, pad after eot, stop on layer-6 eoa."""
    m = tiny_omni
    cfg = m.cfg
    fed = []
    real_next_ids = m.next_ids

    def spy_next_ids(audio, text):
        ids = real_next_ids(audio, text)
        fed.append(ids.clone())
        return ids

    k = {"step": 0}

    def scripted_pick(logits):
        s = k["step"]
        k["step"] += 1
        audio = torch.full((7,), 10 + s, dtype=torch.long)
        if s == 9:
            audio[6] = cfg.eoa
        text = cfg.eot if s == 3 else 100 + s
        return audio, text

    monkeypatch.setattr(m, "pick", scripted_pick)
    monkeypatch.setattr(m, "next_ids", spy_next_ids)
    got = list(m.generate(m.audio_features(_noise(8000)), max_steps=50))
    assert len(got) == 9  # step 9 emitted end-of-audio on the last layer
    texts = [t for _, t in got]
    assert texts[:4] == [100, 101, 102, cfg.eot] and all(t == cfg.pad_t for t in texts[4:])
    ids = fed[0]  # [2, 8, 1] fed after step 0
    assert ids[0, :7, 0].tolist() == [cfg.layershift(10, i) for i in range(7)]
    assert ids[1, :7, 0].tolist() == [cfg.layershift(cfg.pad_a, i) for i in range(7)]
    assert ids[0, 7, 0] == ids[1, 7, 0] == 100
    assert fed[5][0, 7, 0] == fed[5][1, 7, 0] == cfg.pad_t


def test_mini_omni_respond_streams_audio_chunks(tiny_omni):
    m = tiny_omni
    assert not m.full_duplex and m.sample_rate == 24000 and m.frame_size == 2048 and m.input_rate == 16000
    state = m.new_state()
    assert not m.step(state, np.zeros(m.input_frame_size, np.float32)).audio.any()  # half-duplex listens
    t = time.perf_counter()
    outs = list(m.respond(state, _noise(16000, 4), max_steps=20))
    elapsed = time.perf_counter() - t
    assert outs[-1].end and sum(o.end for o in outs) == 1
    steps = len(outs) - 1
    sizes = [len(o.audio) for o in outs]
    frames = max(0, steps - 7)
    assert sum(sizes) == frames * m.frame_size
    assert all(s % m.frame_size == 0 for s in sizes)
    chunked = [s for s in sizes[:-1] if s]
    assert all(s == m.snac_stride * m.frame_size for s in chunked)  # SNAC every 4 frames
    assert state.turns == 1
    print(f"\nmini-omni:tiny respond {steps} steps, {1000 * elapsed / max(1, steps):.1f} ms/step incl. whisper + SNAC")


def test_mini_omni_missing_weights(tmp_path):
    with pytest.raises(WeightsNotFound):
        load_native(f"mini-omni:{tmp_path / 'nowhere'}")
    with pytest.raises(WeightsNotFound, match="no model.safetensors or lit_model.pth"):
        load_native(f"mini-omni:{tmp_path}")
    with pytest.raises(WeightsNotFound, match="cache"):
        load_native("mini-omni:nobody/not-a-cached-repo")
    with pytest.raises(ValueError):
        load_native("gpt-4o")


# -- Mini-Omni: checkpoint conversion -----------------------------------------------------

def _litgpt_state_dict(cfg, seed: int = 0) -> dict:
    """A random state dict shaped like Mini-Omni's lit_model.pth (litgpt GPT, post_adapter off)."""
    g = torch.Generator().manual_seed(seed)
    hs = cfg.hidden_size // cfg.num_heads
    fused = (cfg.num_heads + 2 * cfg.num_kv_heads) * hs
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {"transformer.wte.weight": r(cfg.vocab_size, cfg.hidden_size),
          "transformer.ln_f.weight": r(cfg.hidden_size),
          "lm_head.weight": r(cfg.vocab_size, cfg.hidden_size),
          "whisper_adapter.fc_1.weight": r(cfg.adapter_intermediate, cfg.whisper_dim),
          "whisper_adapter.fc_2.weight": r(cfg.adapter_intermediate, cfg.whisper_dim),
          "whisper_adapter.proj.weight": r(cfg.hidden_size, cfg.adapter_intermediate)}
    for i in range(cfg.num_layers):
        p = f"transformer.h.{i}."
        sd |= {p + "norm_1.weight": r(cfg.hidden_size), p + "norm_2.weight": r(cfg.hidden_size),
               p + "attn.attn.weight": r(fused, cfg.hidden_size), p + "attn.attn.bias": r(fused),
               p + "attn.proj.weight": r(cfg.hidden_size, cfg.num_heads * hs),
               p + "mlp.fc_1.weight": r(cfg.intermediate_size, cfg.hidden_size),
               p + "mlp.fc_2.weight": r(cfg.intermediate_size, cfg.hidden_size),
               p + "mlp.proj.weight": r(cfg.hidden_size, cfg.intermediate_size)}
    return sd


def _litgpt_qkv(fused_w, fused_b, x, cfg):
    """litgpt CausalSelfAttention's split (litgpt/model.py): q, k, v as [B, heads, T, hs]."""
    B, T, _ = x.shape
    hs = cfg.hidden_size // cfg.num_heads
    q_per_kv = cfg.num_heads // cfg.num_kv_heads
    qkv = (x @ fused_w.T + fused_b).view(B, T, cfg.num_kv_heads, q_per_kv + 2, hs).permute(0, 2, 3, 1, 4)
    q, k, v = qkv.split((q_per_kv, 1, 1), dim=2)
    return q.reshape(B, -1, T, hs), k.reshape(B, -1, T, hs), v.reshape(B, -1, T, hs)


def test_converter_splits_qkv_and_round_trips():
    cfg = MO.TINY
    lit = _litgpt_state_dict(cfg)
    ours = MO.convert_state_dict(lit, cfg)
    net = MO._build_net(cfg)
    net.load_state_dict(ours, strict=True)  # every parameter named and shaped
    back = MO.to_litgpt_state_dict(ours, cfg)
    assert back.keys() == lit.keys()
    for k in lit:
        torch.testing.assert_close(back[k], lit[k], rtol=0, atol=0)
    # the split matches litgpt's own view/permute/split of the fused projection
    attn = net.lm.model.layers[1].self_attn
    x = torch.randn(2, 5, cfg.hidden_size)
    q, k, v = _litgpt_qkv(lit["transformer.h.1.attn.attn.weight"], lit["transformer.h.1.attn.attn.bias"], x, cfg)
    hs = cfg.hidden_size // cfg.num_heads
    with torch.no_grad():
        for proj, ref in ((attn.q_proj, q), (attn.k_proj, k), (attn.v_proj, v)):
            got = proj(x).view(2, 5, -1, hs).transpose(1, 2)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        # litgpt whisperMLP = silu(fc_1 x) * fc_2 x -> proj
        f = torch.randn(3, cfg.whisper_dim)
        ref = (torch.nn.functional.silu(f @ lit["whisper_adapter.fc_1.weight"].T)
               * (f @ lit["whisper_adapter.fc_2.weight"].T)) @ lit["whisper_adapter.proj.weight"].T
        torch.testing.assert_close(net.adapter(f), ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unexpected key"):
        MO.convert_state_dict({"transformer.h.0.attn.weird": torch.zeros(1)}, cfg)


def test_convert_checkpoint_dir_and_load(tmp_path):
    """Published layout (lit_model.pth + model_config.yaml + small.pt + snac/) -> ours -> load_native."""
    import yaml
    from snac import SNAC

    cfg = MO.TINY
    src, dst = tmp_path / "published", tmp_path / "converted"
    src.mkdir()
    lit = _litgpt_state_dict(cfg, seed=1)
    lit["transformer.post_adapter.0.norm_1.weight"] = torch.ones(cfg.hidden_size)  # dropped
    torch.save(lit, src / "lit_model.pth")
    (src / "model_config.yaml").write_text(yaml.safe_dump({
        "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
        "n_query_groups": cfg.num_kv_heads, "intermediate_size": cfg.intermediate_size,
        "rope_base": 1000000, "norm_eps": 1e-6, "block_size": cfg.max_positions,
        "text_vocab_size": cfg.padded_text, "audio_vocab_size": cfg.padded_audio,
        "padded_vocab_size": cfg.vocab_size, "whisper_adapter_dim": cfg.whisper_dim,
        "asr_adapter": "llamamlp", "post_adapter": False}))
    enc = MO.build_audio_encoder(cfg)
    torch.save({"dims": {"n_mels": cfg.whisper_n_mels, "n_audio_ctx": cfg.whisper_n_ctx,
                         "n_audio_state": cfg.whisper_dim, "n_audio_head": cfg.whisper_heads,
                         "n_audio_layer": cfg.whisper_layers},
                "model_state_dict": {f"encoder.{k}": v for k, v in enc.state_dict().items()}},
               src / "small.pt")
    (src / "snac").mkdir()
    (src / "snac" / "config.json").write_text(json.dumps(cfg.snac))
    torch.save(SNAC(**cfg.snac).state_dict(), src / "snac" / "pytorch_model.bin")

    MO.convert_checkpoint(src, dst)
    saved = json.loads((dst / "config.json").read_text())
    assert saved["format"] == MO.CONVERTED_FORMAT and saved["hidden_size"] == cfg.hidden_size
    for source in (src, dst):  # published layout converts in memory; ours loads directly
        m = load_native(f"mini-omni:{source}", device="cpu", max_steps=10)
        assert m.cfg.vocab_size == cfg.vocab_size and m.cfg.snac["codebook_size"] == cfg.audio_vocab
        torch.testing.assert_close(m.net.lm.model.embed_tokens.weight, lit["transformer.wte.weight"])
        outs = list(m.respond(m.new_state(), _noise(8000), max_steps=10))
        assert outs[-1].end


# -- pipecat glue ---------------------------------------------------------------------------

def _input_frames(seconds: float, rate: int = 16000):
    from pipecat.frames.frames import InputAudioRawFrame

    from voice.audio import frames

    return [InputAudioRawFrame(audio=chunk, sample_rate=rate, num_channels=1)
            for chunk in frames(_noise(int(seconds * rate), 7), rate)]


async def test_processor_full_duplex_moshi(tiny_moshi):
    from pipecat.frames.frames import TTSAudioRawFrame
    from pipecat.tests.utils import run_test

    from voice.native import NativeDuplexProcessor

    # Frames arrive faster than real time here: a backlog limit this large drops nothing.
    proc = NativeDuplexProcessor(tiny_moshi, max_backlog_s=10.0)
    down, _ = await run_test(proc, frames_to_send=_input_frames(0.64))  # 32 x 20 ms = 8 model frames
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert len(audio) == 8
    assert all(f.sample_rate == 24000 and f.num_channels == 1 and len(f.audio) == 2 * 1920 for f in audio)


async def test_processor_drops_input_when_behind(tiny_moshi):
    from pipecat.frames.frames import TTSAudioRawFrame
    from pipecat.tests.utils import run_test

    from voice.events import EventLog
    from voice.native import NativeDuplexProcessor

    events = EventLog("test")
    proc = NativeDuplexProcessor(tiny_moshi, events, max_backlog_s=0.16)  # 2 model frames
    down, _ = await run_test(proc, frames_to_send=_input_frames(0.96))  # 12 frames at once
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert 2 <= len(audio) < 12 and events.of("native_dropped_input")


async def test_processor_half_duplex_mini_omni(tiny_omni):
    from pipecat.frames.frames import TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame
    from pipecat.tests.utils import SleepFrame, run_test

    from voice.events import EventLog
    from voice.frames import UserTurnEndedFrame
    from voice.native import NativeDuplexProcessor

    events = EventLog("test")
    proc = NativeDuplexProcessor(tiny_omni, events)
    sent = _input_frames(0.4) + [UserTurnEndedFrame(turn=1), SleepFrame(sleep=0.05)]
    down, _ = await run_test(proc, frames_to_send=sent)
    kinds = [type(f) for f in down]
    assert TTSStartedFrame in kinds and TTSStoppedFrame in kinds
    assert kinds.index(TTSStartedFrame) < kinds.index(TTSStoppedFrame)
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and all(f.sample_rate == 24000 for f in audio)
    assert sum(len(f.audio) for f in audio) == 2 * (24 - 7) * 2048  # max_steps=24 -> 17 frames
    assert len(events.of("native_reply_end")) == 1
    assert events.of("native_reply_start")[0]["user_audio_s"] == pytest.approx(0.4)


async def test_processor_interruption_stops_the_reply(tiny_omni):
    from pipecat.frames.frames import InterruptionFrame, TTSStoppedFrame
    from pipecat.tests.utils import run_test

    from voice.events import EventLog
    from voice.frames import UserTurnEndedFrame
    from voice.native import NativeDuplexProcessor

    events = EventLog("test")
    proc = NativeDuplexProcessor(tiny_omni, events)
    sent = _input_frames(0.2) + [UserTurnEndedFrame(turn=1), InterruptionFrame()]
    down, _ = await run_test(proc, frames_to_send=sent)
    assert any(isinstance(f, TTSStoppedFrame) for f in down)
    end = events.of("native_reply_end")[0]
    assert end["interrupted"] and end["steps"] < 24


# -- the GPU benchmark's logic ----------------------------------------------------------------

def test_gpu_bench_tiny_on_cpu(tmp_path):
    import bench.gpu_native as bench

    out = tmp_path / "gpu_native.json"
    r = bench.main(["--tiny", "--device", "cpu", "--steps", "6", "--conc-steps", "8", "--warmup", "1",
                    "--max-batch", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["moshi"]["batch1"]["n"] == 6 and saved["mini_omni"]["batch2"]["n"] == 6
    assert saved["moshi"]["concurrency"][0]["batch"] == 2
    assert saved["mini_omni"]["concurrency"][0]["sessions"] == 2
    assert saved["mini_omni"]["concurrency"][0]["snac_decode_4_frames"]["n"] >= 1
    assert r["total_s"] < 120


def test_loader_specs():
    from models.native import parse_spec

    assert parse_spec("moshi") == ("moshi", None)
    assert parse_spec("moshi:tiny") == ("moshi", "tiny")
    assert parse_spec("Mini-Omni:/x/y") == ("mini-omni", "/x/y")
    assert parse_spec("mini_omni:tiny") == ("mini-omni", "tiny")
    with pytest.raises(ValueError):
        parse_spec("omni")


def test_text_tokens_become_text(tiny_moshi):
    class Piece:
        def id_to_piece(self, i):
            return "\u2581hello" if i == 5 else "lo"

    m = tiny_moshi
    assert m.text_of(5) == ""  # no tokenizer: token ids only
    m.text_tokenizer = Piece()
    try:
        assert m.text_of(5) == " hello" and m.text_of(7) == "lo"
        assert m.text_of(3) == "" and m.text_of(0) == ""  # padding ids
    finally:
        m.text_tokenizer = None

    class Bytes:
        def decode(self, ids):
            return "".join("\ufffd" if i == 9 else chr(97 + i) for i in ids)

    stream = MO._TextStream(Bytes(), text_vocab=20)
    assert stream.push(0) == "a" and stream.push(1) == "b"
    assert stream.push(25) == ""  # special id
    assert stream.push(9) == ""  # incomplete character: wait
