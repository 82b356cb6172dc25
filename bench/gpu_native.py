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

``--batched``: Moshi sessions through the real batch scheduler instead
(models/native/batching.py, what ``voice serve --pipeline native`` runs): for
each of ``--sessions`` (default 1,2,4,8,16,32,48,64) a pool of that many slots,
one frame per session every 80 ms, tick time p50/p99, frame latency, late
ticks, GPU memory, against one session alone (``MoshiDuplex.step``, batch 1);
then as many concurrent Mini-Omni replies through ``BatchedReplies`` (decode
tick time, time per step per reply including SNAC, first audio; ``--only``
picks one). ``--repeats`` runs the Moshi sweep several times (median and range);
``--plot`` draws tick time against sessions; ``--stagger`` gives each session
its own thread and phase of the 80 ms period, as real callers arrive, and so
measures the wait a frame spends for the others' (one tick per period). One
fresh H100 call:

    python3 bench/gpu_native.py --batched --steps 100 --conc-steps 50 --budget-s 270 \
        --out $OUT/gpu_native_batched.json --plot $OUT/gpu_native_batched.png && \
    python3 bench/gpu_native.py --batched --only moshi --stagger --sessions 1,8,32 --steps 20 \
        --conc-steps 50 --budget-s 100 --out $OUT/gpu_native_batched_stagger.json

(at full context 48 and 64 sessions need more than 80 GB: they are reported as
out of memory on an H100; ``--lm-context`` shrinks the KV cache.) The CPU check
of the same code with the tiny model:

    python3 bench/gpu_native.py --batched --tiny --device cpu --threads 1 --sessions 1,8 --repeats 5

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


# -- Moshi through the batch scheduler (--batched) ---------------------------------------

def _build_moshi(args, device: str):
    from models.native import moshi as M

    loaders, _ = M._require_moshi()
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    mimi_cfg = M.tiny_mimi_config() if args.tiny else M.MIMI_CONFIG
    lm_kwargs = M.tiny_lm_kwargs() if args.tiny else dict(M.LM_KWARGS)
    if args.lm_context:
        lm_kwargs["context"] = args.lm_context
    torch.manual_seed(0)
    mimi = loaders.get_mimi(None, mimi_config=mimi_cfg, device=device, num_codebooks=8)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_kwargs, device=device, dtype=dtype)
    name = "moshi:tiny" if args.tiny else "moshi-7b-random"
    return M.MoshiDuplex(mimi, lm, name=name, use_sampling=True), dtype, lm_kwargs["context"]


def bench_moshi_batched(args, device: str, deadline: float) -> dict:
    """Sessions 1..N driven through models.native.batching.BatchedDuplex at 12.5 Hz.

    Each level builds a pool of exactly ``n`` slots, opens ``n`` sessions, and every
    80 ms (``--no-pace``: back to back) hands each session one frame; the scheduler's
    loop thread steps them in one tick. Reported per level: tick time (the batched
    Mimi encode + LM step with depth decoding + Mimi decode, as the scheduler times
    it), frame latency (submit to output), ticks that ran past the next 80 ms
    boundary, GPU memory. The baseline is today's one-at-a-time path:
    ``MoshiDuplex.step`` at batch 1, where n sessions cost n steps per frame.
    """
    from models.native.batching import BatchedDuplex

    clock = Clock(device)
    t = time.perf_counter()
    model, dtype, context = _build_moshi(args, device)
    out: dict = {"model": model.name, "dtype": str(dtype), "lm_context": context,
                 "lm_params": sum(p.numel() for p in model.lm.parameters()),
                 "build_s": round(time.perf_counter() - t, 2), "frame_ms": MOSHI_FRAME_MS,
                 "paced": args.pace, "memory_after_load": _mem(device)}
    frame_ms = model.frame_ms
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal((16, model.frame_size)) * 0.05).astype(np.float32)

    def solo(steps: int) -> dict:
        """One session alone, paced like the levels (a CPU or GPU idle between steps is slower)."""
        state = model.new_state()
        ms = []
        period = frame_ms / 1000.0 if args.pace else 0.0
        next_t = time.perf_counter()
        with torch.no_grad():
            for i in range(args.warmup + steps):
                t0 = clock.now()
                model.step(state, pcm[i % len(pcm)])
                done = clock.now()
                if i >= args.warmup:
                    ms.append((done - t0) * 1000)
                next_t += period
                if period and next_t > done:
                    time.sleep(next_t - done)
                else:
                    next_t = done
                if time.perf_counter() > deadline:
                    break
        model.close_state(state)
        return _stats(ms)

    def level(n: int, ticks: int) -> dict:
        total = args.warmup + ticks
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        max_wait = None if args.max_wait_ms is None else args.max_wait_ms / 1000.0
        b = BatchedDuplex(model, slots=n, history=total * n + 8, max_wait_s=max_wait)
        sessions = [b.new_state() for _ in range(n)]
        period = frame_ms / 1000.0 if args.pace else 0.0
        staggered = bool(args.stagger and period)
        try:
            if staggered:
                latency, late, mark = _staggered(b, sessions, pcm, period, args.warmup, total, deadline)
            else:
                latency, late, mark = _aligned(b, sessions, pcm, period, args.warmup, total, deadline)
        finally:
            for s in sessions:
                b.close_state(s)
            b.stop()
        log = b.tick_log()[mark:]
        r = _stats([ms for ms, _ in log])
        r.update(sessions=n, slots=n, ticks=len(log), staggered=staggered, max_wait_ms=1000.0 * b.max_wait_s,
                 mean_frames_per_tick=round(float(np.mean([k for _, k in log])), 2) if log else None,
                 # late: periods (aligned) or frames (staggered) answered after the next frame was due
                 frame_latency=_stats(latency), late=late,
                 one_at_a_time_ms=round(n * out["solo"]["p50_ms"], 3))
        if staggered:  # a frame may wait up to one period for the others' phases, then its tick
            r["real_time_p99"] = r["p99_ms"] <= frame_ms and r["frame_latency"]["p99_ms"] <= 2 * frame_ms
        else:
            r["real_time_p99"] = r["p99_ms"] <= frame_ms and late == 0
        r["memory"] = _mem(device)
        return r

    out["solo"] = solo(args.steps)
    out["one_at_a_time_sessions_p99"] = int(frame_ms // out["solo"]["p99_ms"]) if out["solo"]["n"] else 0
    out["levels"] = []
    for n in args.sessions:
        if time.perf_counter() > deadline - 5:
            out["levels"].append({"sessions": n, "error": "time budget spent"})
            break
        try:
            r = level(n, args.conc_steps)
        except Exception as e:  # OOM ends the sweep
            if not _is_oom(e):
                raise
            out["levels"].append({"sessions": n, "error": "out of memory", "memory": _mem(device)})
            _free(device)
            break
        out["levels"].append(r)
        _free(device)
    rows = [r for r in out["levels"] if "p99_ms" in r]
    out["max_real_time_sessions"] = max([r["sessions"] for r in rows if r["real_time_p99"]], default=0)
    # The CPU target of issue 21: 8 sessions batched cost < 3x one session's step.
    for r in rows:
        r["x_solo_p50"] = round(r["p50_ms"] / out["solo"]["p50_ms"], 3) if out["solo"]["p50_ms"] else None
    del model
    _free(device)
    return out


def bench_mini_omni_batched(args, device: str, deadline: float) -> dict:
    """Concurrent Mini-Omni replies through models.native.batching.BatchedReplies.

    Each level: ``n`` readers ask for a reply to the same 3 s turn at once and read
    it to the end (``--reply-steps`` LM steps: random weights never end a reply);
    the batch decodes every reply in one LM call per tick. Reported: decode tick
    time (ticks without a prefill), per-reply time per step including its SNAC
    decoding (real time while <= 85.3 ms, one SNAC frame), first audio after the
    request, against one reply alone through the model's own ``respond``.
    """
    import threading

    from models.native import mini_omni as MO
    from models.native.batching import BatchedReplies

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    cfg = MO.TINY if args.tiny else MO.FULL
    t = time.perf_counter()
    model = MO.build(cfg, device=device, dtype=dtype, seed=0, max_steps=args.reply_steps)
    budget_ms = 1000.0 * cfg.samples_per_step / cfg.snac["sampling_rate"]
    out: dict = {"model": "mini-omni:tiny" if args.tiny else "mini-omni-random", "dtype": str(dtype),
                 "build_s": round(time.perf_counter() - t, 2), "frame_ms": round(budget_ms, 2),
                 "reply_steps": args.reply_steps, "memory_after_load": _mem(device)}
    audio = (np.random.default_rng(0).standard_normal(16000 * 3) * 0.05).astype(np.float32)

    def read(stream) -> dict:
        t0 = time.perf_counter()
        first, steps = None, 0
        for o in stream:
            steps += 1
            if o.audio.size and first is None:
                first = time.perf_counter() - t0
        wall = time.perf_counter() - t0
        return {"steps": steps, "ms_per_step": 1000.0 * wall / max(1, steps),
                "first_audio_ms": None if first is None else 1000.0 * first}

    # Warm-up long enough to decode SNAC once (its first call is slow): delay + one chunk.
    list(model.respond(model.new_state(), audio, max_steps=cfg.audio_layers + model.snac_stride + 1))
    alone = [read(model.respond(model.new_state(), audio)) for _ in range(2)]
    out["alone"] = {"ms_per_step": round(float(np.median([a["ms_per_step"] for a in alone])), 3),
                    "first_audio_ms": round(float(np.median([a["first_audio_ms"] or 0 for a in alone])), 3)}
    out["levels"] = []
    for n in args.sessions:
        if time.perf_counter() > deadline - 5:
            out["levels"].append({"sessions": n, "error": "time budget spent"})
            break
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        b = BatchedReplies(model, slots=n, history=args.reply_steps * 4 + 16)
        results: list[dict] = []
        errors: list[str] = []

        def reader():
            try:
                results.append(read(b.respond(b.new_state(), audio)))
            except Exception as e:  # noqa: BLE001 - reported in the JSON
                errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

        threads = [threading.Thread(target=reader) for _ in range(n)]
        try:
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=max(10.0, deadline - time.perf_counter() + 60))
        finally:
            b.stop()
        if errors:
            oom = any("out of memory" in e.lower() for e in errors)
            out["levels"].append({"sessions": n, "error": "out of memory" if oom else errors[0],
                                  "memory": _mem(device)})
            _free(device)
            break
        decode = [ms for ms, k, joined in b.tick_log(with_joins=True) if not joined]
        r = _stats(decode)
        per_step = [x["ms_per_step"] for x in results]
        first = [x["first_audio_ms"] for x in results if x["first_audio_ms"] is not None]
        r.update(sessions=n, slots=n, replies=len(results),
                 mean_replies_per_tick=round(float(np.mean([k for _, k in b.tick_log()])), 2),
                 reply_ms_per_step=_stats(per_step), first_audio=_stats(first),
                 one_at_a_time_ms_per_step=round(n * out["alone"]["ms_per_step"], 3))
        r["real_time"] = bool(per_step) and max(per_step) <= budget_ms
        r["memory"] = _mem(device)
        out["levels"].append(r)
        _free(device)
    rows = [r for r in out["levels"] if "p50_ms" in r]
    out["max_real_time_sessions"] = max([r["sessions"] for r in rows if r["real_time"]], default=0)
    del model
    _free(device)
    return out


def _aligned(b, sessions, pcm, period: float, warmup: int, total: int, deadline: float):
    """Every ``period`` (0: back to back) one frame for every session at once; wait for all outputs.

    Returns (latencies ms from the frames' hand-over to the last output, late
    periods, tick count at the end of warm-up). A period is late when its outputs
    come after the next frames are due.
    """
    latency: list[float] = []
    late, mark = 0, 0
    next_t = time.perf_counter()
    for i in range(total):
        if i == warmup:
            mark = len(b.tick_log())
        t0 = time.perf_counter()
        futs = [b.submit(s, pcm[(i + k) % len(pcm)]) for k, s in enumerate(sessions)]
        for f in futs:
            f.result(timeout=120)
        done = time.perf_counter()
        if i >= warmup:
            latency.append((done - t0) * 1000)
        next_t += period
        if period and done > next_t:
            late += i >= warmup
            next_t = done
        elif period:
            time.sleep(next_t - done)
        if time.perf_counter() > deadline:
            break
    return latency, late, mark


def _staggered(b, sessions, pcm, period: float, warmup: int, total: int, deadline: float):
    """Each session on its own thread, its frames due at its own phase (k / n of a frame).

    Returns (frame latencies ms, frames late, tick count at the end of warm-up). A
    frame is late when its output comes after the session's next frame is due.
    """
    import threading

    n = len(sessions)
    t_base = time.perf_counter() + 0.05
    latency: list[float] = []
    late = [0]
    lock = threading.Lock()

    def run(k, s):
        for i in range(total):
            due = t_base + (i + k / n) * period
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            t0 = time.perf_counter()
            b.submit(s, pcm[(i + k) % len(pcm)]).result(timeout=120)
            done = time.perf_counter()
            if i >= warmup:
                with lock:
                    latency.append((done - t0) * 1000)
                    late[0] += done > due + period
            if done > deadline:
                break

    threads = [threading.Thread(target=run, args=(k, s)) for k, s in enumerate(sessions)]
    for th in threads:
        th.start()
    wait = t_base + warmup * period - time.perf_counter()
    if wait > 0:
        time.sleep(wait)
    mark = len(b.tick_log())
    for th in threads:
        th.join()
    return latency, late[0], mark


def _plot_batched(result: dict, path: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    runs = result["moshi_batched"]["runs"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, run in enumerate(runs):
        rows = [r for r in run.get("levels", []) if "p99_ms" in r]
        if not rows:
            continue
        xs = [r["sessions"] for r in rows]
        labels = ("tick p50", "tick p99", "one at a time (n x solo p50)") if k == 0 else (None, None, None)
        ax.plot(xs, [r["p50_ms"] for r in rows], "o-", color="C0", alpha=0.7, label=labels[0])
        ax.plot(xs, [r["p99_ms"] for r in rows], "s--", color="C1", alpha=0.7, label=labels[1])
        ax.plot(xs, [r["one_at_a_time_ms"] for r in rows], ":", color="C2", alpha=0.7, label=labels[2])
    ax.axhline(MOSHI_FRAME_MS, color="k", lw=0.8)
    ax.text(1, MOSHI_FRAME_MS * 0.95, "80 ms frame", fontsize=8, va="top")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sessions (one slot each)")
    ax.set_ylabel("ms per 80 ms tick")
    ax.set_title(f"{runs[0].get('model', 'moshi')} on {result.get('gpu') or result['device']}, "
                 f"{len(runs)} run(s)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


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
    p.add_argument("--batched", action="store_true",
                   help="Moshi sessions through the batch scheduler (models/native/batching.py) at 12.5 Hz")
    p.add_argument("--sessions", default="1,2,4,8,16,32,48,64",
                   help="--batched: session counts to sweep (one pool of that many slots each)")
    p.add_argument("--repeats", type=int, default=1, help="--batched: run the whole sweep this many times")
    p.add_argument("--no-pace", dest="pace", action="store_false",
                   help="--batched: hand out frames back to back instead of every 80 ms")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="--batched: the scheduler's max_wait (default one frame): a tick runs when the "
                        "oldest waiting frame has waited this long, even if some sessions' are missing")
    p.add_argument("--stagger", action="store_true",
                   help="--batched: each session's frames due at its own phase of the 80 ms period "
                        "(a thread per session), as real callers arrive; default: all at once")
    p.add_argument("--lm-context", type=int, default=None,
                   help="--batched: LM context in steps (KV cache size; default the model's, 3000 = 240 s)")
    p.add_argument("--plot", default=None, help="--batched: write a PNG of tick time against sessions")
    p.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default 2)")
    p.add_argument("--reply-steps", type=int, default=60,
                   help="--batched: LM steps per Mini-Omni reply (60 = 5.1 s of audio)")
    args = p.parse_args(argv)
    try:
        args.sessions = sorted({int(x) for x in str(args.sessions).split(",") if x.strip()})
        if not args.sessions or min(args.sessions) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--sessions must be positive integers separated by commas, got {args.sessions!r}")

    torch.manual_seed(0)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(args.threads or max(1, min(2, os.cpu_count() or 1)))
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

    if args.batched:
        return _main_batched(args, device, result, t_start, deadline)
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


def _main_batched(args, device: str, result: dict, t_start: float, deadline: float) -> dict:
    result["argv"] = sys.argv[1:]
    runs = []
    moshi_end = deadline if args.only == "moshi" else t_start + 0.6 * (deadline - t_start)
    for k in range(max(1, args.repeats) if args.only != "mini-omni" else 0):
        share = moshi_end if k == args.repeats - 1 else t_start + (moshi_end - t_start) * (k + 1) / args.repeats
        t0 = time.perf_counter()
        try:
            run = bench_moshi_batched(args, device, share)
        except ImportError as e:
            run = {"skipped": f"missing package: {e}"}
        except Exception as e:
            run = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   "traceback": traceback.format_exc(limit=6)}
        run["wall_s"] = round(time.perf_counter() - t0, 2)
        runs.append(run)
        _free(device)
        if "error" in run or "skipped" in run:
            break
    agg: dict = {"runs": runs}
    ok = [r for r in runs if "solo" in r]
    if ok:
        agg["solo_p50_ms"] = _spread([r["solo"]["p50_ms"] for r in ok])
        by_n: dict[int, list[dict]] = {}
        for r in ok:
            for row in r["levels"]:
                if "p50_ms" in row:
                    by_n.setdefault(row["sessions"], []).append(row)
        agg["levels"] = {str(n): {"tick_p50_ms": _spread([x["p50_ms"] for x in rows]),
                                  "tick_p99_ms": _spread([x["p99_ms"] for x in rows]),
                                  "x_solo_p50": _spread([x["x_solo_p50"] for x in rows]),
                                  "real_time_p99_runs": sum(x["real_time_p99"] for x in rows), "runs": len(rows)}
                         for n, rows in sorted(by_n.items())}
        agg["max_real_time_sessions"] = min(r["max_real_time_sessions"] for r in ok)
    result["moshi_batched"] = agg
    if args.only != "moshi":
        t0 = time.perf_counter()
        try:
            omni = bench_mini_omni_batched(args, device, max(deadline, time.perf_counter() + 30))
        except ImportError as e:
            omni = {"skipped": f"missing package: {e}"}
        except Exception as e:
            omni = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                    "traceback": traceback.format_exc(limit=6)}
        omni["wall_s"] = round(time.perf_counter() - t0, 2)
        result["mini_omni_batched"] = omni
    result["total_s"] = round(time.perf_counter() - t_start, 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    if args.plot and ok:
        result["plot"] = _plot_batched(result, args.plot)
    print(summary_batched(result))
    print(f"wrote {args.out}" + (f" and {result['plot']}" if result.get("plot") else ""))
    return result


def _spread(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {}
    return {"median": round(float(np.median(xs)), 3), "min": round(min(xs), 3), "max": round(max(xs), 3),
            "n": len(xs)}


def summary_batched(r: dict) -> str:
    agg = r["moshi_batched"]
    lines = [f"native models through the batch schedulers on {r.get('gpu') or r['device']} (tiny={r['tiny']}, "
             f"torch {r['torch']}), {r['total_s']} s", f"moshi ({len(agg['runs'])} run(s)):"]
    bad = [x for x in agg["runs"] if "solo" not in x]
    for x in bad:
        lines.append(f"  {x.get('skipped') or x.get('error')}")
    if "solo_p50_ms" in agg:
        lines += _summary_moshi_batched(agg)
    o = r.get("mini_omni_batched")
    if o:
        lines.append("mini-omni:")
        if "alone" not in o:
            lines.append(f"  {o.get('skipped') or o.get('error')}")
        else:
            lines.append(f"  one reply alone: {o['alone']['ms_per_step']} ms per step incl. SNAC, first audio "
                         f"{o['alone']['first_audio_ms']} ms (frame {o['frame_ms']} ms)")
            for row in o["levels"]:
                if "error" in row:
                    lines.append(f"  {row['sessions']:>3} replies: {row['error']}")
                    continue
                lines.append(f"  {row['sessions']:>3} replies: decode tick p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms, "
                             f"per reply {row['reply_ms_per_step']['p50_ms']} ms/step (max "
                             f"{row['reply_ms_per_step']['max_ms']}), first audio p50 {row['first_audio']['p50_ms']} ms")
            lines.append(f"  replies decoded in real time: {o['max_real_time_sessions']}")
    return "\n".join(lines)


def _summary_moshi_batched(agg: dict) -> list[str]:
    lines: list[str] = []
    s = agg["solo_p50_ms"]
    lines.append(f"  one session alone (batch 1, MoshiDuplex.step): p50 {s['median']} ms "
                 f"[runs {s['min']}-{s['max']}]")
    for n, row in agg["levels"].items():
        p50, p99, x = row["tick_p50_ms"], row["tick_p99_ms"], row["x_solo_p50"]
        lines.append(f"  {n:>3} sessions: tick p50 {p50['median']} ms [{p50['min']}-{p50['max']}], "
                     f"p99 {p99['median']} ms [{p99['min']}-{p99['max']}], {x['median']}x solo "
                     f"[{x['min']}-{x['max']}], real time in {row['real_time_p99_runs']}/{row['runs']} runs")
    for run in agg["runs"]:
        for row in run.get("levels", []):
            if "error" in row:
                lines.append(f"  {row['sessions']:>3} sessions: {row['error']}")
    lines.append(f"  sessions held in real time (p99 tick <= 80 ms; aligned: no late output, staggered: frame "
                 f"latency p99 <= 160 ms): {agg['max_real_time_sessions']}")
    return lines


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
