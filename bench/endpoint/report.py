"""Compute (or reuse) the features of every recording, sweep the policies, write the report.

OUT/features/<data>/<set>/<n>.json   the controller's inputs and labelled pauses per recording
OUT/summary.json                      every operating point, the budgets, the controller's own setting
OUT/report.md                         the tables
OUT/pareto.png                        false cut-offs against latency, one frontier per policy
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.endpoint import sweep
from bench.endpoint.features import Recording, extract
from bench.fdb.layout import BenchError, find_task_sets, read_samples

FAMILIES = ("silence", "smart_turn", "text", "lm", "controller")
TITLES = {"silence": "silence only (VAD)", "smart_turn": "Smart Turn v3.2 alone", "text": "text cues alone",
          "lm": "LM end-of-utterance alone", "controller": "our controller (fused)"}


def load_recordings(data_dirs: list[Path], out: Path, settings, *, refresh: bool = False,
                    log=print) -> list[Recording]:
    models = None
    scorer = None
    recs = []
    for data in data_dirs:
        for task_set in find_task_sets(data):
            for sample in read_samples(task_set):
                cache = out / "features" / data.name / task_set.name / f"{sample.name}.json"
                if cache.is_file() and not refresh:
                    rec = Recording.from_json(json.loads(cache.read_text()))
                    if any(p.lm_p is None and p.text.strip() for p in rec.pauses):  # cached before the LM policy
                        scorer = scorer or _lm_scorer(settings)
                        _score_lm(rec, scorer)
                        cache.write_text(json.dumps(rec.to_json()))
                    recs.append(rec)
                    continue
                if models is None:
                    models = _models(settings)
                from voice.audio import read_wav

                rec = extract(read_wav(sample.input_wav), name=f"{data.name}/{task_set.name}/{sample.name}",
                              task=task_set.task, meta=sample.meta, vad_settings=settings.vad, **models)
                scorer = scorer or _lm_scorer(settings)
                _score_lm(rec, scorer)
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(rec.to_json()))
                log(f"features {rec.name}: {len(rec.pauses)} pauses")
                recs.append(rec)
    return recs


def _lm_scorer(settings):
    from bench.endpoint.lm import EndOfUtterance
    from models.weights import EMBEDDED

    # The agent's own GGUF model when it runs one, else the embedded one.
    path = settings.llm.model_path if settings.llm.backend == "llama-cpp" else EMBEDDED
    return EndOfUtterance(path, settings.llm.system_prompt)


def _score_lm(rec: Recording, scorer) -> None:
    for p in rec.pauses:
        if p.text.strip():
            p.lm_p, p.lm_s = scorer.probability(p.text)


def _models(settings) -> dict[str, Any]:
    from models.asr import load_transcriber
    from models.turn import SmartTurn

    return {"transcriber": load_transcriber(settings.asr), "smart_turn": SmartTurn()}


def evaluate(recs: list[Recording], base_config) -> dict[str, Any]:
    points = {
        "silence": sweep.silence_points(recs),
        "smart_turn": sweep.smart_turn_points(recs),
        "text": sweep.text_points(recs),
        "lm": sweep.lm_points(recs),
        "controller": sweep.controller_points(recs, base_config),
    }
    summary: dict[str, Any] = {"families": {}, "settings": asdict(sweep.default_point(recs, base_config))}
    for fam, pts in points.items():
        entry: dict[str, Any] = {"points": [asdict(p) for p in pts],
                                 "frontier": [asdict(p) for p in sweep.frontier(pts)]}
        for b in sweep.LATENCY_BUDGETS:
            best = sweep.cutoff_at_latency(pts, b)
            entry[f"cutoff_at_{int(b * 1000)}ms"] = None if best is None else asdict(best)
        for b in sweep.CUTOFF_BUDGETS:
            best = sweep.latency_at_cutoff(pts, b)
            entry[f"latency_at_{int(b * 100)}pct"] = None if best is None else asdict(best)
        summary["families"][fam] = entry
    holds = sum(1 for r in recs for p in r.pauses if p.label == "hold")
    eots = sum(1 for r in recs for p in r.pauses if p.label == "eot")
    summary["data"] = {"recordings": len(recs), "hold_pauses": holds, "eot_pauses": eots}
    return summary


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f} %"


def _ms(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{1000 * x:.0f} ms"


def markdown(summary: dict[str, Any]) -> str:
    d = summary["data"]
    lines = [
        "# Endpointing benchmark",
        "",
        f"{d['recordings']} recordings, {d['hold_pauses']} mid-turn pauses (hold), {d['eot_pauses']} turn ends (eot).",
        "Latency: mean silence from the VAD's end of speech to the decision at true turn ends;",
        "false cut-off: the turn taken in a mid-turn pause. Budgets as eot-bench: the lowest cut-off",
        "rate among settings whose mean latency is within the budget, and vice versa (– none reaches it).",
        "",
        "| policy | false cut-offs @ 300 ms | false cut-offs @ 600 ms | latency @ 5 % cut-offs | latency @ 10 % cut-offs |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for fam in FAMILIES:
        e = summary["families"][fam]
        c300, c600 = e["cutoff_at_300ms"], e["cutoff_at_600ms"]
        l5, l10 = e["latency_at_5pct"], e["latency_at_10pct"]
        lines.append(f"| {TITLES[fam]} | {_pct(c300 and c300['cutoff_rate'])} | {_pct(c600 and c600['cutoff_rate'])} "
                     f"| {_ms(l5 and l5['mean_latency'])} | {_ms(l10 and l10['mean_latency'])} |")
    s = summary["settings"]
    lines += ["", "The controller at the configured settings (no sweep): "
              f"false cut-offs {_pct(s['cutoff_rate'])} ({s['cutoffs']} of {s['n_hold']}), "
              f"mean latency {_ms(s['mean_latency'])} (median {_ms(s['median_latency'])}) over {s['n_eot']} turn ends.",
              "", "Operating points chosen at each budget:", ""]
    for fam in FAMILIES:
        e = summary["families"][fam]
        for key in ("cutoff_at_300ms", "cutoff_at_600ms", "latency_at_5pct", "latency_at_10pct"):
            p = e[key]
            if p is not None:
                lines.append(f"- {TITLES[fam]}, {key}: {p['params']} -> cut-offs {_pct(p['cutoff_rate'])}, "
                             f"mean latency {_ms(p['mean_latency'])}")
    return "\n".join(lines) + "\n"


def plot_frontiers(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for fam in FAMILIES:
        front = summary["families"][fam]["frontier"]
        ax.step([p["mean_latency"] for p in front], [100 * p["cutoff_rate"] for p in front], where="post",
                marker="o", ms=3, label=TITLES[fam])
    s = summary["settings"]
    ax.plot([s["mean_latency"]], [100 * s["cutoff_rate"]], "k*", ms=12, label="controller, configured")
    for b in (0.3, 0.6):
        ax.axvline(b, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("mean latency at true turn ends (s)")
    ax.set_ylabel("false cut-offs at mid-turn pauses (%)")
    ax.set_title("Endpointing: Pareto frontiers (lower left is better)")
    ax.set_xlim(0, 3.2)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(data_dirs: list[Path], out: Path, *, config_file=None, refresh: bool = False,
        plot: bool = True) -> dict[str, Any]:
    from voice.settings import load_settings

    settings = load_settings(config_file)
    out.mkdir(parents=True, exist_ok=True)
    recs = load_recordings(data_dirs, out, settings, refresh=refresh)
    if not any(p.label == "hold" for r in recs for p in r.pauses) or not any(
            p.label == "eot" for r in recs for p in r.pauses):
        raise BenchError("the data has no mid-turn pause or no labelled turn end to judge")
    summary = evaluate(recs, settings.turn.controller_config())
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(markdown(summary))
    if plot:
        plot_frontiers(summary, out / "pareto.png")
    print(markdown(summary))
    return summary
