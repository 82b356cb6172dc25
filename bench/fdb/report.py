"""OUT_DIR/report.md: our FDB v1 numbers beside the published table, per-sample rows, plots.

Plots (PNG, matplotlib Agg): latency distribution, TOR per task set, and a
timeline of one sample: user speech and agent speech (Silero VAD of input.wav
and output.wav), the task's reference span, backchannel segments, and the
agent's events from events.jsonl (endpoint decisions, barge-ins, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.fdb.layout import EVENTS, INPUT_WAV, OUTPUT_WAV, read_json

# Published Full-Duplex-Bench v1.0 results (fdb.md). Order of COLUMNS.
COLUMNS = (
    ("pause_synthetic", "pause TOR (synthetic) ↓"),
    ("pause_candor", "pause TOR (Candor) ↓"),
    ("bc_tor", "backchannel TOR ↓"),
    ("bc_freq", "backchannel freq ↑"),
    ("bc_jsd", "JSD ↓"),
    ("tt_tor", "turn-taking TOR ↑"),
    ("tt_latency", "turn-taking latency s ↓"),
    ("ui_tor", "interruption TOR ↑"),
    ("ui_relevance", "relevance ↑"),
    ("ui_latency", "interruption latency s ↓"),
)

PUBLISHED = {
    "PersonaPlex": (0.584, 0.662, 0.327, 0.025, 0.649, 0.992, 0.070, 1.000, 4.21, 0.400),
    "dGSLM": (0.934, 0.935, 0.691, 0.015, 0.934, 0.975, 0.352, 0.917, 0.20, 2.531),
    "Moshi": (0.985, 0.980, 1.000, 0.001, 0.957, 0.941, 0.265, 1.000, 0.77, 0.257),
    "Freeze-Omni (cascaded)": (0.642, 0.481, 0.636, 0.001, 0.997, 0.336, 0.953, 0.867, 3.62, 1.409),
    "Gemini Live 2.0": (0.255, 0.310, 0.091, 0.012, 0.896, 0.655, 1.301, 0.891, 3.38, 1.183),
    "GPT-Realtime": (0.010, 0.120, 0.000, 0.007, 0.980, 1.000, 1.470, 0.970, 3.85, 1.500),
}


# Timeline: events that only restate other rows are left out; decisions are listed first.
EVENT_SKIP = {"state", "turn_metrics", "agent_text", "asr_partial", "session_start", "session_end"}
EVENT_KEYS = ("endpoint", "backchannel", "barge", "interrupt", "agent_audio")


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _cell(d: dict[str, Any], key: str) -> Any:
    """A table cell: blank where the metric does not apply, "not measured" where it applies but is None."""
    return d[key] if key in d else ""


def _weighted(summaries: list[dict[str, Any]], key: str, count_key: str = "n") -> float | None:
    pairs = [(s.get(key), s.get(count_key) or 0) for s in summaries if s.get(key) is not None]
    total = sum(n for _, n in pairs)
    if not pairs or total == 0:
        return None
    return sum(v * n for v, n in pairs) / total


def our_row(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Our value for each published column; "not run" where no set of that task was run."""
    def sets(task: str, candor: bool | None = None) -> list[dict[str, Any]]:
        return [s for s in summaries if s["task"] == task
                and (candor is None or ("candor" in s.get("set", "").lower()) == candor)]

    picks = {
        "pause_synthetic": (sets("pause_handling", False), "tor", "n"),
        "pause_candor": (sets("pause_handling", True), "tor", "n"),
        "bc_tor": (sets("backchannel"), "tor", "n"),
        "bc_freq": (sets("backchannel"), "frequency", "n"),
        "bc_jsd": (sets("backchannel"), "jsd", "n_jsd"),
        "tt_tor": (sets("smooth_turn_taking"), "tor", "n"),
        "tt_latency": (sets("smooth_turn_taking"), "latency", "n_latency"),
        "ui_tor": (sets("user_interruption"), "tor", "n"),
        "ui_relevance": (sets("user_interruption"), "relevance", "n_relevance"),
        "ui_latency": (sets("user_interruption"), "latency", "n_latency"),
    }
    return {col: (_weighted(chosen, key, n) if chosen else "not run") for col, (chosen, key, n) in picks.items()}


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(rows: list[dict[str, Any]], path: Path) -> Path | None:
    data = {t: [r["latency"] for r in rows if r.get("task") == t and r.get("latency") is not None]
            for t in ("smooth_turn_taking", "user_interruption")}
    if not any(data.values()):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, vals in data.items():
        if vals:
            ax.hist(vals, bins=min(20, max(5, len(vals))), alpha=0.6, label=f"{label} (n={len(vals)})")
    ax.set_xlabel("latency (s): first agent word - reference time, clipped at 0")
    ax.set_ylabel("samples")
    ax.legend()
    ax.set_title("FDB v1 latency distribution")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_tor(summaries: list[dict[str, Any]], path: Path) -> Path | None:
    shown = [s for s in summaries if s.get("tor") is not None]
    if not shown:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [s["set"] for s in shown]
    ax.bar(names, [s["tor"] for s in shown], color="tab:blue")
    for i, s in enumerate(shown):
        better = "lower" if s["task"] in ("pause_handling", "backchannel") else "higher"
        ax.text(i, s["tor"] + 0.02, f"{s['tor']:.2f}\n({better} better)", ha="center", fontsize=8)
    ax.set_ylim(0, 1.25)
    ax.set_ylabel("take-over rate")
    ax.set_title("FDB v1 TOR per task set")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def read_events(path: Path) -> list[dict[str, Any]]:
    """events.jsonl lines ({t, event, session, turn, ...}); unreadable lines are skipped."""
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(e, dict) and isinstance(e.get("t"), (int, float)) and "event" in e:
            events.append(e)
    return events


def _reference_span(sample_dir: Path, task: str) -> tuple[str, list[float]] | None:
    name = {"pause_handling": "pause.json", "smooth_turn_taking": "turn_taking.json",
            "user_interruption": "interrupt.json"}.get(task)
    if name and (sample_dir / name).is_file():
        try:
            return name.removesuffix(".json"), list(read_json(sample_dir / name)[0]["timestamp"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None
    return None


def plot_timeline(sample_dir: Path, task: str, path: Path, row: dict[str, Any] | None = None) -> Path | None:
    """User vs agent speech (VAD), the reference span, backchannels and agent events of one sample."""
    from bench.fdb.metrics import vad_segments
    from voice.audio import read_wav

    if not (sample_dir / INPUT_WAV).is_file() or not (sample_dir / OUTPUT_WAV).is_file():
        return None
    user = read_wav(sample_dir / INPUT_WAV, rate=16000)
    agent = read_wav(sample_dir / OUTPUT_WAV, rate=16000)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for y, segs, color, label in ((3, vad_segments(user), "tab:blue", "user speech"),
                                  (2, vad_segments(agent), "tab:orange", "agent speech")):
        ax.broken_barh([(s, e - s) for s, e in segs], (y - 0.35, 0.7), color=color, label=label)
    span = _reference_span(sample_dir, task)
    if span:
        ax.axvspan(span[1][0], span[1][1], color="grey", alpha=0.15, label=f"{span[0]} [s, e]")
    if row and row.get("segments"):
        bcs = [(s["start"], s["end"] - s["start"]) for s in row["segments"] if s["kind"] == "backchannel"]
        if bcs:
            ax.broken_barh(bcs, (1.65, 0.7), color="tab:green", label="backchannel")
    events = [e for e in read_events(sample_dir / EVENTS) if e["event"] not in EVENT_SKIP]
    kinds = list(dict.fromkeys(e["event"] for e in events))
    kinds = ([k for k in kinds if any(w in k for w in EVENT_KEYS)] + [k for k in kinds if not any(w in k for w in EVENT_KEYS)])[:10]
    cmap = plt.get_cmap("tab10")
    for i, kind in enumerate(kinds):
        ts = [e["t"] for e in events if e["event"] == kind]
        ax.scatter(ts, [1] * len(ts), marker="|", s=300, color=cmap(i % 10), label=f"event: {kind}")
    ax.set_yticks([1, 2, 3], ["events", "agent", "user"])
    ax.set_xlim(0, len(user) / 16000)
    ax.set_ylim(0.4, 3.6)
    ax.set_xlabel("seconds (input clock)")
    ax.set_title(f"{sample_dir.parent.name}/{sample_dir.name}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _timeline_choice(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in rows if "error" not in r]
    for task in ("user_interruption", "smooth_turn_taking", "pause_handling", "backchannel"):
        for r in ok:
            if r["task"] == task:
                return r
    return None


# --------------------------------------------------------------- report

def write_report(out_dir: str | Path, result: dict[str, Any] | None = None) -> Path:
    """Write OUT_DIR/report.md and its PNGs from metrics.json (or ``result``); return the report path."""
    out = Path(out_dir)
    result = result if result is not None else read_json(out / "metrics.json")
    summaries, rows, config = result["summaries"], result["samples"], result.get("config", {})
    ours = our_row(summaries)
    label = f"this agent ({config.get('pipeline', '?')}, {config.get('transport', '?')})"

    md = ["# Full-Duplex-Bench v1 report", ""]
    md.append(f"Data: `{config.get('data_dir')}`; pipeline: {config.get('pipeline')}; transport: "
              f"{config.get('transport')}; relevance judge: {config.get('judge') or 'none (not measured)'}; "
              f"human backchannel distribution: {'yes' if config.get('gt_distribution') else 'no (JSD not measured)'}.")
    md += ["", "## Against the published v1.0 table", ""]
    header = ["model"] + [c[1] for c in COLUMNS]
    table_rows = [[f"**{label}**"] + [ours[c[0]] for c in COLUMNS]]
    table_rows += [[name] + list(vals) for name, vals in PUBLISHED.items()]
    md.append(_md_table(header, table_rows))
    md += ["", "Published numbers are on the FDB v1 data; ours are on the data in `" + str(config.get("data_dir"))
           + "` (synthetic sets count under the synthetic pause column), so compare with care.", ""]

    md += ["## Per task set", ""]
    srows = []
    for s in summaries:
        srows.append([s["set"], s["task"], s["n"], s.get("n_failed", 0)]
                     + [_cell(s, k) for k in ("tor", "latency", "relevance", "frequency", "jsd", "tor_strict")])
    md.append(_md_table(["set", "task", "n", "failed", "TOR", "latency s", "relevance", "bc freq", "JSD",
                         "bc TOR (strict)"], srows))
    md += ["", "Backchannel TOR/frequency/JSD follow the reference's eval_backchannel.py (every VAD segment "
           "of at most 3 s before the first longer one counts); the strict column reads fdb.md's "
           "wording literally (TOR 1 if any VAD segment is not a backchannel).", ""]

    plots = []
    for name, fn in (("latency_distribution.png", lambda p: plot_latency(rows, p)),
                     ("tor_per_task.png", lambda p: plot_tor(summaries, p))):
        if fn(out / name):
            plots.append(name)
    choice = _timeline_choice(rows)
    if choice:
        if plot_timeline(out / choice["set"] / choice["sample"], choice["task"], out / "timeline.png", choice):
            plots.append("timeline.png")
    if plots:
        md += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]

    md += ["## Per sample", ""]
    prow = []
    for r in rows:
        prow.append([r["set"], r["sample"]]
                    + [_cell(r, k) for k in ("tor", "latency", "relevance", "frequency", "jsd")]
                    + [r.get("error") or (r.get("text") or "")[:80].replace("|", "/")])
    md.append(_md_table(["set", "sample", "TOR", "latency s", "relevance", "bc freq", "JSD", "reply / error"], prow))
    md.append("")
    path = out / "report.md"
    path.write_text("\n".join(md), encoding="utf-8")
    return path
