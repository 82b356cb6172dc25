"""Run Full-Duplex-Bench v1 against the live agent and score it.

For every sample: the agent hears input.wav in real time (``voice.talk.talk_file``
in process, or ``voice.bench_webrtc.talk_file_webrtc`` over WebRTC) and writes a
time-synchronous 16 kHz output.wav plus events.jsonl; the output is transcribed
into output.json and scored. Results: ``OUT/metrics.json`` (config, one summary
per task set, every per-sample row), ``OUT/samples.csv``, ``OUT/report.md``.
"""

from __future__ import annotations

import asyncio
import csv
import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.fdb import metrics
from bench.fdb.layout import (EVENTS, OUTPUT_JSON, OUTPUT_WAV, BenchError, Sample, find_task_sets,
                              prepare_output, read_json, read_samples, write_json)
from bench.fdb.transcribe import asr_offset, transcribe_audio

TRANSPORTS = {
    "inprocess": ("voice.talk", "talk_file"),
    "webrtc": ("voice.bench_webrtc", "talk_file_webrtc"),
}

TalkFn = Callable[[Path, Path, Path, Any], Any]


def talk_function(transport: str) -> TalkFn:
    """The async ``(input_wav, output_wav, events_path, settings)`` runner of a transport."""
    if transport not in TRANSPORTS:
        raise BenchError(f"unknown transport {transport!r}; choose from {', '.join(TRANSPORTS)}")
    module_name, attr = TRANSPORTS[transport]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        raise BenchError(f"transport {transport!r} needs {module_name}.{attr}, which this build does not have") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise BenchError(f"transport {transport!r} needs {module_name}.{attr}, which this build does not have")
    return fn


def judge_config(base_url: str | None = None, model: str | None = None,
                 api_key: str | None = None) -> dict[str, str | None] | None:
    """The relevance judge settings, or None when no judge is configured."""
    if not base_url or not model:
        return None
    return {"base_url": base_url, "model": model, "api_key": api_key}


def score_sample(sample: Sample, out: Path, transcriber: Any, judge: dict | None = None,
                 gt_distribution: dict | None = None) -> dict[str, Any]:
    """Transcribe ``out/output.wav`` into output.json and compute the sample's FDB numbers."""
    from voice.audio import read_wav

    audio = read_wav(out / OUTPUT_WAV, rate=16000)
    output = transcribe_audio(audio, transcriber, asr_offset(sample.task, sample.meta))
    write_json(out / OUTPUT_JSON, output)
    row: dict[str, Any] = {"set": sample.set_name, "task": sample.task, "sample": sample.name,
                           "text": output["text"]}
    if sample.task == "backchannel":
        bc = metrics.score_backchannel(audio, output, metrics.human_distribution(gt_distribution, sample.name))
        row.update({k: bc[k] for k in ("tor", "frequency", "jsd", "tor_strict", "frequency_strict",
                                        "jsd_strict", "duration_s")})
        row["n_backchannels"] = len(bc["backchannels"])
        row["n_backchannels_strict"] = len(bc["backchannels_strict"])
        row["segments"] = bc["segments"]
        return row
    row.update(metrics.score_turn(output, sample.reference_time))
    if sample.task == "user_interruption":
        row["relevance"] = None
        if judge is not None and row["tor"] == 1:
            try:
                row["relevance"] = metrics.judge_relevance(
                    sample.meta[0]["context"], sample.meta[0]["interrupt"], output["text"],
                    judge["base_url"], judge["model"], judge.get("api_key"))
            except BenchError as e:
                row["relevance_error"] = str(e)
    return row


# FDB scores output.wav only over the input's span, so the session ends with the
# input instead of waiting for the agent to finish a reply nobody will score.
TAIL_S = 0.0


def _talk(fn: TalkFn, sample: Sample, out: Path, settings: Any, loop: asyncio.AbstractEventLoop) -> None:
    result = fn(sample.input_wav, out / OUTPUT_WAV, out / EVENTS, settings, max_tail_s=TAIL_S)
    if asyncio.iscoroutine(result):
        loop.run_until_complete(result)
    if not (out / OUTPUT_WAV).is_file():
        raise BenchError(f"the agent wrote no {OUTPUT_WAV} for {sample.path}")
    fit_output_length(out / OUTPUT_WAV, sample.input_wav)


def _duration(path: Path) -> float:
    import soundfile as sf

    try:
        return sf.info(str(path)).duration
    except Exception:  # noqa: BLE001 - an unreadable input is reported per sample already
        return 0.0


def fit_output_length(output_wav: Path, input_wav: Path) -> None:
    """Make output.wav exactly as long as the input at 16 kHz, as FDB requires.

    The agent may keep talking after the input ends; FDB scores only what falls
    inside the input's span (a reply after the end of a pause-handling sample is
    not a take-over), so the longer original is kept as output_full.wav.
    """
    import soundfile as sf

    from voice.audio import read_wav, write_wav

    n_in = len(read_wav(input_wav, rate=16000))
    audio = read_wav(output_wav, rate=16000)
    info = sf.info(str(output_wav))
    if len(audio) == n_in and info.samplerate == 16000 and info.channels == 1:
        return
    if len(audio) > n_in:
        write_wav(output_wav.with_name("output_full.wav"), audio, 16000)
    fitted = audio[:n_in] if len(audio) >= n_in else np.pad(audio, (0, n_in - len(audio)))
    write_wav(output_wav, fitted, 16000)


def _summary_table(summaries: list[dict[str, Any]]):
    from rich.table import Table

    def f(v: Any, nd: int = 3) -> str:
        return "not measured" if v is None else f"{v:.{nd}f}"

    table = Table(title="Full-Duplex-Bench v1")
    for col in ("set", "n", "TOR", "latency s", "relevance", "freq", "JSD"):
        table.add_column(col, justify="left" if col == "set" else "right")
    for s in summaries:
        t = s["task"]
        table.add_row(s["set"], str(s["n"]), f(s["tor"]),
                      f(s.get("latency")) if t in ("smooth_turn_taking", "user_interruption") else "",
                      f(s.get("relevance"), 2) if t == "user_interruption" else "",
                      f(s.get("frequency")) if t == "backchannel" else "",
                      f(s.get("jsd")) if t == "backchannel" else "")
    return table


def write_samples_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = ["set", "task", "sample", "tor", "latency", "relevance", "first_word_s", "n_words",
            "frequency", "jsd", "n_backchannels", "tor_strict", "n_backchannels_strict", "error", "text"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})


def run_suite(data_dir: str | Path, tasks: list[str] | tuple[str, ...], pipeline: str, out_dir: str | Path,
              transport: str = "inprocess", *, settings: Any = None, config_file: str | Path | None = None,
              judge: dict | None = None, gt_distribution: str | Path | dict | None = None,
              reuse_output: bool = False, limit: int | None = None, console: Any = None,
              report: bool = True) -> dict[str, Any]:
    """Run every sample of ``tasks`` in ``data_dir`` through the agent, score, write results; return metrics.json's data.

    ``reuse_output``: score an output.wav already in OUT/<set>/<n>/ instead of
    talking again (also the way to score another system's outputs).
    ``gt_distribution``: icc_gt_distribution.json (path or parsed) for the backchannel JSD.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.fdb.transcribe import load_transcriber
    from voice.settings import load_settings

    console = console or Console()
    out_root = Path(out_dir)
    sets = find_task_sets(data_dir, list(tasks))
    plan = [(ts, read_samples(ts)[:limit] if limit else read_samples(ts)) for ts in sets]
    gt = read_json(Path(gt_distribution)) if isinstance(gt_distribution, (str, Path)) else gt_distribution
    settings = settings or load_settings(config_file, pipeline=pipeline)
    talk = None if reuse_output else talk_function(transport)
    transcriber = load_transcriber(settings)
    out_root.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    started = time.time()
    loop = asyncio.new_event_loop()  # one loop for the whole run: the agent's shared models may hold loop state
    total = sum(len(s) for _, s in plan)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        overall = progress.add_task("all samples", total=total)
        for ts, samples in plan:
            bar = progress.add_task(ts.name, total=len(samples))
            for sample in samples:
                out = prepare_output(out_root, sample)
                try:
                    t0 = time.perf_counter()
                    if talk is not None:
                        _talk(talk, sample, out, settings, loop)
                    elif not (out / OUTPUT_WAV).is_file():
                        raise BenchError(f"--reuse-output: no {OUTPUT_WAV} in {out}")
                    t1 = time.perf_counter()
                    row = score_sample(sample, out, transcriber, judge, gt)
                    # Where the harness's time goes: the real-time talk, then the scoring.
                    row["talk_s"] = round(t1 - t0, 2)
                    row["score_s"] = round(time.perf_counter() - t1, 2)
                except ValueError as e:  # BenchError, AudioError, ConfigError: one line, next sample
                    row = {"set": sample.set_name, "task": sample.task, "sample": sample.name, "error": str(e)}
                    console.print(f"[red]{sample.set_name}/{sample.name}: {e}[/red]")
                rows.append(row)
                progress.advance(bar)
                progress.advance(overall)
    loop.close()

    summaries = []
    for ts, _ in plan:
        ok = [r for r in rows if r["set"] == ts.name and "error" not in r]
        s = metrics.summarize(ts.task, ok)
        s["set"] = ts.name
        s["n_failed"] = sum(1 for r in rows if r["set"] == ts.name and "error" in r)
        summaries.append(s)
    wall = time.time() - started
    audio_s = sum(_duration(sample.input_wav) for _, samples in plan for sample in samples)
    result = {
        "benchmark": "Full-Duplex-Bench v1",
        "config": {"data_dir": str(data_dir), "tasks": list(tasks), "pipeline": pipeline, "transport": transport,
                   "reuse_output": reuse_output, "judge": None if judge is None else judge.get("model"),
                   "gt_distribution": gt is not None, "asr": settings.asr.model_dump(mode="json"),
                   "wall_s": round(wall, 1), "audio_s": round(audio_s, 1),
                   "rtf": round(wall / audio_s, 3) if audio_s else None},
        "summaries": summaries,
        "samples": rows,
    }
    write_json(out_root / "metrics.json", result)
    write_samples_csv(out_root / "samples.csv", rows)
    console.print(_summary_table(summaries))
    if audio_s:
        console.print(f"harness wall time {wall:.0f} s for {audio_s:.0f} s of input audio: {wall / audio_s:.2f}x real time")
    if report:
        from bench.fdb.report import write_report

        path = write_report(out_root, result)
        console.print(f"report: {path}")
    return result
