"""Endpointing benchmark in the style of LiveKit's eot-bench: ``voice bench endpoint DATA...``.

``features`` computes the controller's inputs for every recording of FDB-layout
data (VAD, the turn's transcript at each pause, Smart Turn), ``replay`` runs
the live controller on them, ``sweep`` scores policies over their settings, and
``report`` writes the tables and the Pareto plot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main_endpoint(args: argparse.Namespace) -> int:
    """``voice bench endpoint DATA... --out OUT``: 0 on success, 2 on a one-line error."""
    from bench.endpoint.report import run
    from bench.fdb.layout import BenchError
    from voice.audio import AudioError
    from voice.settings import ConfigError

    try:
        run([Path(d) for d in args.data_dirs], Path(args.out), config_file=getattr(args, "config", None),
            refresh=args.refresh, plot=not args.no_plot)
    except (BenchError, AudioError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def add_endpoint_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("endpoint", help="endpointing benchmark: false cut-offs against latency at every pause "
                                        "(silence only, Smart Turn alone, text cues alone, the controller)")
    p.add_argument("data_dirs", nargs="+", metavar="DATA",
                   help="FDB v1 data folders (task folders with numbered samples)")
    p.add_argument("--out", default="out/endpoint", help="output folder (default: out/endpoint)")
    p.add_argument("--refresh", action="store_true",
                   help="recompute the features even where OUT/features already has them")
    p.add_argument("--no-plot", action="store_true", help="skip the Pareto plot")
    p.set_defaults(func=main_endpoint)
