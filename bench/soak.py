"""`make bench-soak`: back-to-back synthetic conversations for a long while; does anything leak?

Each conversation is two spoken questions (espeak-ng voices, rotated) through
``voice.talk.talk_file`` in real time, with the session store on (SQLite in a
scratch directory). With ``--webrtc``, every other conversation goes through
the real HTTP service instead (uvicorn on 127.0.0.1, an aiortc peer).

Reported:
* RSS growth: after the first (warm-up) conversation vs at the end, in %, and
  the growth over the second half of the run (the trend once warm);
* asyncio tasks left on the event loop, open file descriptors and threads:
  counts before (after warm-up) and after;
* lost turns: turns the sessions' events ended (``endpoint``) that are not in
  the store, and store write failures.

    python -m bench.soak --minutes 30 [--webrtc] [--out out/soak.json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from voice.audio import read_wav, write_wav

QUESTIONS = [
    "What is the capital of France?", "How far away is the moon?", "Why is the sky blue?",
    "Tell me something interesting about elephants.", "What should I cook for dinner tonight?",
    "How many days are there in a leap year?", "What is a good name for a black cat?",
    "How do I make a cup of green tea?",
]
VOICES = ["en-us+m3", "en-us+f3", "en-gb", "en+f2"]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def conversation_wav(i: int, work: Path) -> Path:
    """Two questions with pauses for the answers (a new pair and voice each time)."""
    parts = [np.zeros(8000, np.float32)]
    for k in range(2):
        text = QUESTIONS[(2 * i + k) % len(QUESTIONS)]
        raw = work / f"q{i}_{k}.raw.wav"
        subprocess.run(["espeak-ng", "-v", VOICES[i % len(VOICES)], "-w", str(raw), text], check=True,
                       capture_output=True)
        parts += [read_wav(raw), np.zeros(16000 * 6, np.float32)]
        raw.unlink()
    path = work / f"conv{i % 8}.wav"
    write_wav(path, np.concatenate(parts), 16000)
    return path


def stored_turns(store, session_id: str) -> set[int]:
    record = store.get_session(session_id)
    return set() if record is None else {t["turn"] for t in record["turns"]}


async def run_file(i: int, wav: Path, work: Path, settings, runtime) -> tuple[str, set[int]]:
    from voice.talk import talk_file

    result = await talk_file(wav, work / "out.wav", None, settings, runtime=runtime)
    return result.events.session_id, {e["turn"] for e in result.events.of("endpoint")}


async def run_webrtc(i: int, wav: Path, base_url: str) -> tuple[str, set[int]]:
    from voice.bench_webrtc import Peer

    audio = read_wav(wav)
    peer = Peer(audio)
    try:
        answer = await peer.connect(base_url)
        await asyncio.wait_for(peer.ready.wait(), 60)
        peer.track.play()
        await asyncio.sleep(len(audio) / 16000 + 1.0)
        deadline = time.monotonic() + 30  # let the last answer finish playing
        while time.monotonic() < deadline:
            states = [m.get("state") for m in peer.messages if m.get("event") == "state"]
            if states and states[-1] == "listening":
                break
            await asyncio.sleep(0.2)
    finally:
        await peer.close()
    return answer["session"], {m["turn"] for m in peer.events("endpoint")}


async def soak(args) -> dict:
    from voice.settings import load_settings
    from voice.store import Store, flush_writers, shared_writer
    from voice.talk import shared_runtime

    work = Path(tempfile.mkdtemp(prefix="voice-soak-"))
    settings = load_settings(data_dir=work / "data")
    runtime = shared_runtime(settings)
    writer = shared_writer(settings)
    server = None
    base_url = None
    if args.webrtc:
        from voice.service import BackgroundServer, create_app

        server = BackgroundServer(create_app(settings, runtime))
        base_url = server.__enter__()

    deadline = time.monotonic() + args.minutes * 60
    samples = []
    baseline = None
    lost = []
    turns_total = 0
    conversations = 0
    loop = asyncio.get_running_loop()
    try:
        while True:
            kind = "webrtc" if args.webrtc and conversations % 2 == 1 else "file"
            wav = conversation_wav(conversations, work)
            started = time.monotonic()
            if kind == "webrtc":
                session_id, ended = await run_webrtc(conversations, wav, base_url)
            else:
                session_id, ended = await run_file(conversations, wav, work, settings, runtime)
            await asyncio.to_thread(flush_writers, 60)
            await asyncio.sleep(1.0 if kind == "webrtc" else 0)  # the server's session task winds down
            await asyncio.to_thread(flush_writers, 60)
            stored = stored_turns(writer.store, session_id)
            missing = sorted(ended - stored)
            if missing:
                lost.append({"session": session_id, "turns": missing})
            turns_total += len(ended)
            conversations += 1
            gc.collect()
            tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
            sample = {"n": conversations, "kind": kind, "seconds": round(time.monotonic() - started, 1),
                      "turns": len(ended), "stored": len(stored & ended), "rss_mb": round(rss_mb(), 1),
                      "fds": open_fds(), "threads": threading.active_count(), "tasks": len(tasks)}
            if server is not None:  # the service's own loop: sessions and their tasks still held
                state = server.app.state.voice
                sample.update(server_sessions=state.registry.live, server_tasks=len(state.tasks))
            samples.append(sample)
            print(json.dumps(sample), flush=True)
            if baseline is None:
                baseline = sample  # after the warm-up conversation: models loaded, caches filled
            if time.monotonic() >= deadline:
                break
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    final = samples[-1]
    half = samples[len(samples) // 2]
    tasks_left = [t.get_name() for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
    store = Store.from_settings(settings)
    try:
        sessions_in_store = len(store.list_sessions(100000))
    finally:
        store.close()
    return {
        "minutes": args.minutes, "conversations": conversations, "webrtc": bool(args.webrtc),
        "turns_ended": turns_total, "turns_lost": sum(len(x["turns"]) for x in lost), "lost": lost,
        "store_write_failures": writer.failed, "sessions_in_store": sessions_in_store,
        "rss_mb": {"after_warmup": baseline["rss_mb"], "half": half["rss_mb"], "end": final["rss_mb"]},
        "rss_growth_pct": round(100 * (final["rss_mb"] - baseline["rss_mb"]) / baseline["rss_mb"], 2),
        "rss_growth_second_half_pct": round(100 * (final["rss_mb"] - half["rss_mb"]) / half["rss_mb"], 2),
        "fds": {"before": baseline["fds"], "after": final["fds"]},
        "threads": {"before": baseline["threads"], "after": final["threads"]},
        "asyncio_tasks": {"before": baseline["tasks"], "after": final["tasks"], "left": tasks_left},
        "server_after": {k: final[k] for k in ("server_sessions", "server_tasks") if k in final},
        "samples": samples, "data_dir": str(work / "data"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="how long to keep talking (default 30)")
    p.add_argument("--webrtc", action="store_true", help="every other conversation over the HTTP/WebRTC service")
    p.add_argument("--out", default="out/soak.json", help="JSON report (default out/soak.json)")
    args = p.parse_args(argv)
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    from loguru import logger
    import sys

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    report = asyncio.run(soak(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    r = report
    print(f"\nsoak: {r['conversations']} conversations in {r['minutes']} min "
          f"({'file + webrtc' if r['webrtc'] else 'file'}), {r['turns_ended']} turns")
    print(f"  RSS      {r['rss_mb']['after_warmup']} MB after warm-up -> {r['rss_mb']['end']} MB "
          f"({r['rss_growth_pct']:+.1f}%; second half {r['rss_growth_second_half_pct']:+.1f}%)")
    print(f"  fds      {r['fds']['before']} -> {r['fds']['after']}")
    print(f"  threads  {r['threads']['before']} -> {r['threads']['after']}")
    print(f"  tasks    {r['asyncio_tasks']['before']} -> {r['asyncio_tasks']['after']} {r['asyncio_tasks']['left']}"
          + (f"; service: {r['server_after']}" if r["server_after"] else ""))
    print(f"  turns    {r['turns_lost']} lost of {r['turns_ended']}; store write failures {r['store_write_failures']}")
    print(f"  report   {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
