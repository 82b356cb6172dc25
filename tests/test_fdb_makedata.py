"""Synthetic FDB data: layout, metadata against the audio's energy, determinism; layout errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.fdb.layout import BenchError, find_task_sets, prepare_output, read_samples
from bench.fdb.makedata import MAKE_TASKS, make_data, make_sample
from bench.fdb.runner import fit_output_length, talk_function

RATE = 16000
FRAME = RATE // 50  # 20 ms


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("fdb") / "data", n=1, seed=11)


def _read(path: Path) -> np.ndarray:
    audio, sr = sf.read(str(path), dtype="float32")
    assert sr == RATE
    return audio


def _loud_frames(audio: np.ndarray) -> tuple[np.ndarray, float]:
    """Start times of 20 ms frames clearly above the file's noise floor (first 0.25 s is always silence)."""
    n = len(audio) // FRAME
    rms = np.sqrt(np.mean(audio[:n * FRAME].reshape(n, FRAME).astype(np.float64) ** 2, axis=1))
    floor = float(np.sqrt(np.mean(audio[:RATE // 4].astype(np.float64) ** 2)))
    return np.flatnonzero(rms > 4 * floor + 3e-4) * FRAME / RATE, floor


def _check_spans(audio: np.ndarray, spans: list[list[float]], edge_tol: float = 0.15) -> None:
    """Loud audio only inside the spans; each span loud from near its start to near its end."""
    loud, _ = _loud_frames(audio)
    f = FRAME / RATE
    inside = np.zeros(len(loud), dtype=bool)
    for s, e, *_ in spans:
        mine = loud[(loud + f > s) & (loud < e)]
        inside |= (loud + f > s) & (loud < e)
        assert len(mine), f"span {s}-{e} is silent"
        assert mine[0] - s < edge_tol and e - (mine[-1] + f) < edge_tol, (s, e, mine[0], mine[-1] + f)
    assert inside.all(), f"loud audio outside the speech spans at {loud[~inside][:5]}"


def test_layout(data: Path):
    assert sorted(p.name for p in data.iterdir()) == sorted(MAKE_TASKS)
    expected = {"pause_handling": {"input.wav", "pause.json", "synth.json"},
                "smooth_turn_taking": {"input.wav", "turn_taking.json", "synth.json"},
                "user_interruption": {"input.wav", "interrupt.json", "synth.json"},
                "backchannel": {"input.wav", "synth.json"}}
    for task, files in expected.items():
        assert {p.name for p in (data / task / "1").iterdir()} == files
        info = sf.info(str(data / task / "1" / "input.wav"))
        assert (info.samplerate, info.channels, info.subtype) == (RATE, 1, "PCM_16")
    sets = find_task_sets(data)
    assert sorted(s.task for s in sets) == sorted(MAKE_TASKS)
    for ts in sets:
        (sample,) = read_samples(ts)
        assert sample.name == "1" and (sample.meta is None) == (ts.task == "backchannel")


def _synth(data: Path, task: str) -> dict:
    return json.loads((data / task / "1" / "synth.json").read_text())


def test_pause_metadata_matches_audio(data: Path):
    audio = _read(data / "pause_handling" / "1" / "input.wav")
    synth = _synth(data, "pause_handling")
    (pause,) = json.loads((data / "pause_handling" / "1" / "pause.json").read_text())
    s, e = pause["timestamp"]
    first, second = synth["speech"]
    assert pause["text"] == "[PAUSE]" and (s, e) == (first[1], second[0])
    assert 1.0 <= e - s <= 2.0
    _check_spans(audio, synth["speech"])
    assert len(audio) / RATE - second[1] == pytest.approx(0.2, abs=1e-3)  # ends right after the user


def test_turn_taking_metadata_matches_audio(data: Path):
    audio = _read(data / "smooth_turn_taking" / "1" / "input.wav")
    synth = _synth(data, "smooth_turn_taking")
    (turn,) = json.loads((data / "smooth_turn_taking" / "1" / "turn_taking.json").read_text())
    s, e = turn["timestamp"]
    assert turn["text"] == "[TURN-TAKING]" and s == synth["speech"][-1][1]
    assert e == pytest.approx(len(audio) / RATE, abs=1e-3) and 5.5 <= e - s <= 6.5
    _check_spans(audio, synth["speech"])


def test_interruption_metadata_matches_audio(data: Path):
    audio = _read(data / "user_interruption" / "1" / "input.wav")
    synth = _synth(data, "user_interruption")
    (meta,) = json.loads((data / "user_interruption" / "1" / "interrupt.json").read_text())
    question, interrupt = synth["speech"]
    assert meta["context"] == question[2] and meta["interrupt"] == interrupt[2]
    assert meta["timestamp"] == interrupt[:2]
    assert 3.0 <= interrupt[0] - question[1] <= 4.0
    # offline default: the interruption comes 1.5 s after the agent's expected start
    assert interrupt[0] - synth["agent_start"]["t"] == pytest.approx(1.5, abs=1e-3)
    assert synth["agent_start"]["source"] == "expected"
    _check_spans(audio, synth["speech"])


def test_backchannel_monologue_matches_audio(data: Path):
    audio = _read(data / "backchannel" / "1" / "input.wav")
    speech = _synth(data, "backchannel")["speech"]
    assert 20.0 <= speech[-1][1] <= 40.0 and len(speech) >= 4
    gaps = [b[0] - a[1] for a, b in zip(speech, speech[1:])]
    assert all(0.4 - 1e-3 <= g <= 1.2 + 1e-3 for g in gaps)
    _check_spans(audio, speech)


def test_interruption_timed_against_reported_agent_start():
    heard = {}

    def agent_start(audio: np.ndarray) -> float:
        # a stand-in agent that starts 0.7 s after the last sound it hears
        heard["seconds"] = len(audio) / RATE
        return float(np.flatnonzero(audio != 0)[-1] + 1) / RATE + 0.7

    _, files = make_sample("user_interruption", 0, 4, agent_start=agent_start)
    synth = files["synth.json"]
    question, interrupt = synth["speech"]
    assert synth["agent_start"]["source"] == "measured"
    assert interrupt[0] == pytest.approx(synth["agent_start"]["t"] + 1.5, abs=1e-3)
    assert synth["agent_start"]["t"] == pytest.approx(question[1] + 0.7, abs=0.05)
    assert heard["seconds"] == pytest.approx(question[1] + 8.0, abs=1e-3)


def test_deterministic_for_a_seed(tmp_path: Path):
    a = make_data(tmp_path / "a", n=1, seed=5, tasks=("pause_handling", "user_interruption"))
    b = make_data(tmp_path / "b", n=1, seed=5, tasks=("pause_handling", "user_interruption"))
    c = make_data(tmp_path / "c", n=1, seed=6, tasks=("pause_handling", "user_interruption"))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert any((a / rel).read_bytes() != (c / rel).read_bytes() for rel in files)


def test_banks_are_varied():
    from bench.fdb import makedata as m

    assert len(set(m.QUESTIONS)) >= 30 and len(set(m.INTERRUPTIONS)) >= 20 and len(set(m.MONOLOGUE)) >= 30
    assert len(set(m.PAUSE_QUESTIONS)) >= 30 and len(m.VOICES) >= 8


# ------------------------------------------------------------------ layout errors

def test_missing_data_folder(tmp_path: Path):
    with pytest.raises(BenchError, match="not found"):
        find_task_sets(tmp_path / "nope")


def test_no_task_folder(tmp_path: Path):
    with pytest.raises(BenchError, match="no task folder"):
        find_task_sets(tmp_path, ["pause_handling"])


def test_published_folder_names_are_task_sets(tmp_path: Path):
    for name in ("synthetic_pause_handling", "candor_pause_handling", "candor_turn_taking", "icc_backchannel"):
        (tmp_path / name / "0").mkdir(parents=True)
    sets = {s.name: s.task for s in find_task_sets(tmp_path)}
    assert sets == {"synthetic_pause_handling": "pause_handling", "candor_pause_handling": "pause_handling",
                    "candor_turn_taking": "smooth_turn_taking", "icc_backchannel": "backchannel"}
    # a task folder given directly
    assert [s.task for s in find_task_sets(tmp_path / "candor_turn_taking")] == ["smooth_turn_taking"]


def test_sample_without_input_wav(tmp_path: Path):
    (tmp_path / "backchannel" / "3").mkdir(parents=True)
    (ts,) = find_task_sets(tmp_path, ["backchannel"])
    with pytest.raises(BenchError, match="has no input.wav"):
        read_samples(ts)


def test_malformed_and_incomplete_json(tmp_path: Path, data: Path):
    d = tmp_path / "smooth_turn_taking" / "1"
    d.mkdir(parents=True)
    (d / "input.wav").write_bytes((data / "smooth_turn_taking" / "1" / "input.wav").read_bytes())
    (ts,) = find_task_sets(tmp_path, ["smooth_turn_taking"])
    with pytest.raises(BenchError, match="has no turn_taking.json"):
        read_samples(ts)
    (d / "turn_taking.json").write_text('[{"text": "[TURN-TAKING]", "timestamp": [1.0, ')
    with pytest.raises(BenchError, match="malformed JSON") as err:
        read_samples(ts)
    assert "\n" not in str(err.value)
    (d / "turn_taking.json").write_text('[{"text": "[TURN-TAKING]", "timestamp": [1.0]}]')
    with pytest.raises(BenchError, match="two numbers"):
        read_samples(ts)


def test_output_tree_mirrors_input(tmp_path: Path, data: Path):
    (ts,) = find_task_sets(data, ["user_interruption"])
    (sample,) = read_samples(ts)
    out = prepare_output(tmp_path / "out", sample)
    assert out == tmp_path / "out" / "user_interruption" / "1"
    assert (out / "interrupt.json").read_bytes() == (sample.path / "interrupt.json").read_bytes()
    assert (out / "input.wav").read_bytes() == sample.input_wav.read_bytes()
    assert sample.reference_time == sample.meta[0]["timestamp"][1]


def test_output_is_fitted_to_the_input_length(tmp_path: Path, data: Path):
    from voice.audio import write_wav

    inp = data / "pause_handling" / "1" / "input.wav"
    n = sf.info(str(inp)).frames
    out = tmp_path / "output.wav"
    write_wav(out, np.full(n + RATE, 0.1, dtype=np.float32), RATE)  # the agent talked past the end
    fit_output_length(out, inp)
    assert sf.info(str(out)).frames == n and sf.info(str(tmp_path / "output_full.wav")).frames == n + RATE
    write_wav(out, np.zeros(n // 2, dtype=np.float32), 24000)  # shorter, other rate
    fit_output_length(out, inp)
    info = sf.info(str(out))
    assert (info.frames, info.samplerate) == (n, RATE)


def test_unknown_transport_and_missing_webrtc_runner():
    with pytest.raises(BenchError, match="unknown transport"):
        talk_function("carrier-pigeon")
    try:
        import voice.bench_webrtc  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(BenchError, match="voice.bench_webrtc.talk_file_webrtc"):
            talk_function("webrtc")


def test_piper_speaker_pauses_inside_one_spoken_sentence(tmp_path: Path):
    """--speaker piper: the question is spoken whole and cut at the word boundary; the metadata still
    matches the audio, and the recogniser hears the first half as the first half."""
    import re

    from models.asr import load_transcriber
    from voice.settings import ASRSettings

    data = make_data(tmp_path / "piper", n=1, seed=11, tasks=["pause_handling"], speaker="piper")
    audio = _read(data / "pause_handling" / "1" / "input.wav")
    synth = _synth(data, "pause_handling")
    assert synth["voice"].startswith("piper:") and synth["split"] == "cut at a word boundary"
    first, second = synth["speech"]
    assert 1.0 <= second[0] - first[1] <= 2.0
    _check_spans(audio, synth["speech"])
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z']+", text.lower())

    heard = words(load_transcriber(ASRSettings()).transcribe(audio[:int((first[1] + 0.2) * RATE)]))
    said = words(first[2])
    assert said[0] in heard and said[-2] in heard, (heard, first[2])
    assert words(second[2])[-1] not in heard, (heard, second[2])


def test_unknown_speaker(tmp_path: Path):
    with pytest.raises(BenchError, match="unknown speaker"):
        make_sample("pause_handling", 0, 1, speaker="festival")
