"""Native speech-to-speech models on a GPU: per-step latency and real-time concurrency.

Random weights of the real shapes (no checkpoint needed):

* Moshi 7B: full-size Mimi + Helium/depformer LM in bf16, LMGen streaming.
  Per step = Mimi encode of 80 ms + LMGen step (text + 8 audio tokens) + Mimi
  decode. Real time holds while a step takes <= 80 ms.
* Mini-Omni: Qwen2-0.5B shape (vocabulary 181120), whisper-small encoder, SNAC
  24 kHz. Per step = one batch-2 LM step (7 audio + 1 text token) plus a SNAC
  decode of 4 frames every 4 steps (amortised). Real time holds while a step
  takes <= 85.3 ms (one SNAC frame of audio).

Concurrency: B sessions batched together (Moshi batch B; Mini-Omni batch 2B),
doubling B until a step's p99 passes the frame time, memory runs out, or the
time budget is spent.

    python3 bench/gpu_native.py [--out FILE] [--steps 200] [--budget-s 270] [--tiny]

``--tiny`` runs the tiny test configurations (CPU is fine) to check the logic.
Needs ``moshi`` (for the Moshi half) and ``snac`` + ``transformers`` (for the
Mini-Omni half) importable; a half whose packages are missing is reported as
skipped. Writes JSON to --out (default $OUT/gpu_native.json when OUT is set).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")  # compilation would eat the time budget

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

MOSHI_FRAME_MS = 80.0


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def _stats(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(_pct(ms, 50), 3), "p90_ms": round(_pct(ms, 90), 3),
            "p99_ms": round(_pct(ms, 99), 3), "mean_ms": round(float(np.mean(ms)), 3) if ms else None,
            "max_ms": round(max(ms), 3) if ms else None}


class Clock:
    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def now(self) -> float:
        self.sync()
        return time.perf_counter()


def _mem(device: str) -> dict:
    if not device.startswith("cuda"):
        return {}
    return {"allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 3),
            "reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 3),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


# -- Moshi ---------------------------------------------------------------------------

def bench_moshi(args, device: str, deadline: float) -> dict:
    from moshi.models import LMGen, loaders

    from models.native import moshi as M

    clock = Clock(device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    mimi_cfg = M.tiny_mimi_config() if args.tiny else M.MIMI_CONFIG
    lm_kwargs = M.tiny_lm_kwargs() if args.tiny else M.LM_KWARGS
    t = time.perf_counter()
    torch.manual_seed(0)
    mimi = loaders.get_mimi(None, mimi_config=mimi_cfg, device=device, num_codebooks=8)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device=device, dtype=dtype)
    build_s = time.perf_counter() - t
    n_params = sum(p.numel() for p in lm.parameters())
    out: dict = {"lm_params": n_params, "mimi_params": sum(p.numel() for p in mimi.parameters()),
                 "dtype": str(dtype), "build_s": round(build_s, 2), "frame_ms": MOSHI_FRAME_MS,
                 "memory_after_load": _mem(device)}
    frame = int(mimi.frame_size)
    gen = LMGen(lm, temp=0.8, temp_text=0.7)

    def run(batch: int, steps: int, warmup: int) -> dict:
        x = (torch.randn(batch, 1, frame, device=device) * 0.05).float()
        step_ms, lm_ms = [], []
        with torch.no_grad(), mimi.streaming(batch), gen.streaming(batch):
            for i in range(warmup + steps):
                t0 = clock.now()
                codes = mimi.encode(x)
                t1 = clock.now()
                tokens = gen.step(codes)
                t2 = clock.now()
                if tokens is not None:
                    mimi.decode(tokens[:, 1:])
                t3 = clock.now()
                if i >= warmup:
                    step_ms.append((t3 - t0) * 1000)
                    lm_ms.append((t2 - t1) * 1000)
                if time.perf_counter() > deadline:
                    break
        s = _stats(step_ms)
        s["lm_step"] = _stats(lm_ms)
        s["batch"] = batch
        p50 = s["p50_ms"]
        s["steps_per_s_per_stream"] = round(1000.0 / p50, 2) if p50 else None
        s["tokens_per_s_total"] = round(9 * batch * 1000.0 / p50, 1) if p50 else None  # text + 8 audio
        s["real_time_p50"] = p50 <= MOSHI_FRAME_MS
        s["real_time_p99"] = s["p99_ms"] <= MOSHI_FRAME_MS
        s["memory"] = _mem(device)
        return s

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    out["batch1"] = run(1, args.steps, args.warmup)
    out["concurrency"] = []
    batch = 2
    while batch <= args.max_batch and time.perf_counter() < deadline - 5:
        try:
            r = run(batch, args.conc_steps, args.warmup)
        except Exception as e:  # OOM ends the sweep
            if not _is_oom(e):
                raise
            out["concurrency"].append({"batch": batch, "error": "out of memory"})
            _free(device)
            break
        out["concurrency"].append(r)
        _free(device)
        if not r["real_time_p99"]:
            break
        batch *= 2
    rows = [out["batch1"]] + [r for r in out["concurrency"] if "p99_ms" in r]
    out["max_real_time_batch_p99"] = max([r["batch"] for r in rows if r["real_time_p99"]], default=0)
    out["max_real_time_batch_p50"] = max([r["batch"] for r in rows if r["real_time_p50"]], default=0)
    del gen, lm, mimi
    _free(device)
    return out


# -- Mini-Omni --------------------------------------------------------------------------

def bench_mini_omni(args, device: str, deadline: float) -> dict:
    from models.native import mini_omni as MO

    clock = Clock(device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    cfg = MO.TINY if args.tiny else MO.FULL
    t = time.perf_counter()
    model = MO.build(cfg, device=device, dtype=dtype, seed=0)
    build_s = time.perf_counter() - t
    step_budget_ms = 1000.0 * cfg.samples_per_step / cfg.snac["sampling_rate"]
    out: dict = {
        "lm_params": sum(p.numel() for p in model.net.parameters()),
        "whisper_encoder_params": sum(p.numel() for p in model.encoder.parameters()),
        "whisper_impl": type(model.encoder).__module__,
        "snac_params": sum(p.numel() for p in model.snac.parameters()),
        "vocab_size": cfg.vocab_size, "dtype": str(dtype), "build_s": round(build_s, 2),
        "frame_ms": round(step_budget_ms, 2), "memory_after_load": _mem(device),
    }
    user_s = 3.0
    audio = (np.random.default_rng(0).standard_normal(int(16000 * user_s)) * 0.05).astype(np.float32)

    # Prefill latency of one turn (batch 2): whisper window + adapter + LM prefill + first tokens.
    from transformers import DynamicCache

    with torch.no_grad():
        for _ in range(2):  # warm-up, then measure
            t0 = clock.now()
            feats = model.audio_features(audio)
            t1 = clock.now()
            cache = DynamicCache()
            logits = model._forward_last(model.embed(model.prompt_ids(feats.shape[0]), feats), cache)
            model.pick(logits)
            t2 = clock.now()
    out["prefill"] = {"user_audio_s": user_s, "whisper_ms": round((t1 - t0) * 1000, 3),
                      "lm_prefill_ms": round((t2 - t1) * 1000, 3), "prompt_tokens": int(feats.shape[0] + 3)}

    def run(sessions: int, steps: int, warmup: int) -> dict:
        """``sessions`` batch-2 sessions decoded together ([2 * sessions] rows)."""
        n = sessions
        cache = DynamicCache()
        step_ms, lm_ms, snac_ms = [], [], []
        with torch.no_grad():
            ids = model.prompt_ids(feats.shape[0]).repeat(n, 1, 1)
            logits = model._forward_last(model.embed(ids, feats), cache)
            # Start as if the delay pattern had filled, so SNAC decodes from the 4th step on.
            hist: list[torch.Tensor] = [torch.zeros(n, cfg.audio_layers, dtype=torch.long,
                                                    device=model.device)] * cfg.audio_layers
            for i in range(warmup + steps):
                t0 = clock.now()
                text_logits, audio_logits = model.split_logits(logits)
                audio_tok = model.choose(audio_logits.view(n, 2, cfg.audio_layers, -1)[:, 0])  # [n, 7]
                text_tok = model.choose(text_logits.view(n, 2, -1)[:, 1])  # [n]
                layers = torch.arange(cfg.audio_layers, device=audio_tok.device)
                row0 = cfg.layershift(audio_tok, layers)
                row1 = cfg.layershift(torch.full_like(row0, cfg.pad_a), layers)
                tt = text_tok[:, None]
                nxt = torch.stack([torch.cat([row0, tt], 1), torch.cat([row1, tt], 1)], 1)  # [n, 2, 8]
                logits = model._forward_last(model.embed(nxt.view(2 * n, 8, 1)), cache)
                t1 = clock.now()
                hist.append(audio_tok)
                t2 = t1
                if len(hist) >= 4 + cfg.audio_layers and (i + 1) % 4 == 0:
                    window = torch.stack(hist[-(4 + cfg.audio_layers):], 1).cpu().numpy()  # [n, 11, 7]
                    codes = [[], [], []]
                    for s in range(n):
                        for lvl, c in enumerate(MO.snac_codes(MO.frames_from_steps(window[s])[-4:],
                                                              int(cfg.snac["codebook_size"]))):
                            codes[lvl].append(torch.from_numpy(c))
                    codes_t = [torch.stack(c).to(model.snac_device) for c in codes]
                    model.snac.decode(codes_t)
                    t2 = clock.now()
                if i >= warmup:
                    step_ms.append((t2 - t0) * 1000)
                    lm_ms.append((t1 - t0) * 1000)
                    if t2 > t1:
                        snac_ms.append((t2 - t1) * 1000)
                if time.perf_counter() > deadline:
                    break
        s = _stats(step_ms)
        s["lm_step"] = _stats(lm_ms)
        s["snac_decode_4_frames"] = _stats(snac_ms)
        s["sessions"] = n
        s["batch_rows"] = 2 * n
        amort = float(np.mean(lm_ms)) + (float(np.sum(snac_ms)) / max(1, len(lm_ms)))
        s["amortised_step_ms"] = round(amort, 3)
        s["tokens_per_s_total"] = round(8 * n * 1000.0 / amort, 1)  # 7 audio + 1 text per session
        s["real_time_amortised"] = amort <= step_budget_ms
        s["real_time_p99_lm"] = s["lm_step"]["p99_ms"] <= step_budget_ms
        s["memory"] = _mem(device)
        return s

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    out["batch2"] = run(1, args.steps, args.warmup)
    out["concurrency"] = []
    sessions = 2
    while sessions <= args.max_batch and time.perf_counter() < deadline - 5:
        try:
            r = run(sessions, args.conc_steps, args.warmup)
        except Exception as e:
            if not _is_oom(e):
                raise
            out["concurrency"].append({"sessions": sessions, "error": "out of memory"})
            _free(device)
            break
        out["concurrency"].append(r)
        _free(device)
        if not r["real_time_amortised"]:
            break
        sessions *= 2
    rows = [out["batch2"]] + [r for r in out["concurrency"] if "p50_ms" in r]
    out["max_real_time_sessions"] = max([r["sessions"] for r in rows if r["real_time_amortised"]], default=0)
    del model
    _free(device)
    return out


# -- main --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = os.path.join(os.environ["OUT"], "gpu_native.json") if os.environ.get("OUT") else "gpu_native.json"
    p.add_argument("--out", default=default_out)
    p.add_argument("--tiny", action="store_true", help="tiny test configurations (CPU is fine)")
    p.add_argument("--device", default=None)
    p.add_argument("--steps", type=int, default=200, help="measured steps at batch 1 (Moshi) / 2 (Mini-Omni)")
    p.add_argument("--conc-steps", type=int, default=40, help="measured steps per concurrency level")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--budget-s", type=float, default=270.0, help="stop sweeping after this long")
    p.add_argument("--only", choices=["moshi", "mini-omni"], default=None)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    result: dict = {
        "tiny": args.tiny, "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "torch": torch.__version__, "python": platform.python_version(),
        "cuda_graphs": os.environ.get("NO_CUDA_GRAPH", "") in ("", "0", "no", "n"),
        "torch_compile": not os.environ.get("NO_TORCH_COMPILE"),
    }
    for mod in ("moshi", "snac", "transformers", "whisper"):
        try:
            m = __import__(mod)
            result[f"{mod}_version"] = getattr(m, "__version__", "present")
        except Exception as e:
            result[f"{mod}_version"] = f"missing ({type(e).__name__})"

    halves = [("moshi", bench_moshi, 0.55), ("mini_omni", bench_mini_omni, 1.0)]
    for name, fn, share in halves:
        if args.only and args.only.replace("-", "_") != name:
            continue
        t0 = time.perf_counter()
        sub_deadline = t_start + args.budget_s * share if name == "moshi" and not args.only else deadline
        try:
            result[name] = fn(args, device, sub_deadline)
        except ImportError as e:
            result[name] = {"skipped": f"missing package: {e}"}
        except Exception as e:
            result[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                            "traceback": traceback.format_exc(limit=6)}
        result[name]["wall_s"] = round(time.perf_counter() - t0, 2)
        _free(device)
    result["total_s"] = round(time.perf_counter() - t_start, 2)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    print(summary(result))
    print(f"wrote {args.out}")
    return result


def summary(r: dict) -> str:
    lines = [f"native models on {r.get('gpu') or r['device']} (tiny={r['tiny']}, torch {r['torch']}), {r['total_s']} s"]
    m = r.get("moshi", {})
    if "batch1" in m:
        b = m["batch1"]
        lines.append(f"moshi  : {m['lm_params'] / 1e9:.2f} B params, step p50 {b['p50_ms']} ms p99 {b['p99_ms']} ms "
                     f"(LM {b['lm_step']['p50_ms']} ms), {b['tokens_per_s_total']} tok/s, "
                     f"mem {m['memory_after_load'].get('allocated_gib', '-')} GiB; real-time batch <= "
                     f"{m['max_real_time_batch_p99']} (p99 <= 80 ms)")
        for c in m.get("concurrency", []):
            lines.append(f"         batch {c['batch']}: " + (c["error"] if "error" in c else
                         f"p50 {c['p50_ms']} p99 {c['p99_ms']} ms, mem {c['memory'].get('peak_allocated_gib', '-')} GiB"))
    elif m:
        lines.append(f"moshi  : {m.get('skipped') or m.get('error')}")
    o = r.get("mini_omni", {})
    if "batch2" in o:
        b = o["batch2"]
        lines.append(f"mini-omni: {o['lm_params'] / 1e6:.0f} M LM params, batch-2 step p50 {b['p50_ms']} ms "
                     f"p99 {b['p99_ms']} ms (LM {b['lm_step']['p50_ms']} ms, SNAC/4 frames "
                     f"{b['snac_decode_4_frames']['p50_ms']} ms), amortised {b['amortised_step_ms']} ms "
                     f"vs {o['frame_ms']} ms; prefill whisper {o['prefill']['whisper_ms']} ms + LM "
                     f"{o['prefill']['lm_prefill_ms']} ms; real-time sessions <= {o['max_real_time_sessions']}")
        for c in o.get("concurrency", []):
            lines.append(f"         sessions {c['sessions']}: " + (c["error"] if "error" in c else
                         f"amortised {c['amortised_step_ms']} ms, LM p99 {c['lm_step']['p99_ms']} ms"))
    elif o:
        lines.append(f"mini-omni: {o.get('skipped') or o.get('error')}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
