"""Choose the controller's turn-end settings on real speech, leave-one-speaker-out.

``python -m bench.endpoint.calibrate DATA --features OUT [--check OUT2 ...]``

DATA is an FDB-layout folder whose cases carry ``source.json`` with a
``speaker`` (the human dev set); OUT is a ``voice bench endpoint DATA --out OUT``
folder (its features are reused). Every setting of the grid below is replayed
once over every recording; then, for each speaker in turn, the setting is
chosen on the other speakers' pauses and that speaker's pauses are judged
with it. The pooled held-out figures are what a new speaker can expect from
this procedure; the setting chosen on everyone is the one to ship, and the
folds show whether it is stable. ``--check`` folders (synthetic sets) are
scored at the current and the chosen setting, to see what they lose.

The rule: the lowest mean latency at true turn ends among settings with no
more false cut-offs than the reference setting (REFERENCE: stop 17's) makes on the same speakers
(``--max-cutoff current``, the default: faster, not more eager), or at most a
fixed rate (``--max-cutoff 0.1``); ties go to fewer cut-offs, then to the
setting nearest the reference.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.endpoint.features import Recording
from bench.endpoint.sweep import Table, fire_table, score_table

# statement_wait_s below 1.0 and Smart Turn's veto were in the grid once (stop 18): the
# first added cut-offs on every synthetic set, the second was never chosen.
GRID: dict[str, tuple] = {
    "smart_turn_confident_p": (1.01, 0.95, 0.9, 0.8),
    "endpoint_silence_s": (0.35, 0.4, 0.45),
    "confident_monologue_after_s": (0.0, 1.5, 3.0, 5.0),
    "monologue_wait_per_s": (0.08, 0.12),
}


# The turn-end settings before any calibration on real speech (stop 17): what "current" means below,
# so the guards and the cut-off budget stay fixed whatever the defaults become.
REFERENCE = {"smart_turn_confident_p": 1.01, "endpoint_silence_s": 0.45, "confident_monologue_after_s": 5.0,
             "monologue_wait_per_s": 0.08}


def load(out: Path) -> list[Recording]:
    files = sorted((out / "features").rglob("*.json"))
    if not files:
        raise SystemExit(f"error: no features under {out / 'features'} (run voice bench endpoint first)")
    return [Recording.from_json(json.loads(f.read_text())) for f in files]


def speakers(data: Path, recs: list[Recording]) -> dict[str, str]:
    """Recording name -> speaker, from each case's source.json."""
    out = {}
    for r in recs:
        _, set_name, n = r.name.split("/")
        src = data / set_name / n / "source.json"
        if not src.is_file():
            raise SystemExit(f"error: {src} not found: calibration needs each case's speaker")
        out[r.name] = json.loads(src.read_text())["speaker"]
    return out


def evaluate(recs: list[Recording], table: Table):
    return score_table("controller", {}, recs, table)


def choose(candidates: list[tuple[dict, Any]], max_cutoff: float, current: dict) -> tuple[dict, Any]:
    def distance(params: dict) -> float:
        return sum(abs(float(v) - float(current.get(k, v))) for k, v in params.items())

    ok = [(params, pt) for params, pt in candidates if pt.cutoff_rate <= max_cutoff + 1e-9]
    if not ok:  # nothing meets the budget: the fewest cut-offs
        return min(candidates, key=lambda c: (c[1].cutoff_rate, c[1].mean_latency, distance(c[0])))
    return min(ok, key=lambda c: (round(c[1].mean_latency, 4), c[1].cutoff_rate, distance(c[0])))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", type=Path, help="human FDB-layout data with source.json speakers")
    ap.add_argument("--features", type=Path, required=True, help="voice bench endpoint output folder for DATA")
    ap.add_argument("--check", type=Path, nargs="*", default=[], help="other endpoint output folders to score")
    ap.add_argument("--max-cutoff", default="current",
                    help="'current' (no more cut-offs than the current setting) or a rate, e.g. 0.1")
    ap.add_argument("--guard", type=Path, nargs="*", default=[],
                    help="endpoint output folders (the synthetic sets) on which a setting may not make more "
                         "cut-offs than the current one; a setting that does is not chosen")
    ap.add_argument("--guard-slack", type=int, default=0,
                    help="cut-offs a guard set may gain (default 0; 1 = one sample's worth)")
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)

    from voice.settings import load_settings

    base = replace(load_settings().turn.controller_config(), **REFERENCE)
    current = {k: getattr(base, k) for k in GRID}
    recs = load(args.features)
    who = speakers(args.data, recs)
    names = list(GRID)
    tables = []
    for values in itertools.product(*(GRID[n] for n in names)):
        params = dict(zip(names, values))
        tables.append((params, fire_table(recs, replace(base, **params))))
    print(f"{len(tables)} settings replayed over {len(recs)} recordings", file=sys.stderr)
    current_table = fire_table(recs, base)
    guards = [(g, load(g)) for g in args.guard]
    guard_now = [evaluate(recs_g, fire_table(recs_g, base)).cutoffs for _, recs_g in guards]
    tables = [(params, table) for params, table in tables
              if all(evaluate(recs_g, fire_table(recs_g, replace(base, **params))).cutoffs <= now + args.guard_slack
                     for (_, recs_g), now in zip(guards, guard_now))]
    print(f"{len(tables)} settings within the guards", file=sys.stderr)

    def budget(subset: list[Recording]) -> float:
        if args.max_cutoff == "current":
            return evaluate(subset, current_table).cutoff_rate
        return float(args.max_cutoff)

    folds = []
    held_tables: dict[tuple[str, int], float] = {}
    for spk in sorted(set(who.values())):
        train = [r for r in recs if who[r.name] != spk]
        test = [r for r in recs if who[r.name] == spk]
        params, _ = choose([(p, evaluate(train, t)) for p, t in tables], budget(train), current)
        table = dict(next(t for p, t in tables if p == params))
        held_tables.update({k: v for k, v in table.items() if who[k[0]] == spk})
        test_pt = evaluate(test, table)
        folds.append({"speaker": spk, "chosen": params, "held_out_cutoffs": test_pt.cutoffs,
                      "held_out_holds": test_pt.n_hold, "held_out_eots": test_pt.n_eot,
                      "held_out_mean_latency": None if math.isnan(test_pt.mean_latency) else test_pt.mean_latency})
    held = evaluate(recs, held_tables)
    final_params, final_pt = choose([(p, evaluate(recs, t)) for p, t in tables], budget(recs), current)
    current_pt = evaluate(recs, current_table)
    result: dict[str, Any] = {
        "max_cutoff": args.max_cutoff,
        "current": {"params": current, "cutoff_rate": current_pt.cutoff_rate, "cutoffs": current_pt.cutoffs,
                    "mean_latency": current_pt.mean_latency, "median_latency": current_pt.median_latency},
        "held_out": {"cutoff_rate": held.cutoff_rate, "cutoffs": held.cutoffs, "n_hold": held.n_hold,
                     "mean_latency": held.mean_latency, "median_latency": held.median_latency, "n_eot": held.n_eot},
        "chosen_on_all": {"params": final_params, "cutoff_rate": final_pt.cutoff_rate, "cutoffs": final_pt.cutoffs,
                          "mean_latency": final_pt.mean_latency, "median_latency": final_pt.median_latency},
        "fold_choices": Counter(json.dumps(f["chosen"], sort_keys=True) for f in folds).most_common(),
        "folds": folds,
        "checks": {},
    }
    for out in args.check:
        other = load(out)
        now_pt = evaluate(other, fire_table(other, base))
        new_pt = evaluate(other, fire_table(other, replace(base, **final_params)))
        result["checks"][str(out)] = {
            "current": {"cutoff_rate": now_pt.cutoff_rate, "cutoffs": now_pt.cutoffs, "n_hold": now_pt.n_hold,
                        "mean_latency": now_pt.mean_latency},
            "chosen": {"cutoff_rate": new_pt.cutoff_rate, "cutoffs": new_pt.cutoffs, "n_hold": new_pt.n_hold,
                       "mean_latency": new_pt.mean_latency}}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
