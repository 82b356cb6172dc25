"""Full-Duplex-Bench v1 harness: ``voice bench fdb`` and ``voice bench make-data``.

Plug into the CLI with ``add_bench_parsers(subparsers)``; each registered
parser sets ``func`` (``main_fdb`` / ``main_make_data``), which takes the
parsed args and returns an exit code. Heavy imports happen inside the mains.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TASK_CHOICES = ("pause_handling", "smooth_turn_taking", "user_interruption", "backchannel", "all")
GT_FILE = "icc_gt_distribution.json"


def _tasks(choice: str) -> list[str]:
    from bench.fdb.layout import TASKS

    return list(TASKS) if choice == "all" else [choice]


def _find_gt(data_dir: Path) -> Path | None:
    """icc_gt_distribution.json next to the data or inside a backchannel folder, if there is one."""
    for p in [data_dir / GT_FILE, *sorted(data_dir.glob(f"*backchannel*/{GT_FILE}"))]:
        if p.is_file():
            return p
    return None


def main_fdb(args: argparse.Namespace) -> int:
    """``voice bench fdb DATA_DIR ...``: run, score and report; 0 on success, 2 on a one-line error."""
    from bench.fdb.layout import BenchError
    from bench.fdb.runner import judge_config, run_suite
    from voice.audio import AudioError
    from voice.settings import ConfigError

    data_dir = Path(args.data_dir)
    gt = args.gt_distribution or (_find_gt(data_dir) if data_dir.is_dir() else None)
    judge = judge_config(args.judge_url, args.judge_model,
                         args.judge_api_key or os.environ.get("VOICE_JUDGE_API_KEY"))
    try:
        run_suite(data_dir, _tasks(args.task), args.pipeline, args.out, args.transport,
                  config_file=getattr(args, "config", None), judge=judge, gt_distribution=gt,
                  reuse_output=args.reuse_output, limit=args.limit)
    except (BenchError, AudioError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main_make_data(args: argparse.Namespace) -> int:
    """``voice bench make-data OUT_DIR [--n N --seed S]``: synthetic FDB-layout samples."""
    from rich.console import Console
    from rich.progress import Progress

    from bench.fdb.layout import BenchError
    from bench.fdb.makedata import make_data

    tasks = _tasks(args.task)
    try:
        with Progress(console=Console(stderr=True)) as progress:
            bars = {t: progress.add_task(t, total=args.n) for t in tasks}
            make_data(args.out_dir, n=args.n, seed=args.seed, tasks=tasks, speaker=args.speaker,
                      progress=lambda task, i: progress.update(bars[task], completed=i))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.n} sample(s) per task for {', '.join(tasks)} under {args.out_dir}")
    return 0


def add_bench_parsers(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``bench fdb`` and ``bench make-data`` under a CLI's subparsers; return the ``bench`` parser."""
    bench = subparsers.add_parser("bench", help="benchmarks (Full-Duplex-Bench v1)")
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="{fdb,make-data,endpoint}")

    fdb = sub.add_parser("fdb", help="run Full-Duplex-Bench v1 tasks against the agent and score them")
    fdb.add_argument("data_dir", help="FDB v1 data folder (task folders with numbered samples) or one task folder")
    fdb.add_argument("--task", choices=TASK_CHOICES, default="all")
    fdb.add_argument("--pipeline", choices=("cascaded", "native"), default="cascaded")
    fdb.add_argument("--out", default="out/fdb", help="output folder (default: out/fdb)")
    fdb.add_argument("--transport", choices=("inprocess", "webrtc"), default="inprocess")
    fdb.add_argument("--judge-url", help="OpenAI-compatible API root for the relevance judge, e.g. http://host:8000/v1")
    fdb.add_argument("--judge-model", help="judge model name; without --judge-url and this, relevance is not measured")
    fdb.add_argument("--judge-api-key", help="judge API key (default: $VOICE_JUDGE_API_KEY)")
    fdb.add_argument("--gt-distribution", help=f"{GT_FILE} with human backchannel times "
                     "(default: found in DATA_DIR; without it JSD is not measured)")
    fdb.add_argument("--reuse-output", action="store_true",
                     help="score the output.wav already in OUT/<set>/<n>/ instead of running the agent")
    fdb.add_argument("--limit", type=int, default=None, help="only the first N samples of each task set")
    fdb.set_defaults(func=main_fdb)

    mk = sub.add_parser("make-data", help="write synthetic FDB v1 samples (espeak-ng voices, exact timestamps)")
    mk.add_argument("out_dir")
    mk.add_argument("--n", type=int, default=10, help="samples per task (default 10)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--task", choices=TASK_CHOICES, default="all")
    mk.add_argument("--speaker", choices=("espeak", "piper"), default="espeak",
                    help="espeak-ng voices (default) or the embedded Piper voice (human-like prosody)")
    mk.set_defaults(func=main_make_data)

    from bench.endpoint import add_endpoint_parser

    add_endpoint_parser(sub)
    return bench
