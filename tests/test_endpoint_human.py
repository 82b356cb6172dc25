"""The endpoint benchmark's replay against the live agent, on recordings of real people."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import pytest

from bench.endpoint.features import extract
from bench.endpoint.replay import decisions_by_pause, from_event_log, replay
from bench.fdb.layout import read_json
from tests.conftest import ROOT
from voice.audio import read_wav
from voice.talk import talk_file

pytestmark = pytest.mark.slow

HUMAN = ROOT / "tests" / "fixtures" / "human"
CASES = [("smooth_turn_taking/1", "turn_taking.json"), ("pause_handling/1", "pause.json")]


@pytest.mark.parametrize("case,meta_name", CASES)
def test_replay_agrees_with_the_live_session(tmp_path, settings, runtime, case, meta_name):
    wav = HUMAN / case / "input.wav"
    events_path = tmp_path / "events.jsonl"
    asyncio.run(talk_file(wav, tmp_path / "out.wav", events_path, settings, runtime=runtime))
    config = settings.turn.controller_config()

    # 1. The live session's own inputs, replayed straight through: the same decisions.
    inputs, live = from_event_log(events_path)
    assert live, "the live agent never took the turn"
    duration = max(e["at"] for e in inputs) + 3.0
    replayed = replay(inputs, duration, config, independent=False)
    assert [d["speech_end"] for d in replayed] == [d["speech_end"] for d in live]
    assert [d["text"] for d in replayed] == [d["text"] for d in live]
    for r, d in zip(replayed, live):
        assert r["t"] == pytest.approx(d["t"], abs=0.021), (r, d)

    # 2. The features computed offline: the first live decision falls in the same pause, at
    # about the same time (the offline decode times are this machine's, not the live run's).
    audio = read_wav(wav)
    rec = extract(audio, name=case, task=case.split("/")[0], meta=read_json(HUMAN / case / meta_name),
                  vad_settings=settings.vad, transcriber=runtime.transcriber, smart_turn=runtime.smart_turn)
    offline = decisions_by_pause(replay(rec.events, rec.duration, config), rec.pauses)
    first = live[0]
    pause = next(p for p in rec.pauses if abs(p.end - first["speech_end"]) < 0.03)
    assert pause.index in offline, f"offline replay kept quiet where the live agent spoke: {first}"
    assert offline[pause.index] == pytest.approx(first["t"], abs=0.15)
    assert pause.text == first["text"]


def test_endpoint_command_on_human_recordings(tmp_path):
    out = tmp_path / "endpoint"
    proc = subprocess.run([sys.executable, "-m", "voice.cli", "bench", "endpoint", str(HUMAN), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    data = summary["data"]
    assert data["recordings"] == 2 and data["hold_pauses"] >= 2 and data["eot_pauses"] == 1
    assert set(summary["families"]) == {"silence", "smart_turn", "text", "lm", "controller"}
    for family in summary["families"].values():
        assert family["frontier"], "every policy has operating points"
        for p in family["points"]:
            assert 0.0 <= p["cutoff_rate"] <= 1.0 and p["mean_latency"] > 0.0
    assert (out / "pareto.png").stat().st_size > 10_000
    assert "false cut-offs @ 300 ms" in (out / "report.md").read_text()
    features = sorted((out / "features").rglob("*.json"))
    assert len(features) == 2
    # The second run reuses the features it wrote.
    again = subprocess.run([sys.executable, "-m", "voice.cli", "bench", "endpoint", str(HUMAN), "--out", str(out),
                            "--no-plot"], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert again.returncode == 0 and "features " not in again.stdout


def test_endpoint_command_rejects_bad_data(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "voice.cli", "bench", "endpoint", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: data folder not found")
