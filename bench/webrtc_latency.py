"""Voice-to-voice latency over loopback WebRTC versus in process, on the same questions.

For each synthesized question (espeak-ng; a varied voice per question) the agent
hears the same input.wav twice: once through ``voice.talk.talk_file`` (in
process, no transport) and once through ``voice.bench_webrtc.talk_file_webrtc``
(the real ``POST /api/offer`` endpoint, Opus over RTP on 127.0.0.1, an aiortc
peer as the caller). Both write an output.wav on the input's clock.

Reported per transport (median, p90, min-max over the questions):
  * heard  — the caller's view: first agent audio in output.wav minus the end of
    the question in input.wav, both read off the audio (energy), so the WebRTC
    figure includes encoding, RTP, jitter buffering and decoding both ways;
  * agent  — the agent's own ``turn_metrics.voice_to_voice`` (end of speech as
    its VAD saw it to the first audio it handed to its output transport).

    python -m bench.webrtc_latency [--n 8] [--out out/webrtc_latency] [--server subprocess|inprocess]
                                   [--client-hold 1]

``--server subprocess`` (default) runs the service as ``voice serve`` in its
own process, so the caller's Opus/RTP work is not in the agent's process (as
with a browser); ``inprocess`` serves the app inside the benchmark's process. ``--client-hold``
is the caller's receive buffer in 20 ms packets (default 1, modelled on
Chromium's jitter buffer on loopback; see ``voice.bench_webrtc``).

A benchmark, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from voice.audio import read_wav, write_wav

from bench.latency import QUESTIONS, VOICES, espeak_trimmed, sound_span

RATE = 16000
LEAD_S = 0.5
TAIL_S = 7.0


def synth_question(text: str, voice: str, speed: int, path: Path) -> tuple[Path, float]:
    """input.wav = 0.5 s silence + the question (trimmed) + 7 s silence; returns (path, end of speech in s)."""
    speech = espeak_trimmed(text, voice, speed, RATE)
    speech = speech * (0.7 / max(float(np.abs(speech).max()), 1e-6))
    audio = np.concatenate([np.zeros(int(LEAD_S * RATE), np.float32), speech.astype(np.float32),
                            np.zeros(int(TAIL_S * RATE), np.float32)])
    write_wav(path, audio, RATE)
    return path, LEAD_S + len(speech) / RATE


def stats(values: list[float]) -> str:
    if not values:
        return "n=0"
    v = np.asarray(values)
    return (f"median {np.median(v):.3f}s  p90 {np.percentile(v, 90):.3f}s  "
            f"min {v.min():.3f}s  max {v.max():.3f}s  (n={len(v)})")


@contextlib.asynccontextmanager
async def service_subprocess(timeout_s: float = 60.0, env: dict[str, str] | None = None):
    """`voice serve` on a free loopback port in its own process; yields (base URL, process).

    ``env`` adds settings as environment variables (``VOICE_MAX_SESSIONS=8`` ...).
    """
    import os

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "voice.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"voice serve exited with {proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{url}/health")).json().get("ready"):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("voice serve did not become ready")
                await asyncio.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            proc.kill()


async def run(n: int, out: Path, seed: int, server: str = "subprocess", client_hold: int | None = None) -> dict:
    if server == "subprocess":
        async with service_subprocess() as (url, _):
            return await _run(n, out, seed, url, client_hold)
    return await _run(n, out, seed, None, client_hold)


async def _run(n: int, out: Path, seed: int, service_url: str | None, client_hold: int | None = None) -> dict:
    from voice.bench_webrtc import CLIENT_JITTER_PREFETCH, talk_file_webrtc, talk_file_webrtc_remote
    from voice.settings import load_settings
    from voice.talk import shared_runtime, talk_file

    settings = load_settings()
    runtime = shared_runtime(settings)
    rng = np.random.default_rng(seed)
    hold = CLIENT_JITTER_PREFETCH if client_hold is None else client_hold
    rows = []
    for i in range(n):
        text = QUESTIONS[i % len(QUESTIONS)]
        voice = VOICES[int(rng.integers(len(VOICES)))]
        speed = int(rng.integers(150, 181))
        d = out / f"{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        wav, speech_end = synth_question(text, voice, speed, d / "input.wav")
        row = {"i": i, "text": text, "voice": voice, "speed": speed, "speech_end": round(speech_end, 3)}
        # Alternate the order so neither transport always runs on a warmer machine.
        order = ("inprocess", "webrtc") if i % 2 == 0 else ("webrtc", "inprocess")
        for transport in order:
            if transport == "inprocess":
                result = await talk_file(wav, d / "output_inprocess.wav", d / "events_inprocess.jsonl", settings,
                                         runtime=runtime)
            elif service_url is not None:
                result = await talk_file_webrtc_remote(wav, d / "output_webrtc.wav", d / "events_webrtc.jsonl",
                                                       service_url, jitter_prefetch=hold)
            else:
                result = await talk_file_webrtc(wav, d / "output_webrtc.wav", d / "events_webrtc.jsonl", settings,
                                                runtime=runtime, jitter_prefetch=hold)
            output = read_wav(d / f"output_{transport}.wav", RATE)
            span = sound_span(output, speech_end)
            metrics = result.turn_metrics()
            row[transport] = {
                "heard": round(span[0] - speech_end, 4) if span else None,
                "agent": metrics[0].get("voice_to_voice") if metrics else None,
                "reply": " ".join(e["text"].strip() for e in result.events.of("agent_text")),
            }
        rows.append(row)
        print(f"[{i + 1}/{n}] {text!r} ({voice}, {speed} wpm): "
              + "  ".join(f"{t} heard {row[t]['heard']} agent {row[t]['agent']}" for t in ("inprocess", "webrtc")),
              flush=True)
    return {"rows": rows, "client_hold": hold}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8, help="questions (default 8)")
    p.add_argument("--out", default="out/webrtc_latency", help="where the WAVs, events and results go")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--server", choices=["subprocess", "inprocess"], default="subprocess",
                   help="where the service runs (default: its own process, like a real deployment)")
    p.add_argument("--client-hold", type=int, default=None,
                   help="the caller's receive buffer in 20 ms packets (default 1, like Chromium on loopback)")
    args = p.parse_args(argv)

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    out = Path(args.out)
    data = asyncio.run(run(args.n, out, args.seed, args.server, args.client_hold))
    rows = data["rows"]
    summary = {}
    print()
    for transport in ("inprocess", "webrtc"):
        heard = [r[transport]["heard"] for r in rows if r[transport]["heard"] is not None]
        agent = [r[transport]["agent"] for r in rows if r[transport]["agent"] is not None]
        summary[transport] = {
            "heard": {"median": float(np.median(heard)) if heard else None,
                      "p90": float(np.percentile(heard, 90)) if heard else None, "n": len(heard)},
            "agent": {"median": float(np.median(agent)) if agent else None,
                      "p90": float(np.percentile(agent, 90)) if agent else None, "n": len(agent)},
        }
        # heard - agent per run: the path outside the agent's own clock (transport, buffering, VAD lag),
        # free of the reply-to-reply variance of ASR/LLM/TTS.
        outside = [r[transport]["heard"] - r[transport]["agent"] for r in rows
                   if r[transport]["heard"] is not None and r[transport]["agent"] is not None]
        summary[transport]["heard_minus_agent"] = {"median": float(np.median(outside)) if outside else None,
                                                   "p90": float(np.percentile(outside, 90)) if outside else None}
        print(f"{transport:>9}  heard v2v: {stats(heard)}")
        print(f"{'':>9}  agent v2v: {stats(agent)}")
        print(f"{'':>9}  heard - agent: {stats(outside)}")
    both = [(r["webrtc"]["heard"] - r["inprocess"]["heard"]) for r in rows
            if r["webrtc"]["heard"] is not None and r["inprocess"]["heard"] is not None]
    print(f"webrtc - inprocess (heard, per question): {stats(both)}")
    summary["webrtc_minus_inprocess_heard"] = {"median": float(np.median(both)) if both else None,
                                               "p90": float(np.percentile(both, 90)) if both else None}
    (out / "results.json").write_text(json.dumps({"summary": summary, **data}, indent=2))
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
