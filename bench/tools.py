"""What a quick tool costs the reply: voice-to-voice latency with and without a tool call.

    python -m bench.tools [--questions 6] [--delays 0,0.25,0.45] [--ttft 0] [--out FILE.json]

The live agent (``voice talk``, real ASR/turn-taking/TTS) hears N spoken weather
questions. Baseline: no tools offered; the scripted OpenAI-compatible endpoint
(bench/tool_servers.py) answers each at once with the weather sentence. With the
tool: the endpoint asks for ``get_weather``, a real HTTP tool service on loopback
answers after DELAY seconds, and the endpoint then says the same sentence. The
figure is each turn's voice_to_voice (speech end -> first agent audio, the
``turn_metrics`` event) and whether the filler ("One moment.") was said.
Target (issue 22): a tool answering within 0.5 s adds no filler and at most its
own latency. ``--ttft`` makes every endpoint answer start that late (a real
model's time to first token: a tool round pays it twice). With turn.speculate on
(the default) a GET tool already runs during the pause, before the turn end is
confirmed; ``--no-speculate`` shows the tool's cost on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path

CITIES = ["paris", "london"]  # names whisper tiny.en hears right from espeak-ng
QUESTION = "What is the weather in {}?"


def _wav(tmp: Path, n: int, gap_s: float = 6.0) -> Path:
    import subprocess

    import numpy as np

    from voice.audio import read_wav, write_wav

    parts = [np.zeros(8000, np.float32)]
    for i in range(n):
        raw = tmp / f"q{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us+m3", "-s", "165", "-w", str(raw),
                        QUESTION.format(CITIES[i % len(CITIES)].title())], check=True, capture_output=True)
        parts += [read_wav(raw, 16000), np.zeros(int(gap_s * 16000), np.float32)]
    wav = tmp / "questions.wav"
    write_wav(wav, np.concatenate(parts), 16000)
    return wav


def _settings(base, llm_url: str, tool_url: str | None, data_dir: Path, speculate: bool = True):
    from bench.tool_servers import weather_tool
    from voice.settings import ToolsSettings

    allowed = ["get_weather"] if tool_url else []
    return base.model_copy(update={
        "data_dir": data_dir,
        "store": base.store.model_copy(update={"enabled": False}),
        "turn": base.turn.model_copy(update={"speculate": speculate}),
        "llm": base.llm.model_copy(update={"backend": "openai", "base_url": llm_url, "allowed_tools": allowed}),
        "tools": ToolsSettings(http=[weather_tool(tool_url)] if tool_url else [])})


async def _run(base, runtime, wav: Path, tmp: Path, delay: float | None, ttft: float,
               speculate: bool = True) -> dict:
    from bench.tool_servers import ScriptedLLM, ToolHTTPServer
    from voice.talk import talk_file

    with ToolHTTPServer(delays={c: delay or 0.0 for c in CITIES}) as tools, \
            ScriptedLLM(ttft_s=ttft, baseline=True) as llm:
        s = _settings(base, llm.url, tools.url if delay is not None else None, tmp / "data", speculate)
        result = await talk_file(wav, tmp / "out.wav", None, s, runtime=runtime)
    ev = result.events
    v2v = [m["voice_to_voice"] for m in ev.of("turn_metrics") if m.get("voice_to_voice") is not None]
    return {"condition": "no tool" if delay is None else f"tool {delay:.2f} s", "tool_delay_s": delay,
            "ttft_s": ttft, "speculate": speculate, "turns": len(ev.of("endpoint")), "voice_to_voice": v2v,
            "tool_calls": len(ev.of("tool_call")), "fillers": len(ev.of("tool_filler")),
            "tool_seconds": [r["seconds"] for r in ev.of("tool_result")]}


def summarise(run: dict) -> str:
    v = run["voice_to_voice"]
    if not v:
        return f"{run['condition']:<14} no turns measured"
    return (f"{run['condition']:<14} n={len(v):<2} median {statistics.median(v):.3f} s  "
            f"min {min(v):.3f}  max {max(v):.3f}  tool calls {run['tool_calls']}  fillers {run['fillers']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--delays", default="0,0.25,0.45", help="tool answer delays in seconds, comma-separated")
    ap.add_argument("--ttft", type=float, default=0.0, help="the endpoint's time to first token, seconds")
    ap.add_argument("--no-speculate", action="store_true",
                    help="turn.speculate off: no reply (nor GET tool) starts before the turn end is confirmed")
    ap.add_argument("--out", default=None, help="write the runs as JSON here")
    a = ap.parse_args(argv)

    import sys

    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    from voice.settings import load_settings
    from voice.talk import shared_runtime

    base = load_settings()
    runtime = shared_runtime(base.model_copy(update={"llm": base.llm.model_copy(update={"backend": "openai"})}))
    runs = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        wav = _wav(tmp, a.questions)
        # Baseline first and last: the machine's drift shows as a difference between the two.
        for delay in [None, *(float(x) for x in a.delays.split(",") if x.strip()), None]:
            run = asyncio.run(_run(base, runtime, wav, tmp, delay, a.ttft, not a.no_speculate))
            runs.append(run)
            print(summarise(run), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
