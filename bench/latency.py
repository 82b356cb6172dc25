"""`make bench-latency`: voice-to-voice latency of `voice talk` over synthesized questions.

Voice-to-voice = first agent audio minus the end of the user's speech, both read
off the audio itself (energy), not off the agent's own events; the per-stage
breakdown comes from the event log. Also reports model load time and RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from voice.audio import read_wav, write_wav

QUESTIONS = [
    "What is the capital of France?",
    "Can you recommend a good book for the weekend?",
    "How far away is the moon?",
    "What should I cook for dinner tonight?",
    "Why is the sky blue?",
    "How do I make a cup of green tea?",
    "What is a good name for a black cat?",
    "Tell me something interesting about elephants.",
    "How many days are there in a leap year?",
    "What's the best way to learn a new language?",
    "Is it going to be cold in Chicago in January?",
    "What time do people usually eat lunch in Spain?",
    "Could you suggest a fun game for a rainy afternoon?",
    "What does a bee do all day?",
]
VOICES = ["en-us+m3", "en-us+f3", "en-gb", "en+f2", "en-us+m7", "en+f4", "en-us", "en-gb-x-rp"]


THRESH = 0.01  # RMS over 10 ms that counts as sound


def sound_span(audio: np.ndarray, start_s: float = 0.0, rate: int = 16000,
               hop: int = 160) -> tuple[float, float] | None:
    """First and last 10 ms window at or after ``start_s`` whose RMS is above THRESH (s)."""
    a = audio[int(start_s * rate):]
    n = len(a) // hop
    if n == 0:
        return None
    loud = np.flatnonzero(np.sqrt(np.mean(a[: n * hop].reshape(n, hop) ** 2, axis=1)) > THRESH)
    if not len(loud):
        return None
    return start_s + loud[0] * hop / rate, start_s + (loud[-1] + 1) * hop / rate


def espeak_trimmed(text: str, voice: str, speed: int, rate: int = 16000) -> np.ndarray:
    """espeak-ng speech of ``text`` at ``rate``, leading and trailing silence cut."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "q.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text],
                       check=True, capture_output=True)
        speech = read_wav(raw, rate)
    span = sound_span(speech, rate=rate)
    if span is None:
        raise RuntimeError(f"espeak-ng produced silence for {text!r}")
    return speech[int(span[0] * rate):int(span[1] * rate)]


def synth(text: str, voice: str, speed: int, path: Path) -> Path:
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True)
    audio = read_wav(raw)
    write_wav(path, np.concatenate([np.zeros(8000, np.float32), audio, np.zeros(16000 * 7, np.float32)]), 16000)
    return path


def pct(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


async def run(n: int, out_dir: Path) -> dict:
    from voice.settings import load_settings
    from voice.talk import shared_runtime, talk_file

    settings = load_settings()
    t0 = time.perf_counter()
    runtime = shared_runtime(settings)
    load_s = time.perf_counter() - t0
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)]
        voice = VOICES[i % len(VOICES)]
        wav = synth(q, voice, int(rng.integers(145, 185)), out_dir / f"q{i:02d}.wav")
        result = await talk_file(wav, out_dir / f"a{i:02d}.wav", out_dir / f"e{i:02d}.jsonl", settings, runtime=runtime)
        user = sound_span(read_wav(wav))
        agent_audio = read_wav(out_dir / f"a{i:02d}.wav")
        after = agent_audio[int(user[1] * 16000):]
        agent = sound_span(after)
        m = (result.turn_metrics() or [{}])[0]
        row = {"question": q, "voice": voice, "v2v": None if agent is None else round(agent[0], 3),
               **{k: m.get(k) for k in ("endpoint_delay", "asr_time", "llm_ttft", "tts_first_audio", "voice_to_voice")}}
        rows.append(row)
        print(f"{i + 1:2d}/{n} v2v {row['v2v']}s  {q}  [{voice}]", flush=True)
    v2v = [r["v2v"] for r in rows if r["v2v"] is not None]
    stages = {k: statistics.median([r[k] for r in rows if r.get(k) is not None] or [float("nan")])
              for k in ("endpoint_delay", "asr_time", "llm_ttft", "tts_first_audio")}
    return {
        "n": n, "answered": len(v2v),
        "v2v_median": round(statistics.median(v2v), 3) if v2v else None,
        "v2v_p90": round(pct(v2v, 90), 3), "v2v_min": round(min(v2v), 3) if v2v else None,
        "v2v_max": round(max(v2v), 3) if v2v else None,
        "stage_medians": {k: round(v, 3) for k, v in stages.items()},
        "models_load_s": round(load_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--out", default="out/bench-latency")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory():
        summary = asyncio.run(run(args.n, out))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    s = summary
    print(f"\nvoice-to-voice over {s['answered']}/{s['n']} questions: median {s['v2v_median']}s, "
          f"p90 {s['v2v_p90']}s, range {s['v2v_min']}-{s['v2v_max']}s")
    print("stage medians (s): " + ", ".join(f"{k} {v}" for k, v in s["stage_medians"].items()))
    print(f"models loaded in {s['models_load_s']}s, peak RSS {s['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
