"""Phone voice-to-voice latency on the wire, one question per call (issue 20).

    python -m bench.sip_latency [--n 12] [--neighbour none|python|shell|numpy|llama|whisper|ort]
                                [--inprocess] [--out out/bench-sip-latency]

A fresh ``voice serve --sip`` (one agent process, its own data directory) and
an independent caller: SIPp, one call per question, one after the other, each
question an espeak-ng recording sent as PCMU with ``rtp_stream`` (0.5 s of
silence first). The questions, voices and speeds are ``bench/latency.py``'s
(``python -m bench.latency --n 12`` asks the same ones in process).

Measured on the wire (``bench.sip_load``'s AF_PACKET capture on ``lo``, which
needs CAP_NET_RAW, and its voiced-packet rule: 20 ms PCMU packets above
-45 dBFS): from the caller's last voiced packet to the agent's first voiced
packet. Also, per turn, the agent's own stage figures from its session record
(endpoint wait, ASR, LLM first token, first TTS audio) and what it heard.

``--neighbour`` starts a CPU-bound process before the service and keeps it
running throughout, pinned to one core (``--neighbour-cpu``, default the last
one; -1 = not pinned), to test the audio path under contention:

  python   a pure-Python busy loop (one thread)
  shell    a shell busy loop (one native thread, no interpreter lock)
  numpy    float matmuls through OpenBLAS with 2 threads (multi-threaded native code)
  llama    another llama.cpp generating without pause (the embedded Gemma, 2 threads)
  whisper  faster-whisper tiny.en decoding in a loop (CTranslate2, 2 threads)
  ort      Piper synthesising in a loop with onnxruntime's default (spinning) thread pool

``--inprocess`` then runs ``python -m bench.latency --n N`` with the same
neighbour, so both figures come from the same conditions. Prints median, p90,
max and the per-turn list, with the load average, and writes
``OUT/summary.json``. A benchmark, not a test: the figures depend on what
else the machine does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.sip_load import Question, Sniffer, free_port, pct, place_calls, read_wire, start_service

ROOT = Path(__file__).resolve().parents[1]
LEAD_S = 0.5  # silence before each question
# Per turn, from the service's event log (its clock): the endpoint wait, the pause-time ASR, the LLM's
# first token after the end of speech (a speculative reply starts before the endpoint) and the first
# synthesised audio after that token (the gap the issue saw reach 4-7.5 s under contention).
STAGES = ("endpoint_delay", "asr_time", "llm_first_token", "token_to_audio")

NEIGHBOURS = {
    "python": "while True:\n    pass\n",
    "numpy": ("import os\nos.environ['OPENBLAS_NUM_THREADS'] = '2'\nimport numpy as np\n"
              "a = np.random.rand(512, 512)\nwhile True:\n    a @ a\n"),
    "llama": ("from llama_cpp import Llama\nfrom models.weights import embedded_gemma_gguf\n"
              "m = Llama(model_path=str(embedded_gemma_gguf()), n_ctx=512, n_threads=2, verbose=False)\n"
              "while True:\n"
              "    for _ in m.create_completion('Tell me a long story about a dragon.', max_tokens=200,"
              " stream=True):\n        pass\n"),
    "whisper": ("import numpy as np\nfrom faster_whisper import WhisperModel\n"
                "from models.weights import embedded_whisper_dir\n"
                "m = WhisperModel(str(embedded_whisper_dir()), device='cpu', compute_type='int8', cpu_threads=2)\n"
                "a = (np.random.default_rng(0).standard_normal(16000 * 5) * 0.1).astype(np.float32)\n"
                "while True:\n    list(m.transcribe(a, language='en', vad_filter=False)[0])\n"),
    "ort": ("import onnxruntime, json\nfrom piper import PiperVoice\nfrom piper.config import PiperConfig\n"
            "from models.weights import embedded_piper_voice\n"
            "p = embedded_piper_voice()\n"
            "s = onnxruntime.InferenceSession(str(p), providers=['CPUExecutionProvider'])\n"
            "v = PiperVoice(session=s, config=PiperConfig.from_dict(json.loads("
            "p.with_suffix('.onnx.json').read_text())))\n"
            "while True:\n    list(v.synthesize('The quick brown fox jumps over the lazy dog, again and again.'))\n"),
}


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start_neighbour(kind: str, cpu: int) -> subprocess.Popen | None:
    if kind == "none":
        return None
    if kind == "shell":
        cmd = ["sh", "-c", "while :; do :; done"]
    else:
        cmd = [sys.executable, "-c", NEIGHBOURS[kind]]
    if cpu >= 0 and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu)] + cmd
    proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(3.0 if kind in ("llama", "whisper", "ort") else 0.5)  # model loads before the service starts
    if proc.poll() is not None:
        raise SystemExit(f"the {kind} neighbour exited with code {proc.returncode}")
    return proc


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def make_questions(n: int, work: Path) -> list[Question]:
    """bench/latency.py's first n questions, voices and speeds, as 8 kHz mu-law for SIPp's rtp_stream."""
    from bench.latency import QUESTIONS, VOICES

    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise SystemExit("espeak-ng and sox are needed (make test / make bench-sip install them)")
    rng = np.random.default_rng(0)  # the same draws as bench/latency.py
    out = []
    for i in range(n):
        text, voice, speed = QUESTIONS[i % len(QUESTIONS)], VOICES[i % len(VOICES)], int(rng.integers(145, 185))
        raw, ul = work / f"q{i}.wav", work / f"q{i}.ul"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text], check=True,
                       capture_output=True)
        subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-t", "ul", str(ul), "pad", str(LEAD_S), "0"],
                       check=True, capture_output=True)
        out.append(Question(i, text, voice, ul, ul.stat().st_size / 8000.0))
    return out


def wait_listening(log: Path, proc: subprocess.Popen, timeout: float) -> None:
    """Until the one agent process logs that SIP listens (its /health has no "sip" part with one worker)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voice serve exited with code {proc.returncode} while starting (log {log})")
        if log.exists() and "sip: listening" in log.read_text(errors="replace"):
            return
        time.sleep(0.3)
    raise RuntimeError(f"voice serve --sip did not listen in {timeout:.0f}s (log {log})")


_EVENT = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) INFO +\{'session': '(\w+)', 'turn': (\w+), 'event': '(\w+)', "
                    r"'fields': '(.*)'\} ")
_CALL = re.compile(r"sip: incoming call (\w+) from sips?:call(\d+)@")


def log_stages(log: Path) -> dict[int, dict]:
    """Stage figures of each call's first answered turn, read off the service's event log."""
    calls: dict[str, int] = {}
    ev: dict[str, list[tuple[float, str, dict]]] = {}
    for line in log.read_text(errors="replace").splitlines():
        m = _CALL.search(line)
        if m:
            calls[m.group(1)] = int(m.group(2))
            continue
        m = _EVENT.match(line)
        if not m:
            continue
        t = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
        try:
            fields = json.loads(m.group(7).replace("\\'", "'"))
        except ValueError:
            fields = {}
        ev.setdefault(m.group(4), []).append((t, m.group(6), fields))
    out = {}
    for sid, idx in calls.items():
        events = ev.get(sid, [])
        end = next(((t, f) for t, k, f in events if k == "endpoint"), None)
        if end is None:
            continue
        stop = max((t for t, k, _ in events if k == "user_speech_stop" and t <= end[0]), default=None)
        first = next((t for t, k, _ in events if k == "llm_first_token" and stop and t >= stop), None)
        audio = next((t for t, k, _ in events if k == "tts_first_audio" and first and t >= first), None)
        asr = [f.get("asr_time") for t, k, f in events if k == "asr_text" and t <= end[0] + 0.01]
        out[idx] = {"endpoint_delay": end[1].get("delay"), "asr_time": asr[-1] if asr else None,
                    "llm_first_token": None if first is None or stop is None else round(first - stop, 3),
                    "token_to_audio": None if audio is None or first is None else round(audio - first, 3)}
    return out


def session_turns(db_url: str, since: float) -> list[dict]:
    """The SIP sessions since ``since``, oldest first: caller and what was heard and said."""
    from voice.store import Store

    store = Store(db_url)
    try:
        rows = sorted((r for r in store.list_sessions(500) if (r["started_at"] or 0) >= since - 5
                       and r["transport"] == "sip"), key=lambda r: r["started_at"] or 0)
        out = []
        for row in rows:
            full = store.get_session(row["id"]) or {}
            turns = full.get("turns", [])
            out.append({"caller": row.get("caller"), "turns": len(turns),
                        "heard": " ".join(t.get("user_text") or "" for t in turns).strip(),
                        "agent_text": " ".join(t.get("agent_text") or "" for t in turns).strip()})
        return out
    finally:
        store.close()


async def phone(n: int, hold_s: float, out: Path, neighbour: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="voice-bench-sip-latency-"))
    questions = make_questions(n, work)
    try:
        sniffer = Sniffer()
    except PermissionError:
        raise SystemExit("capturing on lo needs CAP_NET_RAW (run as root or: setcap cap_net_raw+ep on python)") from None
    sip_port, http_port = free_port(), free_port()
    log_path = out / "serve.log"
    proc = start_service(1, sip_port, http_port, work / "data", log_path)
    rows: list[dict] = []
    try:
        t0 = time.monotonic()
        await asyncio.to_thread(wait_listening, log_path, proc, 300)
        print(f"service up in {time.monotonic() - t0:.1f}s (log {log_path}); load {loadavg()}", flush=True)
        sniffer.start()
        since = time.time()
        for q in questions:
            start = len(sniffer.packets)
            plans = await place_calls("127.0.0.1", sip_port, [q], hold_s, work)
            await asyncio.sleep(0.3)
            results, _ = read_wire(sniffer.packets[start:], plans)
            r = results[0]
            row = {"idx": q.idx, "question": q.text, "voice": q.voice, "answered": r.answered,
                   "v2v": r.v2v_s, "sipp_rc": r.sipp_rc, "load": loadavg()}
            if r.sipp_rc:
                row["sipp_log"] = r.log[-500:]
            rows.append(row)
            print(f"{q.idx + 1:2d}/{n} v2v {r.v2v_s if r.v2v_s is not None else '-':>6}s  {q.text}  [{q.voice}]"
                  f"{'' if r.answered else '  NOT ANSWERED'}", flush=True)
    finally:
        if sniffer.is_alive():
            sniffer.stop()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    from voice.settings import StoreSettings
    from voice.store import store_url

    sessions = session_turns(store_url(StoreSettings(), work / "data"), since)
    stages = log_stages(log_path)
    for row in rows:  # each SIPp call is "callN" in From; one session per call, in order
        match = [s for s in sessions if (s["caller"] or "").startswith(f"sip:call{row['idx']}@")]
        if len(match) == 1:
            row.update({k: match[0][k] for k in ("heard", "agent_text", "turns")})
        row.update(stages.get(row["idx"], {}))
    shutil.rmtree(work, ignore_errors=True)
    return summarize(rows)


def summarize(rows: list[dict]) -> dict:
    v2v = [r["v2v"] for r in rows if r.get("v2v") is not None]
    stages = {k: round(statistics.median(vals), 3) for k in STAGES
              if (vals := [r[k] for r in rows if r.get(k) is not None])}
    return {"n": len(rows), "answered": sum(bool(r.get("answered")) for r in rows), "measured": len(v2v),
            "median": round(statistics.median(v2v), 3) if v2v else None, "p90": pct(v2v, 90),
            "max": round(max(v2v), 3) if v2v else None, "over_2_5s": sum(v > 2.5 for v in v2v),
            "stage_medians": stages, "rows": rows}


def inprocess(n: int, out: Path) -> dict | None:
    """``python -m bench.latency --n N`` in a subprocess (same questions, same neighbour)."""
    d = out / "inprocess"
    r = subprocess.run([sys.executable, "-m", "bench.latency", "--n", str(n), "--out", str(d)], cwd=str(ROOT),
                       capture_output=True, text=True)
    if r.returncode:
        print(f"bench.latency failed ({r.returncode}): {r.stderr[-800:]}")
        return None
    s = json.loads((d / "summary.json").read_text())
    v2v = [row["v2v"] for row in s["rows"] if row.get("v2v") is not None]
    return {"median": s["v2v_median"], "p90": s["v2v_p90"], "max": s["v2v_max"], "measured": len(v2v),
            "over_2_5s": sum(v > 2.5 for v in v2v), "stage_medians": s["stage_medians"],
            "per_turn": [row["v2v"] for row in s["rows"]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.sip_latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=12, help="questions, one call each (default 12)")
    p.add_argument("--hold", type=float, default=8.0, help="seconds each call stays up after its question")
    p.add_argument("--neighbour", choices=["none", "shell", *NEIGHBOURS], default="none")
    p.add_argument("--neighbour-cpu", type=int, default=(os.cpu_count() or 1) - 1,
                   help="core the neighbour is pinned to (default the last; -1 = not pinned)")
    p.add_argument("--inprocess", action="store_true", help="also run bench.latency --n N with the same neighbour")
    p.add_argument("--out", default="out/bench-sip-latency")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"bench.sip_latency: {args.n} questions, neighbour {args.neighbour}"
          f"{'' if args.neighbour == 'none' else f' (cpu {args.neighbour_cpu})'}; {os.cpu_count()} cpus, "
          f"load {loadavg()}", flush=True)
    report: dict = {"neighbour": args.neighbour, "neighbour_cpu": args.neighbour_cpu, "cpus": os.cpu_count(),
                    "load_before": loadavg(), "command": "python -m bench.sip_latency " + " ".join(sys.argv[1:])}
    nb = start_neighbour(args.neighbour, args.neighbour_cpu)
    try:
        report["phone"] = asyncio.run(phone(args.n, args.hold, out, args.neighbour))
        report["load_after_phone"] = loadavg()
        if args.inprocess:
            print("in process: python -m bench.latency ...", flush=True)
            report["inprocess"] = inprocess(args.n, out)
            report["load_after_inprocess"] = loadavg()
    finally:
        stop(nb)
    (out / "summary.json").write_text(json.dumps(report, indent=2, default=str))
    ph = report["phone"]
    print(f"\n{'#':>2} {'v2v s':>6} {'endp':>5} {'asr':>5} {'tok1':>5} {'->tts':>5}  heard"
          "\n   (endp: endpoint wait; asr: pause-time ASR; tok1: LLM first token after the end of speech;"
          " ->tts: first TTS audio after that token; service clock)")
    for r in ph["rows"]:
        f = {k: ("-" if r.get(k) is None else f"{r[k]:.2f}") for k in ("v2v", *STAGES)}
        print(f"{r['idx']:>2} {f['v2v']:>6} {f['endpoint_delay']:>5} {f['asr_time']:>5} {f['llm_first_token']:>5} "
              f"{f['token_to_audio']:>5}  {r.get('heard', '')!r}")
    print(f"\nphone (SIP, PCMU, on the wire), neighbour {args.neighbour}: {ph['measured']}/{ph['n']} turns, "
          f"median {ph['median']} s, p90 {ph['p90']} s, max {ph['max']} s, over 2.5 s: {ph['over_2_5s']}; "
          f"stage medians {ph['stage_medians']}")
    ip = report.get("inprocess")
    if ip:
        print(f"in process (bench.latency): median {ip['median']} s, p90 {ip['p90']} s, max {ip['max']} s, "
              f"over 2.5 s: {ip['over_2_5s']}; phone - in process (medians): "
              f"{(ph['median'] or 0) - (ip['median'] or 0):+.3f} s")
    print(f"load average before {report['load_before']}, after {loadavg()}; wrote {out / 'summary.json'}")
    return 0 if ph["measured"] == ph["n"] else 1


if __name__ == "__main__":
    sys.exit(main())
