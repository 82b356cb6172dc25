"""Full-Duplex-Bench v1 metrics, computed the way the reference scripts compute them.

Take-over (TOR), per sample, from the word-timed ``output.json``:
  no words -> 0; (last word end - first word start) < 1 s and <= 3 words -> 0;
  otherwise 1 (so exactly 1.0 s, or 4 words however short, is a take-over).
Latency: first word start - reference time (``s`` of turn_taking.json,
  ``e`` of interrupt.json), clipped at 0, only for samples with TOR 1.
Relevance: an LLM judge rates the reply to an interruption 0-5 (``judge_relevance``);
  no judge configured -> None ("not measured").
Backchannel: Silero VAD segments of output.wav (``vad_segments``), each classified
  by its duration and the words whose timestamps fall on it (``classify_segments``);
  see ``backchannel_sample`` for the per-sample rule and ``backchannel_jsd`` for JSD.
  JSD is 1 for a sample with no counted segment and None (not measured) without
  the human distribution; task numbers are plain means over the scored samples.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np

from bench.fdb.layout import BenchError

TURN_MIN_S = 1.0          # a reply shorter than this ...
TURN_MAX_WORDS = 3        # ... with at most this many words is not a take-over
BC_LONG_S = 3.0           # a VAD segment longer than this is a take-over
BC_SHORT_S = 1.0          # a backchannel is shorter than this ...
BC_MAX_WORDS = 2          # ... and has at most this many words
BC_TURN_WORDS = 3         # a segment with more words than this is a take-over
BIN_S = 0.2               # JSD histogram bin
EPSILON = 1e-10           # added to every bin of the predicted histogram

# Silero segmentation, the defaults of silero-vad's get_speech_timestamps, which
# the reference calls with its defaults: speech starts at p >= 0.5, ends after
# >= 100 ms with p < 0.35 (threshold - 0.15); segments of <= 250 ms are dropped;
# 30 ms of padding each side; seconds rounded to 0.1 s (return_seconds=True).
VAD_RATE = 16000
VAD_WINDOW = 512
VAD_THRESHOLD = 0.5
VAD_MIN_SILENCE_MS = 100
VAD_MIN_SPEECH_MS = 250
VAD_PAD_MS = 30
VAD_DECIMALS = 1


# --------------------------------------------------------------- take-over & latency

def words_of(output: dict[str, Any]) -> list[dict[str, Any]]:
    """The word chunks of an output.json object (a missing key is no words)."""
    chunks = output.get("chunks") or []
    return [c for c in chunks if c.get("timestamp") and c["timestamp"][0] is not None]


def _end(chunk: dict[str, Any]) -> float:
    start, end = chunk["timestamp"][0], chunk["timestamp"][1]
    return float(start if end is None else end)


def take_over(chunks: list[dict[str, Any]]) -> int:
    """FDB's per-sample take-over: 1 when the output is a turn, 0 when silent or a short blip."""
    if not chunks:
        return 0
    duration = _end(chunks[-1]) - float(chunks[0]["timestamp"][0])
    if duration < TURN_MIN_S and len(chunks) <= TURN_MAX_WORDS:
        return 0
    return 1


def latency(chunks: list[dict[str, Any]], reference_time: float) -> float | None:
    """First word start - reference time, clipped at 0; None when the sample is not a take-over."""
    if take_over(chunks) == 0:
        return None
    return max(0.0, float(chunks[0]["timestamp"][0]) - float(reference_time))


def score_turn(output: dict[str, Any], reference_time: float | None = None) -> dict[str, Any]:
    """Per-sample TOR (and latency when a reference time is given) of one output.json."""
    chunks = words_of(output)
    row: dict[str, Any] = {"tor": take_over(chunks), "n_words": len(chunks),
                           "first_word_s": float(chunks[0]["timestamp"][0]) if chunks else None}
    if reference_time is not None:
        row["latency"] = latency(chunks, reference_time)
    return row


# --------------------------------------------------------------- Silero VAD segments

@functools.lru_cache(maxsize=1)
def _silero_path() -> str:
    import pipecat.audio.vad.silero as silero

    path = Path(silero.__file__).parent / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"Silero VAD model not found at {path}")
    return str(path)


def speech_probs(audio: np.ndarray) -> np.ndarray:
    """Silero speech probability of each 512-sample window of 16 kHz float audio (last one zero-padded)."""
    from pipecat.audio.vad.silero import SileroOnnxModel

    model = SileroOnnxModel(_silero_path(), force_onnx_cpu=True)
    model.reset_states()
    x = np.asarray(audio, dtype=np.float32)
    probs = []
    for i in range(0, len(x), VAD_WINDOW):
        chunk = x[i:i + VAD_WINDOW]
        if len(chunk) < VAD_WINDOW:
            chunk = np.pad(chunk, (0, VAD_WINDOW - len(chunk)))
        probs.append(float(np.asarray(model(chunk, VAD_RATE)).reshape(-1)[0]))
    return np.asarray(probs, dtype=np.float32)


def segments_from_probs(probs: np.ndarray, n_samples: int, *, threshold: float = VAD_THRESHOLD,
                        min_silence_ms: int = VAD_MIN_SILENCE_MS, min_speech_ms: int = VAD_MIN_SPEECH_MS,
                        pad_ms: int = VAD_PAD_MS, rate: int = VAD_RATE, window: int = VAD_WINDOW,
                        decimals: int | None = VAD_DECIMALS) -> list[tuple[float, float]]:
    """Speech segments (seconds) from per-window probabilities, as silero-vad's get_speech_timestamps."""
    neg_threshold = max(threshold - 0.15, 0.01)
    min_silence = rate * min_silence_ms / 1000
    min_speech = rate * min_speech_ms / 1000
    pad = rate * pad_ms / 1000
    speeches: list[list[float]] = []
    triggered, start, temp_end = False, 0, 0
    for i, p in enumerate(probs):
        pos = window * i
        if p >= threshold and temp_end:
            temp_end = 0
        if p >= threshold and not triggered:
            triggered, start = True, pos
            continue
        if p < neg_threshold and triggered:
            if not temp_end:
                temp_end = pos
            if pos - temp_end < min_silence:
                continue
            if temp_end - start > min_speech:
                speeches.append([start, temp_end])
            triggered, temp_end = False, 0
    if triggered and n_samples - start > min_speech:
        speeches.append([start, n_samples])
    for i, sp in enumerate(speeches):
        if i == 0:
            sp[0] = int(max(0, sp[0] - pad))
        if i != len(speeches) - 1:
            gap = speeches[i + 1][0] - sp[1]
            if gap < 2 * pad:
                sp[1] += int(gap // 2)
                speeches[i + 1][0] = int(max(0, speeches[i + 1][0] - gap // 2))
            else:
                sp[1] = int(min(n_samples, sp[1] + pad))
                speeches[i + 1][0] = int(max(0, speeches[i + 1][0] - pad))
        else:
            sp[1] = int(min(n_samples, sp[1] + pad))
    length_s = n_samples / rate
    if decimals is None:
        return [(s / rate, e / rate) for s, e in speeches]
    return [(max(round(s / rate, decimals), 0), min(round(e / rate, decimals), length_s)) for s, e in speeches]


def vad_segments(audio: np.ndarray, **kwargs: Any) -> list[tuple[float, float]]:
    """Silero VAD speech segments (start_s, end_s) of 16 kHz float audio."""
    return segments_from_probs(speech_probs(audio), len(audio), **kwargs)


# --------------------------------------------------------------- backchannel

def words_in_span(chunks: list[dict[str, Any]], start: float, end: float) -> list[str]:
    """Words attributed to a VAD segment by their timestamps (the reference's overlap rule)."""
    out = []
    for c in chunks:
        ws, we = c["timestamp"][0], c["timestamp"][1]
        if ws is None or (we is None and ws < end):
            continue
        if we is None:
            we = ws
        if (ws >= start and we <= end) or (ws <= end < we) or (ws <= start < we):
            out.append(c["text"])
    return out


def classify_segments(segments: list[tuple[float, float]],
                      chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Label each VAD segment: "long" (> 3 s), "backchannel" (< 1 s, <= 2 words) or "turn" (anything else)."""
    out = []
    for start, end in segments:
        duration = end - start
        words = words_in_span(chunks, start, end)
        if duration > BC_LONG_S:
            kind = "long"
        elif len(words) <= BC_MAX_WORDS and duration < BC_SHORT_S:
            kind = "backchannel"
        else:  # > 3 words, or 1-3 s, or 3 words
            kind = "turn"
        out.append({"start": start, "end": end, "duration": round(duration, 3), "words": words, "kind": kind})
    return out


def backchannel_sample(labelled: list[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    """Per-sample backchannel TOR and backchannels from classified segments.

    ``tor`` / ``backchannels`` follow the reference's eval_backchannel.py (the
    v1_v1.5 script) over segments in time order: a long segment sets TOR 1 and
    ends the scan; every other segment overwrites TOR with its own verdict
    (backchannel -> 0, else 1) and is counted in ``backchannels`` whatever its
    verdict, so a 1-3 s reply before the first long one still counts toward
    frequency and JSD. (The older v1.0-era script instead dropped the segments
    seen so far at each non-backchannel one; TOR is the same under both.)
    ``tor_strict`` / ``backchannels_strict`` read fdb.md's wording literally:
    TOR 1 if any segment is not a backchannel, and every short segment counts.
    Frequency = backchannels / output duration (s).
    """
    tor, kept = 0, []
    for seg in labelled:
        if seg["kind"] == "long":
            tor = 1
            break
        tor = 0 if seg["kind"] == "backchannel" else 1
        kept.append((seg["start"], seg["end"]))
    strict = [(s["start"], s["end"]) for s in labelled if s["kind"] == "backchannel"]
    tor_strict = int(any(s["kind"] != "backchannel" for s in labelled))
    dur = max(float(duration_s), 1e-9)
    return {"tor": tor, "backchannels": kept, "frequency": len(kept) / dur,
            "tor_strict": tor_strict, "backchannels_strict": strict, "frequency_strict": len(strict) / dur}


def backchannel_histogram(intervals: list[tuple[float, float]], duration_s: float) -> np.ndarray:
    """Normalized 0.2 s-bin histogram: every bin a backchannel touches counts 1, plus epsilon."""
    hist = np.zeros(int(duration_s / BIN_S) + 1)
    for start, end in intervals:
        for i in range(int(start / BIN_S), int(end / BIN_S) + 1):
            if i < len(hist):
                hist[i] += 1
    hist = hist + EPSILON
    return hist / hist.sum()


def backchannel_jsd(intervals: list[tuple[float, float]], duration_s: float,
                    human: list[float] | np.ndarray | None) -> float | None:
    """SciPy Jensen-Shannon distance to the human distribution; 1 with no backchannel; None without a reference."""
    if human is None:
        return None
    if not intervals:
        return 1.0
    from scipy.spatial.distance import jensenshannon

    pred = backchannel_histogram(intervals, duration_s)
    gt = np.asarray(human, dtype=np.float64)
    # the reference stretches the human distribution to the predicted length (linear interpolation)
    gt = np.interp(np.linspace(0, 1, len(pred)), np.linspace(0, 1, len(gt)), gt) if len(gt) > 1 \
        else np.full(len(pred), float(gt[0]) if len(gt) else 0.0)
    return float(jensenshannon(pred, gt))


def score_backchannel(output_audio: np.ndarray, output: dict[str, Any],
                      human: list[float] | None = None, rate: int = VAD_RATE) -> dict[str, Any]:
    """Everything the backchannel task measures for one sample (16 kHz float output audio)."""
    duration = len(output_audio) / rate
    labelled = classify_segments(vad_segments(output_audio), words_of(output))
    row = backchannel_sample(labelled, duration)
    row["jsd"] = backchannel_jsd(row["backchannels"], duration, human)
    row["jsd_strict"] = backchannel_jsd(row["backchannels_strict"], duration, human)
    row["segments"] = labelled
    row["duration_s"] = round(duration, 3)
    return row


def human_distribution(gt: dict[str, Any] | None, sample_name: str) -> list[float] | None:
    """The human backchannel distribution for a sample from icc_gt_distribution.json (keyed by folder name)."""
    if not gt:
        return None
    value = gt.get(sample_name)
    return list(value) if value is not None else None


# --------------------------------------------------------------- relevance judge

JUDGE_SYSTEM = """\
A user and an AI are in a spoken conversation. The user spoke first and the AI
began to answer; while the AI was speaking, the user interrupted it. Rate how
well the AI's response after the interruption addresses the interrupting turn,
on a scale from 0 (worst) to 5 (best):
- 0: totally unrelated to the interrupting turn.
- 1: not related to the interrupting turn.
- 2: slightly related to the interrupting turn.
- 3: related to the interrupting turn.
- 4: highly related to the interrupting turn.
- 5: perfectly related to the interrupting turn.

First briefly analyze the interrupting turn and the AI's response, then answer
in exactly this format:
Analysis: [your analysis].
I would rate the AI's response as [rating]."""

_RATING = re.compile(r"rate the AI'?s response as\s*\[?\s*(\d+)", re.IGNORECASE)


def parse_rating(text: str) -> int | None:
    """The 0-5 rating in a judge reply, or None when there is none."""
    found = _RATING.findall(text or "")
    if not found:
        return None
    score = int(found[-1])
    return score if 0 <= score <= 5 else None


def judge_relevance(context: str, interrupt: str, reply: str, base_url: str | None,
                    model: str | None, api_key: str | None = None, *,
                    timeout: float = 60.0, attempts: int = 3) -> int | None:
    """0-5 relevance of ``reply`` to ``interrupt`` from an OpenAI-compatible chat endpoint.

    ``base_url`` is the API root, as the openai client takes it (e.g.
    ``http://localhost:8000/v1``); a full ``.../chat/completions`` URL works too.
    Returns None when no judge is configured (not measured); raises
    BenchError when the judge is configured but fails or never gives a rating.
    """
    if not base_url or not model:
        return None
    import httpx

    url = base_url.rstrip("/")
    if not url.endswith("/chat/completions"):
        url += "/chat/completions"
    user = (f"- Contextual user turn: {context}\n- User interrupting turn: {interrupt}\n"
            f"- AI's response: {reply}")
    body = {"model": model, "temperature": 0.0, "max_tokens": 400,
            "messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    last = "no reply"
    for _ in range(max(1, attempts)):
        try:
            r = httpx.post(url, json=body, headers=headers, timeout=timeout)
            r.raise_for_status()
            text = r.json()["choices"][0]["message"]["content"]
        except httpx.HTTPStatusError as e:
            last = f"HTTP {e.response.status_code} from {url}"
            continue
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as e:
            last = f"{type(e).__name__}: {e}"
            continue
        score = parse_rating(text)
        if score is not None:
            return score
        last = f"no rating in judge reply: {text[:80]!r}"
    raise BenchError(f"relevance judge failed: {last}")


# --------------------------------------------------------------- task summaries

def _mean(values: list[float | int | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize(task: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Task-level numbers from per-sample rows; a mean over nothing is None ("not measured")."""
    out: dict[str, Any] = {"task": task, "n": len(rows), "tor": _mean([r.get("tor") for r in rows])}
    if task in ("smooth_turn_taking", "user_interruption"):
        lat = [r.get("latency") for r in rows if r.get("tor") == 1]
        out["latency"] = _mean(lat)
        out["n_latency"] = sum(v is not None for v in lat)
    if task == "user_interruption":
        rel = [r.get("relevance") for r in rows if r.get("tor") == 1]
        out["relevance"] = _mean(rel)
        out["n_relevance"] = sum(v is not None for v in rel)
    if task == "backchannel":
        out["frequency"] = _mean([r.get("frequency") for r in rows])
        out["jsd"] = _mean([r.get("jsd") for r in rows])
        out["n_jsd"] = sum(r.get("jsd") is not None for r in rows)
        out["tor_strict"] = _mean([r.get("tor_strict") for r in rows])
        out["frequency_strict"] = _mean([r.get("frequency_strict") for r in rows])
        out["jsd_strict"] = _mean([r.get("jsd_strict") for r in rows])
    return out
