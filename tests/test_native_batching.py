"""The native batch schedulers (models/native/batching.py) with tiny random models, on CPU.

Moshi: every comparison is against ``MoshiDuplex.step`` alone (batch 1, the
path that ran before batching) fed the same frames, greedy decoding, fixed
seeds: text tokens must be identical, audio equal to float32 rounding (batched
kernels sum in another order; the largest difference seen is ~7e-8 on audio
peaking near 0.09). Mini-Omni: reply tokens against ``generate`` alone. Then
the pipeline processor, the Runtime, /health and admission over real HTTP, and
the GPU benchmark's --batched logic (--tiny).
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

os.environ.setdefault("NO_TORCH_COMPILE", "1")
torch = pytest.importorskip("torch")
torch.set_num_threads(1)
pytest.importorskip("moshi")

from models.native import ModelBusy, load_native  # noqa: E402
from models.native.batching import BatchedDuplex, BatchedReplies  # noqa: E402

AUDIO_ATOL = 1e-6


@pytest.fixture(scope="module")
def moshi():
    return load_native("moshi:tiny", use_sampling=False)


def _frames(m, session: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1000 + session)
    return [(rng.standard_normal(m.frame_size) * 0.1).astype(np.float32) for _ in range(n)]


def _solo(m, frames):
    state = m.new_state()
    return [m.step(state, f) for f in frames]


def _same(got, want, who=""):
    assert len(got) == len(want), who
    assert [o.text_token for o in got] == [o.text_token for o in want], who
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.audio.shape == w.audio.shape == (1920,)
        np.testing.assert_allclose(g.audio, w.audio, atol=AUDIO_ATOL, rtol=0, err_msg=f"{who} step {i}")
    assert any(o.audio.any() for o in want)  # the comparison is not between silences


def _run(b, schedule, n_ticks):
    """schedule: name -> (join tick, frames, leave tick or None). Manual ticks; returns name -> outputs."""
    slots, outs = {}, {name: [] for name in schedule}
    for t in range(n_ticks):
        futs = {}
        for name, (join, frames, leave) in schedule.items():
            if t == join:
                slots[name] = b.new_state()
            if leave is not None and t == leave:
                b.close_state(slots[name])
            i = t - join
            if join <= t and (leave is None or t < leave) and 0 <= i < len(frames) and frames[i] is not None:
                futs[name] = b.submit(slots[name], frames[i])
        b.tick()
        for name, f in futs.items():
            outs[name].append(f.result(timeout=5))
    return outs, slots


def test_sessions_batched_equal_each_alone(moshi):
    m = moshi
    n = 10
    frames = {k: _frames(m, k, n) for k in range(4)}
    alone = {k: _solo(m, frames[k]) for k in range(4)}
    b = BatchedDuplex(m, slots=4, autostart=False)
    outs, _ = _run(b, {k: (0, frames[k], None) for k in range(4)}, n)
    for k in range(4):
        _same(outs[k], alone[k], f"session {k}")
    assert b.status()["frames_per_tick_last"][-1] == 4  # one tick stepped all four


def test_join_mid_stream_and_leave(moshi):
    """C joins at tick 4 into the slot B left at tick 3; A and C are as if alone; a free slot stays idle."""
    m = moshi
    a, bb, c = _frames(m, 1, 12), _frames(m, 2, 12), _frames(m, 3, 8)
    b = BatchedDuplex(m, slots=3, autostart=False)
    outs, slots = _run(b, {"A": (0, a, None), "B": (0, bb, 3), "C": (4, c, None)}, 12)
    _same(outs["A"], _solo(m, a), "A (B left, C joined)")
    _same(outs["B"], _solo(m, bb[:3]), "B before it left")
    _same(outs["C"], _solo(m, c), "C joined mid-stream")
    assert slots["C"].index == slots["B"].index  # C reused B's slot: its state was reset for C alone
    assert b.status()["slots_used"] == 2


def test_late_frame_is_masked_not_waited_for(moshi):
    """A session missing a tick stands still (its state unchanged); the others are stepped regardless."""
    m = moshi
    a, late = _frames(m, 4, 10), _frames(m, 5, 8)
    gappy = late[:3] + [None, None] + late[3:]  # no frame on ticks 3 and 4
    b = BatchedDuplex(m, slots=2, autostart=False)
    outs, _ = _run(b, {"A": (0, a, None), "late": (0, gappy, None)}, 10)
    _same(outs["A"], _solo(m, a), "A")
    _same(outs["late"], _solo(m, late[:8]), "late session")


def test_admission_refuses_when_full_or_without_margin(moshi):
    m = moshi
    b = BatchedDuplex(m, slots=2, autostart=False)
    s1, s2 = b.new_state(), b.new_state()
    assert "all 2 native model slots are in use" in b.admits()
    with pytest.raises(ModelBusy) as e:
        b.new_state()
    assert "\n" not in str(e.value)
    b.close_state(s2)
    b.close_state(s2)  # twice is harmless
    assert b.admits() is None
    s3 = b.new_state()
    assert s3.index == s2.index
    for f in _frames(m, 6, 6):
        b.step(s1, f)  # no loop running: the caller ticks
    b.admit_max_load = 1e-9  # every tick now "takes the whole frame"
    b.close_state(s3)
    assert "no real-time margin" in b.admits()
    with pytest.raises(ModelBusy, match="real-time margin"):
        b.new_state()
    st = b.status()
    assert st["refused"] == 2 and st["slots_used"] == 1 and st["ticks"] == 6
    assert len(st["tick_ms_last"]) == 6 and st["tick_ms_p50"] > 0


def test_margin_reads_tick_time_and_busy_share():
    from models.native.batching import margin_refusal

    now = 1000.0
    ok = [(20.0, 4, now - 2.0 + 0.08 * i) for i in range(25)]  # 20 ms every 80 ms: 25 % busy
    assert margin_refusal(ok, now, 0.08, 0.9) is None
    quarters = [(10.0, 2, now - 0.025 * i) for i in range(80)]  # short ticks, 4 per frame: 40 % busy
    assert "stepped 40 % of the last 2 s" in margin_refusal(quarters, now, 0.08, 0.3)  # though each is 12 %
    slow = ok[:-5] + [(75.0, 4, now - 0.01 * i) for i in range(5)]  # the last ticks take 75 of 80 ms
    assert "p90 of the last 20 ticks" in margin_refusal(slow, now, 0.08, 0.9)
    crowded = [(40.0, 4, now - 0.04 * i) for i in range(50)]  # two 40 ms ticks per frame: 100 % busy
    why = margin_refusal(crowded, now, 0.08, 0.9)
    assert "of the last 2 s" in why and "\n" not in why
    old = [(79.0, 4, now - 10 - i) for i in range(3)]  # a busy spell long gone, too few for a p90
    assert margin_refusal(old, now, 0.08, 0.9) is None


def test_disconnect_with_a_frame_waiting_frees_the_slot(moshi):
    m = moshi
    a, x = _frames(m, 7, 6), _frames(m, 8, 6)
    b = BatchedDuplex(m, slots=2, autostart=False)
    sa, sx = b.new_state(), b.new_state()
    outs_a = []
    for t in range(6):
        fa = b.submit(sa, a[t])
        if t == 2:
            fx = b.submit(sx, x[t])
            b.close_state(sx)  # gone before the tick: its frame answers silence, its slot is free
            assert not fx.result(timeout=1).audio.any()
            with pytest.raises(RuntimeError, match="ended"):
                b.submit(sx, x[t])
        elif t < 2:
            b.submit(sx, x[t])
        b.tick()
        outs_a.append(fa.result(timeout=5))
    _same(outs_a, _solo(m, a), "A")
    assert b.status()["slots_used"] == 1


def test_threaded_sessions_silent_fast_and_leaving(moshi):
    """The tick loop with three sessions on their own threads: one stepping as fast as it can, one that
    never sends audio, one that leaves mid-stream while a tick may be running. Nobody stalls (the
    30 s step timeout would fail the test) and every output equals that session alone."""
    m = moshi
    n = 12
    fast, other, leaver = _frames(m, 9, n), _frames(m, 10, n), _frames(m, 11, n)
    b = BatchedDuplex(m, slots=4, max_wait_s=0.02)
    silent = b.new_state()  # opens a slot, never sends a frame
    results: dict[str, list] = {}
    errors: list[BaseException] = []

    def session(name, frames, leave_after=None):
        try:
            s = b.new_state()
            got = []
            for i, f in enumerate(frames):
                if leave_after is not None and i == leave_after:
                    fut = b.submit(s, f)  # disconnect with a frame in flight
                    b.close_state(s)
                    fut.result(timeout=30)
                    break
                got.append(b.step(s, f))
            else:
                b.close_state(s)
            results[name] = got
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=session, args=("fast", fast)),
               threading.Thread(target=session, args=("other", other)),
               threading.Thread(target=session, args=("leaver", leaver, 5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    _same(results["fast"], _solo(m, fast), "fast")
    _same(results["other"], _solo(m, other), "other")
    _same(results["leaver"], _solo(m, leaver[:5]), "leaver")
    st = b.status()
    assert st["slots_used"] == 1  # only the silent one
    b.close_state(silent)
    b.stop()
    assert b.status()["slots_used"] == 0
    with pytest.raises(ModelBusy, match="shutting down"):
        b.new_state()


def test_half_duplex_and_bad_pool_are_refused_clearly(moshi):
    with pytest.raises(ValueError, match="at least 1"):
        BatchedDuplex(moshi, slots=0)
    mini = load_native("mini-omni:tiny", max_steps=4)
    with pytest.raises(ValueError, match="half-duplex"):
        BatchedDuplex(mini, slots=2)
    with pytest.raises(ValueError, match="full-duplex"):
        BatchedReplies(moshi, slots=2)
    with pytest.raises(ValueError, match="at least one slot"):
        BatchedReplies(mini, slots=0)


# -- the pipeline and the service around it -------------------------------------------------

def _input_frames(seconds: float, seed: int, rate: int = 16000):
    from pipecat.frames.frames import InputAudioRawFrame

    from voice.audio import frames

    noise = (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)
    return [InputAudioRawFrame(audio=chunk, sample_rate=rate, num_channels=1) for chunk in frames(noise, rate)]


async def _processor_audio(model, seed: int, events=None) -> np.ndarray:
    from pipecat.frames.frames import TTSAudioRawFrame
    from pipecat.tests.utils import run_test

    from voice.native import NativeDuplexProcessor

    proc = NativeDuplexProcessor(model, events, max_backlog_s=10.0)  # frames come faster than real time
    down, _ = await run_test(proc, frames_to_send=_input_frames(0.8, seed))
    return np.concatenate([np.frombuffer(f.audio, np.int16) for f in down if isinstance(f, TTSAudioRawFrame)]
                          or [np.zeros(0, np.int16)])


async def test_processors_on_one_batch_hear_what_they_would_alone(moshi):
    """voice/native.py does not know it is batched: three pipelines at once on the tick thread."""
    import asyncio

    b = BatchedDuplex(moshi, slots=4)
    try:
        together = await asyncio.gather(*(_processor_audio(b, seed) for seed in (21, 22, 23)))
    finally:
        b.stop()
    assert b.status()["ticks"] >= 10 and b.status()["slots_used"] == 0  # every pipeline freed its slot
    for seed, got in zip((21, 22, 23), together):
        alone = await _processor_audio(moshi, seed)
        assert len(got) == len(alone) == 10 * 1920 and np.abs(alone).max() > 0
        assert np.abs(got.astype(np.int32) - alone).max() <= 1, seed  # int16: at most one step of rounding


async def test_processor_refused_when_no_slot_is_free(moshi):
    from voice.events import EventLog

    b = BatchedDuplex(moshi, slots=1)
    held = b.new_state()
    events = EventLog("test")
    try:
        audio = await _processor_audio(b, 24, events)
    finally:
        b.close_state(held)
        b.stop()
    assert len(audio) == 0
    refused = events.of("native_refused")
    assert len(refused) == 1 and "all 1 native model slots are in use" in refused[0]["reason"]


def test_runtime_batches_native_models():
    from voice.runtime import Runtime

    rt = Runtime(None, None, None, None, native_spec="moshi:tiny", native_slots=3, native_max_wait_ms=40)
    assert rt.native_status() is None and rt.native_refusal() is None  # not loaded yet
    m = rt.native_model()
    assert isinstance(m, BatchedDuplex) and m.slots == 3 and rt.native_status()["max_wait_ms"] == 40.0
    assert rt.native_status()["slots"] == 3 and rt.native_status()["slots_used"] == 0
    m.stop()
    assert "shutting down" in rt.native_refusal()
    alone = Runtime(None, None, None, None, native_spec="moshi:tiny", native_slots=0).native_model()
    assert not isinstance(alone, BatchedDuplex)
    half = Runtime(None, None, None, None, native_spec="mini-omni:tiny", native_slots=4).native_model()
    assert isinstance(half, BatchedReplies) and half.slots == 4 and not half.full_duplex
    half.stop()
    half_alone = Runtime(None, None, None, None, native_spec="mini-omni:tiny", native_slots=0).native_model()
    assert not isinstance(half_alone, BatchedReplies)


async def _offer_sdp() -> str:
    from aiortc import RTCConfiguration, RTCPeerConnection

    from voice.transports.webrtc import allow_loopback_candidates

    allow_loopback_candidates()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.createDataChannel("events")
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_service_health_shows_slots_and_refuses_when_full():
    """Real HTTP: /health reports the batch; an offer for the native engine with every slot taken is 503."""
    import asyncio

    import httpx

    from voice.runtime import Runtime
    from voice.service import BackgroundServer, create_app
    from voice.settings import load_settings

    settings = load_settings().model_copy(update={"pipeline": "native"})
    rt = Runtime(None, None, None, None, native_spec="moshi:tiny", native_slots=1)
    model = rt.native_model()
    held = model.new_state()  # another session holds the only slot
    try:
        for f in _frames(model, 30, 3):
            await asyncio.to_thread(model.step, held, f)
        with BackgroundServer(create_app(settings, rt)) as base:
            async with httpx.AsyncClient(timeout=30) as client:
                health = (await client.get(f"{base}/health")).json()
                native = health["native"]
                assert native["slots"] == 1 and native["slots_used"] == 1 and native["ticks"] == 3
                assert len(native["tick_ms_last"]) == 3 and native["frame_ms"] == 80.0
                r = await client.post(f"{base}/api/offer", json={"sdp": await _offer_sdp(), "type": "offer",
                                                                  "pipeline": "native"})
                assert r.status_code == 503, r.text
                assert r.json() == {"error": "busy", "detail": "all 1 native model slots are in use"}
                health = (await client.get(f"{base}/health")).json()
                assert health["sessions"] == 0 and health["native"]["refused"] == 1  # reservation released
                model.close_state(held)
                assert (await client.get(f"{base}/health")).json()["native"]["slots_used"] == 0
    finally:
        model.close_state(held)
        model.stop()


def test_gpu_bench_batched_tiny_on_cpu(tmp_path):
    """bench/gpu_native.py --batched drives the real scheduler; --tiny proves the script on CPU."""
    import json

    import bench.gpu_native as bench

    out = tmp_path / "batched.json"
    bench.main(["--batched", "--tiny", "--device", "cpu", "--threads", "1", "--sessions", "1,3",
                "--repeats", "2", "--steps", "4", "--conc-steps", "4", "--warmup", "1", "--no-pace",
                "--reply-steps", "10", "--out", str(out)])
    omni = json.loads(out.read_text())["mini_omni_batched"]
    assert omni["alone"]["ms_per_step"] > 0 and [r["sessions"] for r in omni["levels"]] == [1, 3]
    for row in omni["levels"]:
        assert row["replies"] == row["sessions"] and row["reply_ms_per_step"]["n"] == row["sessions"]
        assert row["n"] >= 1  # decode ticks (without a prefill) were timed
    saved = json.loads(out.read_text())["moshi_batched"]
    assert len(saved["runs"]) == 2 and set(saved["levels"]) == {"1", "3"}
    for run in saved["runs"]:
        assert run["solo"]["n"] == 4
        for row, n in zip(run["levels"], (1, 3)):
            assert row["sessions"] == row["slots"] == n and row["ticks"] >= 4
            assert round(row["ticks"] * row["mean_frames_per_tick"]) == 4 * n  # every frame stepped once
            assert row["frame_latency"]["n"] == 4 and row["late"] == 0
    assert saved["levels"]["3"]["runs"] == 2 and saved["max_real_time_sessions"] in (0, 1, 3)
    staggered = tmp_path / "staggered.json"  # a thread per session, each at its own phase of 80 ms
    bench.main(["--batched", "--only", "moshi", "--tiny", "--device", "cpu", "--threads", "1", "--sessions", "3",
                "--steps", "2", "--conc-steps", "3", "--warmup", "1", "--stagger", "--out", str(staggered)])
    row = json.loads(staggered.read_text())["moshi_batched"]["runs"][0]["levels"][0]
    assert row["staggered"] and row["frame_latency"]["n"] == 9  # 3 sessions x 3 measured frames
    assert round(row["ticks"] * row["mean_frames_per_tick"]) >= 9
    with pytest.raises(SystemExit):
        bench.main(["--batched", "--sessions", "0,x", "--out", str(out)])


def test_reset_starts_the_slot_over(moshi):
    m = moshi
    a = _frames(m, 12, 6)
    b = BatchedDuplex(m, slots=2, autostart=False)
    s = b.new_state()
    first = [b.step(s, f) for f in a]
    b.reset(s)
    again = [b.step(s, f) for f in a]
    _same(first, _solo(m, a), "before reset")
    _same(again, _solo(m, a), "after reset")
    assert s.steps == 6


# -- Mini-Omni: concurrent replies in one batch ------------------------------------------------
# SNAC's decoder adds random noise (its NoiseBlock draws torch.randn), so a reply's audio
# differs between two runs even alone; the tokens are deterministic and compared exactly.

@pytest.fixture(scope="module")
def omni():
    return load_native("mini-omni:tiny", max_steps=24)


def _turn(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(2000 + seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def _tokens(items):
    return [(a.tolist(), int(t)) for a, t in items]


def test_mini_omni_replies_batched_equal_each_alone(omni):
    """Replies of different prompt lengths, one joining mid-generation, one waiting for a free row
    until a short one ends, one cancelled: every reply's tokens are what generate() gives alone."""
    m = omni
    turns = {"a": (_turn(1.0, 1), 10), "b": (_turn(0.5, 2), 24), "c": (_turn(1.5, 3), 24),
             "d": (_turn(0.3, 4), 20), "x": (_turn(0.8, 5), 24)}
    feats = {k: m.audio_features(a) for k, (a, _) in turns.items()}
    alone = {k: _tokens(m.generate(feats[k], max_steps=n)) for k, (_, n) in turns.items()}
    assert all(len(alone[k]) == turns[k][1] for k in alone)  # random weights never end early
    batch = m.batch_engine(3)
    joins = {"a": 0, "b": 0, "x": 0, "c": 3, "d": 4}  # c and d wait: 3 rows until a ends
    replies, got = {}, {k: [] for k in turns}
    for tick in range(60):
        for k, t in joins.items():
            if t == tick:
                replies[k] = batch.add(feats[k], turns[k][1], m.new_state())
        if tick == 6:
            replies["x"].state.cancelled = True  # interrupted
        if not batch.pending() and tick > 4:
            break
        batch.step()
        assert batch.active() <= 3
        for k, r in replies.items():
            while not r.out.empty():
                item = r.out.get()
                if item is not None:
                    got[k].append(item)
    for k in ("a", "b", "c", "d"):
        assert _tokens(got[k]) == alone[k], k
    assert 0 < len(got["x"]) < len(alone["x"]) and _tokens(got["x"]) == alone["x"][:len(got["x"])]
    assert batch.pending() == 0


def test_mini_omni_batched_respond_threads(omni):
    """BatchedReplies.respond from three threads at once, one reader stopping early: the same
    text tokens and audio chunk sizes as the model's own respond alone; the stopped reply leaves."""
    m = omni
    b = BatchedReplies(m, slots=4)
    turns = [_turn(0.6, 11), _turn(1.2, 12), _turn(0.9, 13)]
    got: dict[int, list] = {}
    errors: list[BaseException] = []

    def run(i):
        try:
            stream = b.respond(b.new_state(), turns[i])
            out = []
            for o in stream:
                out.append(o)
                if i == 2 and len(out) == 5:
                    stream.close()  # the caller hung up mid-reply
                    break
            got[i] = out
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert not errors, errors
        for i in (0, 1):
            alone = list(m.respond(m.new_state(), turns[i]))
            assert [o.text_token for o in got[i]] == [o.text_token for o in alone]
            assert [len(o.audio) for o in got[i]] == [len(o.audio) for o in alone]
            assert got[i][-1].end
        assert len(got[2]) == 5
        st = b.status()
        assert st["replies_decoding"] == 0 and st["replies_waiting"] == 0 and st["ticks"] >= 23
    finally:
        b.stop()
    with pytest.raises(RuntimeError, match="shutting down"):
        next(b.respond(b.new_state(), turns[0]))


async def test_processor_half_duplex_on_the_reply_batch(omni):
    """voice/native.py's half-duplex path over BatchedReplies: two sessions answer at once."""
    import asyncio

    from pipecat.frames.frames import TTSAudioRawFrame
    from pipecat.tests.utils import SleepFrame, run_test

    from voice.events import EventLog
    from voice.frames import UserTurnEndedFrame
    from voice.native import NativeDuplexProcessor

    b = BatchedReplies(omni, slots=4)

    async def session(seed):
        events = EventLog("test")
        sent = _input_frames(0.4, seed) + [UserTurnEndedFrame(turn=1), SleepFrame(sleep=0.05)]
        down, _ = await run_test(NativeDuplexProcessor(b, events), frames_to_send=sent)
        audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
        return sum(len(f.audio) for f in audio), events

    try:
        results = await asyncio.gather(session(31), session(32))
    finally:
        b.stop()
    for size, events in results:
        assert size == 2 * (24 - 7) * 2048  # max_steps=24 -> 17 SNAC frames, as alone
        assert len(events.of("native_reply_end")) == 1 and not events.of("native_reply_end")[0]["interrupted"]
