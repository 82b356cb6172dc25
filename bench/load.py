"""`make bench-load`: N simultaneous conversations on one process, ramped until real time breaks.

Every conversation is synthetic speech (espeak-ng, a different voice and
question set per session): three questions (``--turns``), each followed by a pause long
enough for a reply. All N run at once on one process with the models loaded
once (``voice.talk.talk_file``, in-process) or through the real service over
loopback WebRTC (``voice.bench_webrtc``: N aiortc callers against one
``voice serve`` in its own process, as browsers would be; ``--server
inprocess`` puts the service in the callers' process). Session i starts ``i * stagger`` seconds after the first, so
the turns of different sessions overlap without being in lock step.

Each N runs in a fresh subprocess (clean RSS and CPU figures); per N we report

  * v2v p50 / p90 / max: voice-to-voice latency read off the audio, as
    bench/latency.py does: the first agent sound after the end of each
    question (energy over 10 ms > 0.01), minus the end of the question;
    "unanswered" counts questions with no agent sound before the next one;
  * late input: the share of 20 ms input frames that reached the turn
    controller more than 100 ms after they were due in real time (a live
    transport with 100 ms of buffering would have dropped or stretched them),
    plus the p99 input lag;
  * underruns (in-process): gaps of >= 20 ms in the agent's speech where the
    simulated sound card (40 ms buffer) ran dry mid-utterance; in seconds
    and as a share of the agent's speech;
  * late output (WebRTC): the caller's received packets that came more than
    60 ms after their RTP playout time (a browser jitter buffer would have
    stretched or dropped them);
  * CPU: the agent process's CPU time over the run's wall time, in % of one
    core (200 % = both cores of this machine), and the machine's total busy %
    (over WebRTC with the service in its own process, the callers' CPU is
    reported apart);
  * RSS: the agent process's resident memory before the sessions (models
    loaded and warmed up) and its peak during them; "per extra session" is
    (peak(N) - peak(1)) / (N - 1) across the ramp;
  * heard as statements: questions the controller took only after the
    statement wait, because the recogniser heard no question in them, and the
    p90 of the other questions (turn-taking, not load, makes those turns late);
  * the verdict per transport against the target (N = 4 with p90 <= 1.2 s and
    <= 60 MB per extra session), also in summary.json.

Over WebRTC with the service in its own process, "late input" is not
measured (it is read inside the agent's pipeline).

    python -m bench.load [--max-n 6] [--transport inproc|webrtc|both] [--server subprocess|inprocess]
                         [--out out/bench-load]

A benchmark, not a test: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.latency import QUESTIONS, THRESH, VOICES, espeak_trimmed, sound_span

RATE = 16000
LEAD_S = 0.5
GAP_S = 6.0  # silence after each question: room for the reply
TAIL_S = 7.0
LATE_INPUT_S = 0.10
LATE_OUTPUT_S = 0.06
TARGET_P90_S = 1.2
TARGET_RSS_MB = 60.0
TARGET_SESSIONS = 4
BREAK_P90_S = 2.0

# ``turns`` questions per conversation; session i takes rows i*turns ... i*turns+turns-1 (mod len).


# ------------------------------------------------------------------ synthetic speech


def make_conversation(i: int, path: Path, turns: int = 3) -> list[tuple[float, float]]:
    """Write session i's input WAV; return the (start, end) of each question in it."""
    from voice.audio import write_wav

    voice = VOICES[i % len(VOICES)]
    speed = 150 + (i * 7) % 30
    parts = [np.zeros(int(LEAD_S * RATE), np.float32)]
    spans = []
    t = LEAD_S
    for k in range(turns):
        text = QUESTIONS[(i * turns + k) % len(QUESTIONS)]
        speech = espeak_trimmed(text, voice, speed, RATE)
        spans.append((round(t, 3), round(t + len(speech) / RATE, 3)))
        parts += [speech, np.zeros(int((GAP_S if k < turns - 1 else TAIL_S) * RATE), np.float32)]
        t += len(speech) / RATE + (GAP_S if k < turns - 1 else TAIL_S)
    write_wav(path, np.concatenate(parts), RATE)
    return spans


def _make_inputs(n: int, out_dir: Path, turns: int = 3) -> list[tuple[Path, list[tuple[float, float]]]]:
    """Session i's conversation as s{i}.in.wav, with its question spans."""
    inputs = []
    for i in range(n):
        wav = out_dir / f"s{i}.in.wav"
        inputs.append((wav, make_conversation(i, wav, turns)))
    return inputs


def voice_to_voice(output: np.ndarray, spans: list[tuple[float, float]]) -> list[float | None]:
    """Per question: first agent sound after its end (before the next question starts) minus its end."""
    out = []
    for k, (_, end) in enumerate(spans):
        stop = spans[k + 1][0] if k + 1 < len(spans) else len(output) / RATE
        seg = output[int(end * RATE):int(stop * RATE)]
        span = sound_span(seg)
        out.append(None if span is None else round(span[0], 3))
    return out


# ----------------------------------------------------------------------- measuring


class _ProcStats:
    """What ResourceSampler needs from psutil, read from /proc when psutil is not installed (Linux)."""

    def __init__(self, pid: int | None = None):
        self._tick = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._proc = f"/proc/{pid or 'self'}"

    def rss(self) -> int:
        with open(f"{self._proc}/statm") as f:
            return int(f.read().split()[1]) * self._page

    def cpu_seconds(self) -> float:
        with open(f"{self._proc}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime

    def machine(self) -> tuple[float, float]:
        """(busy, total) jiffies of the whole machine."""
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values) - idle, sum(values)


class _PsutilStats:
    def __init__(self, psutil, pid: int | None = None):
        self._psutil = psutil
        self._proc = psutil.Process(pid)

    def rss(self) -> int:
        return self._proc.memory_info().rss

    def cpu_seconds(self) -> float:
        t = self._proc.cpu_times()
        return t.user + t.system

    def machine(self) -> tuple[float, float]:
        t = self._psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0)
        return sum(t) - idle, sum(t)


def _stats(pid: int | None = None):
    try:
        import psutil
    except ImportError:
        return _ProcStats(pid)
    return _PsutilStats(psutil, pid)


class ResourceSampler:
    """CPU time and RSS of a process (this one by default), and machine busy time; RSS sampled every 0.25 s."""

    def __init__(self, pid: int | None = None):
        self._stats = _stats(pid)
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="resource-sampler")

    def _run(self):
        while not self._stop.wait(0.25):
            self.peak_rss = max(self.peak_rss, self._stats.rss())

    def __enter__(self):
        self._cpu0 = self._stats.cpu_seconds()
        self._sys0 = self._stats.machine()
        self._t0 = time.monotonic()
        self.peak_rss = self._stats.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._stats.rss())
        wall = time.monotonic() - self._t0
        used = self._stats.cpu_seconds() - self._cpu0
        busy1, total1 = self._stats.machine()
        self.wall_s = wall
        self.cpu_pct = 100 * used / wall
        self.machine_busy_pct = 100 * (busy1 - self._sys0[0]) / ((total1 - self._sys0[1]) or 1)
        self.peak_rss_mb = self.peak_rss / 2**20


def _LazyProbe(holder):
    """A pipeline processor (before the turn controller): how late each input frame gets there.

    Its ``clock`` (the session clock) is set once the session's event log exists.
    """
    from pipecat.frames.frames import Frame, InputAudioRawFrame
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    class Probe(FrameProcessor):
        def __init__(self):
            super().__init__(name="lag-probe")
            self.samples = 0
            self.lags: list[float] = []
            self.clock = None
            holder["probe"] = self

        async def process_frame(self, frame: Frame, direction: FrameDirection):
            await super().process_frame(frame, direction)
            if isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM \
                    and self.clock is not None and self.clock.started:
                self.samples += len(frame.audio) // 2
                self.lags.append(self.clock.now() - self.samples / RATE)
            await self.push_frame(frame, direction)

    return Probe()


async def _one_level(n: int, transport: str, out_dir: Path, stagger: float, batch_max: int | None,
                     server: str = "subprocess", turns: int = 3) -> dict:
    from voice.settings import load_settings
    from voice.talk import shared_runtime

    if transport == "webrtc" and server == "subprocess":
        return await _webrtc_level_remote(n, out_dir, stagger, batch_max, turns)

    settings = load_settings()
    if batch_max is not None:
        data = settings.model_dump()
        data["asr"]["batch_max"] = batch_max
        settings = type(settings).model_validate(data)
    # The benchmark measures the conversation path: no session records on disk.
    if hasattr(settings, "store"):
        data = settings.model_dump()
        data["store"]["enabled"] = False
        settings = type(settings).model_validate(data)
    stats = _stats()
    t_load = time.perf_counter()
    runtime = shared_runtime(settings)
    load_s = time.perf_counter() - t_load
    inputs = _make_inputs(n, out_dir, turns)
    rss_before = stats.rss() / 2**20

    sessions_seen = []
    if transport == "inproc":
        from voice.talk import talk_file

        async def one(i):
            await asyncio.sleep(i * stagger)
            probe = _LazyProbe({})
            result = await talk_file(inputs[i][0], out_dir / f"s{i}.out.wav", out_dir / f"s{i}.events.jsonl",
                                     settings, runtime=runtime, probe=probe)
            return result, probe

        # talk_file builds its own clock; the probe learns it from the first session event.
        import voice.session as vs

        original_build = vs.build_session

        def build_with_clock(transport_, runtime_, settings_, events, *a, **kw):
            session = original_build(transport_, runtime_, settings_, events, *a, **kw)
            if kw.get("probe") is not None:
                kw["probe"].clock = events.clock
            sessions_seen.append(session)
            return session

        vs.build_session = build_with_clock
        with ResourceSampler() as res:
            results = await asyncio.gather(*(one(i) for i in range(n)))
        vs.build_session = original_build
        rows = []
        from voice.audio import read_wav

        for i, (result, probe) in enumerate(results):
            output = read_wav(result.output_path, RATE)
            rows.append(_session_row(i, inputs[i][1], output, probe.lags, result.underruns, None, result))
    else:
        rows, res = await _webrtc_level(n, inputs, out_dir, settings, runtime, stagger)

    batcher = runtime.transcriber
    summary = _summarize(n, transport, rows, res)
    summary.update(models_load_s=round(load_s, 1), rss_before_mb=round(rss_before, 1),
                   asr_batch_max=settings.asr.batch_max,
                   asr_batches={"calls": getattr(batcher, "calls", None), "clips": getattr(batcher, "clips", None),
                                "largest": getattr(batcher, "max_seen", None)},
                   sessions=rows)
    return summary


async def _webrtc_level(n, inputs, out_dir, settings, runtime, stagger):
    """One service on loopback, N aiortc callers at once (all in this process)."""
    import voice.session as vs
    from voice.audio import read_wav, write_wav
    from voice.bench_webrtc import serve_in_process, talk_over_webrtc

    probes = {}
    original_run = vs.run_session

    async def run_with_probe(transport_, runtime_, settings_, **kw):
        probe = _LazyProbe({})
        probe.clock = kw["events"].clock
        probes[kw["events"].session_id] = probe
        return await original_run(transport_, runtime_, settings_, probe=probe, **kw)

    vs.run_session = run_with_probe
    data = settings.model_dump()
    data["max_sessions"] = max(settings.max_sessions, n)
    data["llm"]["api_key"] = settings.llm.api_key.get_secret_value()
    settings = type(settings).model_validate(data)
    try:
        async with serve_in_process(settings, runtime) as (base_url, app):
            async def one(i):
                await asyncio.sleep(i * stagger)
                audio = read_wav(inputs[i][0], RATE)
                return await talk_over_webrtc(base_url, app, audio, pipeline=settings.pipeline)

            with ResourceSampler() as res:
                runs = await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        vs.run_session = original_run
    rows = []
    for i, run in enumerate(runs):
        audio_s = len(read_wav(inputs[i][0], RATE)) / RATE
        out, _ = run["recorder"].render(run["t0"], audio_s)
        write_wav(out_dir / f"s{i}.out.wav", out, RATE)
        recorder = run["recorder"]
        probe = probes.get(run["session"].id)
        rows.append(_session_row(i, inputs[i][1], out, probe.lags if probe else [], None,
                                 {"late": recorder.late_frames(LATE_OUTPUT_S), "frames": len(recorder.frames)},
                                 None))
    return rows, res


async def _webrtc_level_remote(n, out_dir, stagger, batch_max, turns=3):
    """N aiortc callers in this process against ``voice serve`` in its own (measured) process."""
    from bench.webrtc_latency import service_subprocess
    from voice.audio import read_wav
    from voice.bench_webrtc import talk_file_webrtc_remote

    inputs = _make_inputs(n, out_dir, turns)
    env = {"VOICE_MAX_SESSIONS": str(max(8, n)), "VOICE_STORE__ENABLED": "false"}
    if batch_max is not None:
        env["VOICE_ASR__BATCH_MAX"] = str(batch_max)
    t_load = time.perf_counter()
    async with service_subprocess(env=env) as (base_url, proc):
        load_s = time.perf_counter() - t_load
        rss_before = _stats(proc.pid).rss() / 2**20

        async def one(i):
            await asyncio.sleep(i * stagger)
            return await talk_file_webrtc_remote(inputs[i][0], out_dir / f"s{i}.out.wav",
                                                 out_dir / f"s{i}.events.jsonl", base_url)

        with ResourceSampler(proc.pid) as res, ResourceSampler() as callers:
            results = await asyncio.gather(*(one(i) for i in range(n)))
    rows = []
    for i, result in enumerate(results):
        output = read_wav(result.output_path, RATE)
        recorder = result.recorder
        rows.append(_session_row(i, inputs[i][1], output, [], None,
                                 {"late": recorder.late_frames(LATE_OUTPUT_S), "frames": len(recorder.frames)},
                                 result))
    summary = _summarize(n, "webrtc", rows, res)
    summary.update(server="subprocess", models_load_s=round(load_s, 1), rss_before_mb=round(rss_before, 1),
                   callers_cpu_pct=round(callers.cpu_pct, 1), asr_batch_max=batch_max, sessions=rows)
    return summary


def _session_row(i, spans, output, lags, underruns, late_output, result) -> dict:
    v2v = voice_to_voice(output, spans)
    lags_arr = np.array(lags) if lags else np.zeros(0)
    agent_speech = 0.0
    n10 = len(output) // 160
    if n10:
        agent_speech = float(np.sum(np.sqrt(np.mean(output[: n10 * 160].reshape(n10, 160) ** 2, axis=1)) > THRESH)) / 100
    row = {
        "session": i, "v2v": v2v,
        "input_frames": int(len(lags_arr)),
        "late_input_frames": int(np.sum(lags_arr > LATE_INPUT_S)),
        "input_lag_p50": round(float(np.percentile(lags_arr, 50)), 4) if len(lags_arr) else None,
        "input_lag_p99": round(float(np.percentile(lags_arr, 99)), 4) if len(lags_arr) else None,
        "input_lag_max": round(float(lags_arr.max()), 4) if len(lags_arr) else None,
        "agent_speech_s": round(agent_speech, 2),
    }
    if underruns is not None:
        row["underruns"] = len(underruns)
        row["underrun_s"] = round(sum(g for _, g in underruns), 3)
    if late_output is not None:
        row["late_output_packets"] = late_output["late"]
        row["output_packets"] = late_output["frames"]
    if result is not None:
        row["agent_v2v"] = [m.get("voice_to_voice") for m in result.turn_metrics()]
        # How long the controller waited before taking each turn: the question wait, or the
        # statement wait when the recogniser heard no question (see held_as_statements).
        row["endpoint_delays"] = [m.get("endpoint_delay") for m in result.turn_metrics()]
        stages = {}
        for key in ("endpoint_delay", "asr_time", "llm_ttft", "tts_first_audio"):
            vals = [m.get(key) for m in result.turn_metrics() if m.get(key) is not None]
            stages[key] = round(float(np.median(vals)), 3) if vals else None
        row["stage_medians"] = stages
    return row


def _summarize(n, transport, rows, res) -> dict:
    v2v = [v for r in rows for v in r["v2v"] if v is not None]
    asked = sum(len(r["v2v"]) for r in rows)
    frames = sum(r["input_frames"] for r in rows)
    late = sum(r["late_input_frames"] for r in rows)
    lag_p99 = max((r["input_lag_p99"] or 0) for r in rows) if rows else None
    out = {
        "n": n, "transport": transport,
        "questions": asked, "answered": len(v2v),
        "v2v_p50": round(float(np.percentile(v2v, 50)), 3) if v2v else None,
        "v2v_p90": round(float(np.percentile(v2v, 90)), 3) if v2v else None,
        "v2v_max": round(max(v2v), 3) if v2v else None,
        "late_input_pct": round(100 * late / frames, 2) if frames else None,
        "input_lag_p99_worst": lag_p99,
        "cpu_pct": round(res.cpu_pct, 1), "machine_busy_pct": round(res.machine_busy_pct, 1),
        "wall_s": round(res.wall_s, 1), "peak_rss_mb": round(res.peak_rss_mb, 1),
    }
    if transport == "inproc":
        speech = sum(r["agent_speech_s"] for r in rows)
        under = sum(r.get("underrun_s", 0) for r in rows)
        out["underruns"] = sum(r.get("underruns", 0) for r in rows)
        out["underrun_s"] = round(under, 3)
        out["underrun_pct_of_speech"] = round(100 * under / speech, 2) if speech else None
    else:
        pk = sum(r.get("output_packets", 0) for r in rows)
        out["late_output_pct"] = round(100 * sum(r.get("late_output_packets", 0) for r in rows) / pk, 2) if pk else None
    out.update(_statement_waits(rows))
    stage_keys = ("endpoint_delay", "asr_time", "llm_ttft", "tts_first_audio")
    stages = {}
    for k in stage_keys:
        vals = [r["stage_medians"][k] for r in rows if r.get("stage_medians") and r["stage_medians"].get(k) is not None]
        stages[k] = round(float(np.median(vals)), 3) if vals else None
    if any(v is not None for v in stages.values()):
        out["stage_medians"] = stages
    return out


def _statement_waits(rows) -> dict:
    """Questions the controller held for the statement wait, and the p90 of the others.

    Every input is a question or a request, so a turn taken after the statement wait
    (``turn.statement_wait_s`` or more, read from the settings the service also reads) is one the recogniser heard as a statement
    ("Is it going..." as "It's going..."). That is turn-taking (docs/turn-taking.md),
    not load: the plain p90 above counts those turns; this shows how much they weigh.
    Sessions whose agent turns do not pair one to one with their questions are left out.
    """
    from voice.settings import load_settings

    statement_wait = load_settings().turn.statement_wait_s  # as the service sees it (same environment)
    held, others, paired = 0, [], 0
    for r in rows:
        delays = r.get("endpoint_delays")
        if delays is None or len(delays) != len(r["v2v"]):
            continue
        paired += len(delays)
        for v, d in zip(r["v2v"], delays):
            if d is not None and d >= statement_wait:
                held += 1
            elif v is not None:
                others.append(v)
    if not paired:
        return {}
    return {"held_as_statements": held, "paired_questions": paired,
            "v2v_p90_question_wait": round(float(np.percentile(others, 90)), 3) if others else None}


# --------------------------------------------------------------------------- ramp


def run_level_subprocess(n: int, transport: str, out: Path, stagger: float, batch_max: int | None,
                         timeout: float, server: str = "subprocess", turns: int = 3) -> dict:
    level_dir = out / (f"{transport}-n{n}" + ("" if batch_max is None else f"-b{batch_max}"))
    level_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.load", "--level", str(n), "--transport", transport,
           "--out", str(level_dir), "--stagger", str(stagger), "--server", server, "--turns", str(turns)]
    if batch_max is not None:
        cmd += ["--asr-batch-max", str(batch_max)]
    env = {**os.environ, "NO_TORCH_COMPILE": "1"}
    proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
    (level_dir / "stderr.log").write_text(proc.stderr[-200_000:])
    if proc.returncode != 0:
        raise RuntimeError(f"level {n} ({transport}) failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    return json.loads((level_dir / "level.json").read_text())


def verdict(results: list[dict]) -> dict:
    """Per transport: the largest N that held the p90 target, and whether the target is met."""
    out = {}
    for transport in dict.fromkeys(r["transport"] for r in results):
        rs = sorted((r for r in results if r["transport"] == transport), key=lambda r: r["n"])
        one = next((r for r in rs if r["n"] == 1), None)
        held = [r["n"] for r in rs if r["v2v_p90"] is not None and r["v2v_p90"] <= TARGET_P90_S
                and r["answered"] == r["questions"]]
        at = next((r for r in rs if r["n"] == TARGET_SESSIONS), None)
        growth = (round((at["peak_rss_mb"] - one["peak_rss_mb"]) / (TARGET_SESSIONS - 1), 1)
                  if at is not None and one is not None else None)
        if at is None:
            broke = [r["n"] for r in rs if breaks_real_time(r)]
            line = (f"missed: real time broke at N={broke[0]}" if broke and broke[0] < TARGET_SESSIONS
                    else f"not measured at N={TARGET_SESSIONS}")
            met = False if broke and broke[0] < TARGET_SESSIONS else None
        else:
            met = (TARGET_SESSIONS in held and (growth is None or growth <= TARGET_RSS_MB))
            line = (f"{'met' if met else 'missed'} at N={TARGET_SESSIONS}: p90 {at['v2v_p90']} s"
                    + (f", {growth} MB per extra session" if growth is not None else ""))
        out[transport] = {"met": met, "largest_n_within_p90": max(held) if held else None, "line": line}
    return out


def breaks_real_time(s: dict) -> bool:
    """The level is no longer a live conversation: a question went unanswered, more than 1 % of the
    input came late, the speaker ran dry for more than 1 % of the agent's speech, or p90 v2v > 2 s."""
    return (s["v2v_p90"] is None or s["v2v_p90"] > BREAK_P90_S or s["answered"] < s["questions"]
            or (s["late_input_pct"] or 0) > 1.0 or (s.get("underrun_pct_of_speech") or 0) > 1.0
            or (s.get("late_output_pct") or 0) > 1.0)


def print_row(s: dict) -> None:
    extra = (f"underrun {s['underrun_s']}s ({s['underrun_pct_of_speech']}%)" if s["transport"] == "inproc"
             else f"late out {s['late_output_pct']}%")
    if s.get("callers_cpu_pct") is not None:
        extra += f"  callers' CPU {s['callers_cpu_pct']}%"
    if s.get("held_as_statements"):
        extra += (f"  heard as statements {s['held_as_statements']}/{s['paired_questions']}"
                  f" (p90 of the rest {s['v2v_p90_question_wait']}s)")
    print(f"N={s['n']:<2} {s['transport']:<6} v2v p50 {s['v2v_p50']}s p90 {s['v2v_p90']}s max {s['v2v_max']}s "
          f"answered {s['answered']}/{s['questions']}  late in {s['late_input_pct']}% (lag p99 {s['input_lag_p99_worst']}s)  "
          f"{extra}  CPU {s['cpu_pct']}% (machine {s['machine_busy_pct']}%)  RSS {s['rss_before_mb']}->{s['peak_rss_mb']} MB"
          + ("" if s["v2v_p90"] is not None and s["v2v_p90"] <= TARGET_P90_S else "  [p90 over the 1.2 s target]"),
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,2,3,4,6", help="N values to try, in order (default 1,2,3,4,6)")
    ap.add_argument("--max-n", type=int, default=None, help="stop after this N")
    ap.add_argument("--transport", choices=["inproc", "webrtc", "both"], default="inproc")
    ap.add_argument("--webrtc-max-n", type=int, default=4, help="largest N for WebRTC with --transport both")
    ap.add_argument("--server", choices=["subprocess", "inprocess"], default="subprocess",
                    help="WebRTC: the service as voice serve in its own process (default) or in the callers' process")
    ap.add_argument("--stagger", type=float, default=0.7, help="seconds between session starts")
    ap.add_argument("--asr-batch-max", type=int, default=None, help="override asr.batch_max (1 = no batching)")
    ap.add_argument("--turns", type=int, default=3,
                    help="questions per conversation (more: a steadier p90, a longer run)")
    ap.add_argument("--keep-going", action="store_true", help="do not stop at the first N that misses real time")
    ap.add_argument("--out", default="out/bench-load")
    ap.add_argument("--level", type=int, help=argparse.SUPPRESS)  # internal: run one level here
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.level is not None:
        os.environ.setdefault("NO_TORCH_COMPILE", "1")
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")
        summary = asyncio.run(_one_level(args.level, args.transport, out, args.stagger, args.asr_batch_max,
                                         args.server, args.turns))
        (out / "level.json").write_text(json.dumps(summary, indent=2, default=str))
        return

    levels = [int(x) for x in args.levels.split(",")]
    if args.max_n:
        levels = [n for n in levels if n <= args.max_n]
    transports = ["inproc", "webrtc"] if args.transport == "both" else [args.transport]
    results = []
    for transport in transports:
        for n in levels:
            if transport == "webrtc" and args.transport == "both" and n > args.webrtc_max_n:
                break
            s = run_level_subprocess(n, transport, out, args.stagger, args.asr_batch_max, timeout=900,
                                     server=args.server, turns=args.turns)
            results.append(s)
            print_row(s)
            broke = breaks_real_time(s)
            if broke and not args.keep_going:
                print(f"   real time breaks at N={n} ({transport}): stopping the ramp", flush=True)
                break
    per_session = {}
    for transport in transports:
        rs = [r for r in results if r["transport"] == transport]
        one = next((r for r in rs if r["n"] == 1), None)
        if one:
            per_session[transport] = {str(r["n"]): round((r["peak_rss_mb"] - one["peak_rss_mb"]) / (r["n"] - 1), 1)
                                      for r in rs if r["n"] > 1}
    summary = {"levels": [{k: v for k, v in r.items() if k != "sessions"} for r in results],
               "rss_per_extra_session_mb": per_session,
               "target": {"v2v_p90_s": TARGET_P90_S, "rss_per_extra_session_mb": TARGET_RSS_MB,
                          "sessions": TARGET_SESSIONS},
               "cpu_count": os.cpu_count()}
    summary["verdict"] = verdict(results)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"RSS growth per extra session (MB): {per_session}")
    for transport, v in summary["verdict"].items():
        print(f"target (>= {TARGET_SESSIONS} sessions, p90 <= {TARGET_P90_S} s, <= {TARGET_RSS_MB:.0f} MB per extra "
              f"session), {transport}: {v['line']}", flush=True)
    print(f"wrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
