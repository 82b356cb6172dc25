"""FDB v1 metrics against values worked out by hand from FDB's definitions."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from bench.fdb import metrics
from bench.fdb.layout import BenchError
from bench.fdb.makedata import synthesize, trim
from bench.fdb.transcribe import crop_for_asr, to_output_json, transcribe_audio

FIX = Path(__file__).parent / "fixtures" / "fdb" / "output_json"
RATE = 16000


def load(name: str) -> dict:
    return json.loads((FIX / f"{name}.json").read_text())


def chunks(name: str) -> list:
    return metrics.words_of(load(name))


# ------------------------------------------------------------------ take-over

@pytest.mark.parametrize("name, tor", [
    ("no_words", 0),             # nothing said
    ("short_3_words", 0),        # 5.1 - 4.2 = 0.9 s < 1 s and 3 words <= 3
    ("exactly_1s_3_words", 1),   # 3.0 - 2.0 = 1.0 s is not < 1 s
    ("short_4_words", 1),        # 0.5 s but 4 words > 3
    ("long_reply", 1),           # 1.5 s, 6 words
    ("null_end", 1),             # last end missing -> its start: 2.5 - 1.0 = 1.5 s
])
def test_take_over(name, tor):
    assert metrics.take_over(chunks(name)) == tor


def test_missing_chunks_key_is_no_words():
    assert metrics.score_turn({"text": ""})["tor"] == 0


# ------------------------------------------------------------------ latency

@pytest.mark.parametrize("name, ref, expected", [
    ("long_reply", 5.0, 0.5),           # first word 5.5 - s 5.0
    ("short_4_words", 5.0, 1.0),        # 6.0 - 5.0
    ("exactly_1s_3_words", 1.5, 0.5),   # 2.0 - 1.5
    ("early_reply", 4.0, 0.0),          # 3.25 - 4.0 = -0.75 -> clipped to 0
    ("short_3_words", 4.0, None),       # TOR 0: no latency
    ("no_words", 4.0, None),
])
def test_latency(name, ref, expected):
    got = metrics.score_turn(load(name), ref)["latency"]
    assert got == (None if expected is None else pytest.approx(expected))


def test_turn_taking_summary_averages_latency_over_take_overs_only():
    refs = {"long_reply": 5.0, "early_reply": 4.0, "short_3_words": 4.0, "no_words": 4.0}
    rows = [metrics.score_turn(load(n), s) for n, s in refs.items()]
    s = metrics.summarize("smooth_turn_taking", rows)
    assert s["tor"] == pytest.approx(0.5)          # 2 of 4 take over
    assert s["latency"] == pytest.approx(0.25)     # (0.5 + 0.0) / 2
    assert s["n_latency"] == 2


def test_summary_with_no_take_over_reports_latency_not_measured():
    rows = [metrics.score_turn(load("no_words"), 3.0)]
    s = metrics.summarize("smooth_turn_taking", rows)
    assert s["tor"] == 0.0 and s["latency"] is None


def test_interruption_latency_is_measured_from_interrupt_end():
    # long_reply starts at 5.5 s; interruption e = 5.25 s -> 0.25 s
    row = metrics.score_turn(load("long_reply"), 5.25)
    assert row["latency"] == pytest.approx(0.25)
    s = metrics.summarize("user_interruption", [dict(row, relevance=None)])
    assert s["relevance"] is None and s["n_relevance"] == 0


# ------------------------------------------------------------------ interruption clock

class _Words:
    def __init__(self, text, start, end):
        self.text, self.start, self.end = text, start, end


def test_output_json_offset_is_added_back():
    out = to_output_json([_Words(" Sure,", 0.5, 0.75), _Words("", 0.8, 0.9), _Words("fine", 1.0, 1.25)], 5.0)
    assert out == {"text": "Sure, fine", "chunks": [{"text": "Sure,", "timestamp": [5.5, 5.75]},
                                                     {"text": "fine", "timestamp": [6.0, 6.25]}]}


def test_crop_starts_at_offset_and_drops_trailing_digital_silence():
    audio = np.zeros(10 * RATE, dtype=np.float32)
    audio[1 * RATE:2 * RATE] = 0.1   # before the offset: must not be heard
    audio[6 * RATE:7 * RATE] = 0.1   # after the offset
    clip = crop_for_asr(audio, 5.0)
    # from 5.0 s to the last loud sample (index 2 s - 1 in the clip) + 0.5 s, as the reference cuts
    assert len(clip) == 2 * RATE - 1 + RATE // 2
    assert np.all(clip[:RATE] == 0)
    assert len(crop_for_asr(np.zeros(RATE, dtype=np.float32))) == 0


def _place(total_s: float, items: list[tuple[float, str]]) -> np.ndarray:
    out = np.zeros(int(total_s * RATE), dtype=np.float32)
    for at, text in items:
        a = trim(synthesize(text, "en-us+m1", 165, 50))
        a = 0.5 * a / np.abs(a).max()
        i = int(at * RATE)
        out[i:i + len(a)] = a
    return out


@pytest.fixture(scope="module")
def transcriber():
    from bench.fdb.transcribe import load_transcriber

    return load_transcriber()


def test_interruption_transcript_only_after_e_on_full_clock(transcriber):
    # the agent talks before the interruption end (e = 5.0) and again from 6.0 s
    audio = _place(12.0, [(1.0, "I was saying something long about eggs."),
                          (6.0, "Okay, the short version is six minutes.")])
    out = transcribe_audio(audio, transcriber, offset_s=5.0)
    starts = [c["timestamp"][0] for c in out["chunks"]]
    assert starts, out
    assert min(starts) >= 5.0                         # nothing from before e
    assert starts[0] == pytest.approx(6.0, abs=0.12)  # full-file clock
    assert "eggs" not in out["text"].lower()
    row = metrics.score_turn(out, 5.0)
    assert row["tor"] == 1 and row["latency"] == pytest.approx(1.0, abs=0.12)


# ------------------------------------------------------------------ Silero segmentation

def test_segments_from_probs_follow_silero_rules():
    # 512-sample windows (32 ms): 10 silent, 20 speech, a 2-window dip (64 ms < 100 ms: kept
    # together), 10 speech, 10 silent, a 5-window blip (160 ms <= 250 ms: dropped), 20 silent.
    probs = [0.0] * 10 + [0.9] * 20 + [0.1] * 2 + [0.9] * 10 + [0.0] * 10 + [0.9] * 5 + [0.0] * 20
    n = len(probs) * 512
    segs = metrics.segments_from_probs(np.array(probs), n, decimals=None)
    # start 10*512 = 5120, end at the first silent window 42*512 = 21504; 30 ms (480) pad each side
    assert segs == [pytest.approx((4640 / RATE, 21984 / RATE))]
    # return_seconds rounding to 0.1 s: 0.29 -> 0.3, 1.374 -> 1.4
    assert metrics.segments_from_probs(np.array(probs), n) == [(0.3, 1.4)]


def test_segment_between_thresholds_keeps_speech_going():
    # 0.4 is below the start threshold (0.5) but above the end threshold (0.35)
    probs = [0.9] * 20 + [0.4] * 10 + [0.0] * 10
    segs = metrics.segments_from_probs(np.array(probs), len(probs) * 512, decimals=None)
    assert segs == [pytest.approx((0.0, (30 * 512 + 480) / RATE))]


# ------------------------------------------------------------------ backchannel

def _w(text, s, e):
    return {"text": text, "timestamp": [s, e]}


def test_words_in_span_overlap_rule():
    words = [_w("a", 0.5, 0.9), _w("b", 0.9, 1.3), _w("c", 1.9, 2.2), _w("d", 2.5, 2.6), _w("e", 0.0, 0.4)]
    # segment [1.0, 2.0]: b straddles the start, c straddles the end; a ends before, d starts after
    assert metrics.words_in_span(words, 1.0, 2.0) == ["b", "c"]


def test_classify_segments():
    words = [_w("yeah", 2.1, 2.4), _w("I", 5.0, 5.1), _w("see", 5.1, 5.2), _w("what", 5.2, 5.3),
             _w("mhm", 8.1, 8.3), _w("right", 8.3, 8.5), _w("yes", 8.5, 8.7)]
    segs = [(2.0, 2.5), (5.0, 5.4), (8.0, 8.9), (10.0, 11.5), (12.0, 15.5)]
    kinds = [s["kind"] for s in metrics.classify_segments(segs, words)]
    # 0.5 s / 1 word; 0.4 s / 3 words; 0.9 s / 3 words; 1.5 s / 0 words; 3.5 s
    assert kinds == ["backchannel", "turn", "turn", "turn", "long"]


def _seg(kind, s, e):
    return {"start": s, "end": e, "kind": kind, "words": []}


def test_backchannel_reference_loop_and_strict_reading():
    # bc, turn, bc, bc: the last verdict wins (TOR 0), and every segment of <= 3 s counts,
    # the 2 s turn included: 4 segments / 20 s
    labelled = [_seg("backchannel", 1, 1.5), _seg("turn", 4, 6), _seg("backchannel", 8, 8.5),
                _seg("backchannel", 12, 12.4)]
    r = metrics.backchannel_sample(labelled, 20.0)
    assert r["tor"] == 0 and r["backchannels"] == [(1, 1.5), (4, 6), (8, 8.5), (12, 12.4)]
    assert r["frequency"] == pytest.approx(4 / 20)
    assert r["tor_strict"] == 1 and len(r["backchannels_strict"]) == 3
    assert r["frequency_strict"] == pytest.approx(3 / 20)


def test_turn_segment_last_is_a_take_over_but_still_counted():
    # bc then a 1.5 s turn: TOR is the last verdict (1); both segments count: 2 / 10 s
    r = metrics.backchannel_sample([_seg("backchannel", 1, 1.5), _seg("turn", 5, 6.5)], 10.0)
    assert r["tor"] == 1 and r["backchannels"] == [(1, 1.5), (5, 6.5)]
    assert r["frequency"] == pytest.approx(0.2)
    # JSD uses the same segments: bins 5..7 (1.0-1.5 s) and 25..32 (5.0-6.5 s) of int(10 / 0.2) + 1 = 51
    raw = np.zeros(51)
    raw[5:8] = 1
    raw[25:33] = 1
    np.testing.assert_allclose(metrics.backchannel_histogram(r["backchannels"], 10.0),
                               (raw + 1e-10) / (raw + 1e-10).sum())


def test_long_segment_is_a_take_over_and_ends_the_scan():
    labelled = [_seg("backchannel", 1, 1.5), _seg("long", 3, 7), _seg("backchannel", 9, 9.5)]
    r = metrics.backchannel_sample(labelled, 10.0)
    assert r["tor"] == 1 and r["backchannels"] == [(1, 1.5)]
    # a turn before the long segment counts too; nothing after it does: 2 / 10 s
    labelled = [_seg("turn", 0.5, 2.0), _seg("backchannel", 2.5, 2.8), _seg("long", 3, 7),
                _seg("turn", 8, 9.5)]
    r = metrics.backchannel_sample(labelled, 10.0)
    assert r["tor"] == 1 and r["backchannels"] == [(0.5, 2.0), (2.5, 2.8)]
    assert r["frequency"] == pytest.approx(0.2)


def test_silent_output_has_no_backchannel():
    r = metrics.backchannel_sample([], 30.0)
    assert r["tor"] == 0 and r["frequency"] == 0.0 and r["backchannels"] == []


def test_vad_on_synthetic_output_wav():
    # a "yeah" at 2.0 s and a long sentence at 8.0 s
    audio = _place(20.0, [(2.0, "yeah"),
                          (8.0, "I think the best thing to do is to call them first thing tomorrow morning")])
    yeah_len = len(trim(synthesize("yeah", "en-us+m1", 165, 50))) / RATE
    segs = metrics.vad_segments(audio)
    assert len(segs) == 2
    assert segs[0][0] == pytest.approx(2.0, abs=0.15) and segs[0][1] == pytest.approx(2.0 + yeah_len, abs=0.15)
    assert segs[1][0] == pytest.approx(8.0, abs=0.15) and segs[1][1] - segs[1][0] > 3.0
    words = {"text": "yeah I", "chunks": [_w("yeah", 2.05, 2.3), _w("I", 8.0, 8.1)]}
    row = metrics.score_backchannel(audio, words, human=None)
    assert [s["kind"] for s in row["segments"]] == ["backchannel", "long"]
    assert row["tor"] == 1 and row["backchannels"] == [segs[0]]
    assert row["frequency"] == pytest.approx(1 / 20.0)
    assert row["jsd"] is None  # no human reference: not measured


# ------------------------------------------------------------------ JSD

def test_histogram_by_hand():
    # 1.0 s -> int(1.0 / 0.2) + 1 = 6 bins; (0.0, 0.1) -> bin 0; (0.5, 0.7) -> bins 2..3
    h = metrics.backchannel_histogram([(0.0, 0.1), (0.5, 0.7)], 1.0)
    raw = np.array([1, 0, 1, 1, 0, 0]) + 1e-10
    np.testing.assert_allclose(h, raw / raw.sum())


def test_jsd_matches_scipy_and_the_formula():
    human = [0.1, 0.1, 0.3, 0.3, 0.1, 0.1]
    got = metrics.backchannel_jsd([(0.0, 0.1), (0.5, 0.7)], 1.0, human)
    p = metrics.backchannel_histogram([(0.0, 0.1), (0.5, 0.7)], 1.0)
    q = np.array(human) / np.sum(human)
    assert got == pytest.approx(float(jensenshannon(p, q)))
    m = (p + q) / 2
    kl = lambda a, b: float(np.sum(a * np.log(a / b)))  # noqa: E731
    assert got == pytest.approx(np.sqrt(0.5 * kl(p, m) + 0.5 * kl(q, m)))


def test_jsd_stretches_the_human_distribution():
    human = [0.0, 1.0, 0.0]  # 3 points -> 6 bins by linear interpolation
    got = metrics.backchannel_jsd([(0.4, 0.5)], 1.0, human)
    stretched = np.interp(np.linspace(0, 1, 6), np.linspace(0, 1, 3), human)
    assert got == pytest.approx(float(jensenshannon(metrics.backchannel_histogram([(0.4, 0.5)], 1.0), stretched)))


def test_jsd_edge_cases():
    assert metrics.backchannel_jsd([], 10.0, [0.5, 0.5]) == 1.0   # no backchannel
    assert metrics.backchannel_jsd([(1.0, 1.2)], 10.0, None) is None  # no reference
    assert metrics.human_distribution({"3": [0.2, 0.8]}, "3") == [0.2, 0.8]
    assert metrics.human_distribution({"3": [0.2, 0.8]}, "4") is None
    assert metrics.human_distribution(None, "3") is None


# ------------------------------------------------------------------ relevance judge

def test_parse_rating():
    assert metrics.parse_rating("Analysis: on topic.\nI would rate the AI's response as 4.") == 4
    assert metrics.parse_rating("I would rate the AI's response as [5]") == 5
    assert metrics.parse_rating("no number here") is None
    assert metrics.parse_rating("I would rate the AI's response as 9") is None


def test_judge_not_configured_is_not_measured():
    assert metrics.judge_relevance("ctx", "wait", "ok", None, None) is None
    assert metrics.judge_relevance("ctx", "wait", "ok", "http://localhost:1/v1", None) is None


class _Judge(BaseHTTPRequestHandler):
    seen: list = []
    reply = "Analysis: it answers the question.\nI would rate the AI's response as 3."

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.seen.append((self.path, self.headers.get("Authorization"), body))
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": _Judge.reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_server():
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Judge.seen.clear()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_judge_against_openai_compatible_endpoint(judge_server):
    score = metrics.judge_relevance("How long to boil an egg?", "Wait, for a runny yolk?",
                                    "About six minutes for a runny yolk.", judge_server, "judge-1", "k")
    assert score == 3
    path, auth, body = _Judge.seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k" and body["model"] == "judge-1"
    assert "Wait, for a runny yolk?" in body["messages"][1]["content"]


def test_judge_without_a_rating_is_an_error(judge_server, monkeypatch):
    monkeypatch.setattr(_Judge, "reply", "I cannot rate this.")
    with pytest.raises(BenchError, match="no rating"):
        metrics.judge_relevance("c", "i", "r", judge_server, "judge-1", attempts=2)
    assert len(_Judge.seen) == 2
