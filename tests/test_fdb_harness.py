"""End to end: `voice bench make-data` (N=1 per task), then `voice bench fdb` on the cascaded path.

Real models, real audio, the real CLI: the output tree must be complete in
FDB's layout and every number in metrics.json within its definition's range.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

pytestmark = pytest.mark.slow

TASKS = ("pause_handling", "smooth_turn_taking", "user_interruption", "backchannel")
META = {"pause_handling": "pause.json", "smooth_turn_taking": "turn_taking.json",
        "user_interruption": "interrupt.json", "backchannel": None}


def _voice(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voice.cli", *args], capture_output=True, text=True, timeout=900)


def test_make_data_then_harness_writes_a_complete_scored_tree(tmp_path: Path):
    data, out = tmp_path / "data", tmp_path / "out"
    made = _voice("bench", "make-data", str(data), "--n", "1", "--seed", "3")
    assert made.returncode == 0, made.stderr[-2000:]
    run = _voice("bench", "fdb", str(data), "--task", "all", "--pipeline", "cascaded", "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "real time" in run.stdout  # the harness reports its own speed

    for task in TASKS:
        sample = out / task / "1"
        n_in = sf.info(str(data / task / "1" / "input.wav")).frames
        assert sf.info(str(sample / "output.wav")).frames == n_in  # time-synchronous, same length
        transcript = json.loads((sample / "output.json").read_text())
        assert set(transcript) >= {"text", "chunks"}
        for chunk in transcript["chunks"]:
            start, end = chunk["timestamp"]
            assert 0 <= start <= end
        if META[task]:
            assert (sample / META[task]).read_text() == (data / task / "1" / META[task]).read_text()
        assert (sample / "events.jsonl").stat().st_size > 0

    metrics = json.loads((out / "metrics.json").read_text())
    by_task = {s["task"]: s for s in metrics["summaries"]}
    assert set(by_task) == set(TASKS)
    for task, s in by_task.items():
        assert s["n"] == 1 and s["n_failed"] == 0, s
        assert s["tor"] in (0, 1, 0.0, 1.0), s
    # A complete question followed by silence: the agent must take the turn, after the user stopped.
    assert by_task["smooth_turn_taking"]["tor"] == 1
    assert by_task["smooth_turn_taking"]["latency"] >= 0
    assert by_task["backchannel"]["frequency"] >= 0
    assert by_task["user_interruption"]["relevance"] is None  # no judge configured: not measured, never invented
    assert metrics["config"]["rtf"] > 0
    report = (out / "report.md").read_text()
    assert "Moshi" in report and "Freeze-Omni" in report  # beside the published results
    assert len(list(out.glob("*.png"))) >= 3
