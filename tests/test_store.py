"""Session records: the recorder, the store (SQLite WAL and a real PostgreSQL), migrations, the CLI,
and a real conversation recorded turn by turn with its audio."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, speak
from voice.events import EventLog
from voice.store import SessionRecorder, Store, StoreError, StoreWriter
from voice.store import schema


def _conversation(events: EventLog) -> None:
    """The events of a three-turn call: answered, barged in on, then a failed turn with an apology."""
    events.emit("session_start", transport="sip", pipeline="cascaded", caller="sip:alice@example.org",
                callee="sip:agent@example.org")
    events.emit("endpoint", turn=1, t=1.5, text="What is the capital of France?", speech_end=1.0)
    events.emit("agent_audio_start", turn=1, t=2.1)
    events.emit("turn_metrics", turn=1, text="What is the capital of France?", endpoint_delay=0.5, asr_time=0.12,
                llm_ttft=0.05, tts_first_audio=0.3, voice_to_voice=1.1)
    events.emit("agent_text", turn=1, text="The capital of France ")
    events.emit("agent_text", turn=1, text="is Paris.")
    events.emit("agent_audio_stop", turn=1, t=4.0)


def _more(events: EventLog) -> None:
    events.emit("endpoint", turn=2, t=6.5, text="Tell me a long story.", speech_end=6.0)
    events.emit("agent_audio_start", turn=2, t=7.0)
    events.emit("agent_text", turn=2, text="Once upon a time,")
    events.emit("barge_in", turn=3, t=8.0, onset=7.9, during="agent_speaking")
    events.emit("endpoint", turn=3, t=9.5, text="Stop, what time is it?", speech_end=9.0)
    events.emit("error", turn=3, error="LLM endpoint timed out")
    events.emit("agent_text", turn=3, text="Sorry, I ran into a problem.")
    events.emit("agent_audio_stop", turn=3, t=11.0)
    events.emit("session_end", turns=3)


@pytest.fixture()
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'voice.db'}")
    yield s
    s.close()


def test_recorder_writes_turn_by_turn(store, tmp_path):
    writer = StoreWriter(store)
    events = EventLog("sess-a")
    recorder = SessionRecorder(writer, "sess-a")
    events.subscribe(recorder)
    _conversation(events)
    assert writer.flush(30)
    # Mid-call: the finished turn is committed and readable by another connection.
    with sqlite3.connect(tmp_path / "voice.db") as c:
        assert c.execute("SELECT status FROM sessions WHERE id='sess-a'").fetchone() == ("live",)
        assert c.execute("SELECT turn, agent_text FROM turns").fetchall() == [(1, "The capital of France is Paris.")]
    _more(events)
    assert writer.flush(30)
    record = store.get_session("sess-a")
    assert record["status"] == "ended" and record["ended_at"] >= record["started_at"]
    assert (record["transport"], record["pipeline"]) == ("sip", "cascaded")
    assert (record["caller"], record["callee"]) == ("sip:alice@example.org", "sip:agent@example.org")
    assert record["turn_count"] == 3 and record["error_count"] == 1
    t1, t2, t3 = record["turns"]
    assert t1["user_text"] == "What is the capital of France?" and not t1["interrupted"]
    assert t1["voice_to_voice"] == pytest.approx(1.1) and t1["llm_ttft"] == pytest.approx(0.05)
    assert t1["speech_end"] == 1.0 and t1["agent_end_t"] == 4.0
    assert t2["agent_text"] == "Once upon a time," and t2["interrupted"] and t2["agent_end_t"] == 8.0
    assert t3["errors"] == 1 and t3["agent_text"].startswith("Sorry")
    assert record["errors"] == [{"turn": 3, "t": record["errors"][0]["t"], "message": "LLM endpoint timed out",
                                 "at": record["errors"][0]["at"]}]
    writer.close()


def test_false_interruption_is_not_an_interruption(store):
    writer = StoreWriter(store)
    events = EventLog("sess-b")
    events.subscribe(SessionRecorder(writer, "sess-b"))
    events.emit("session_start", transport="webrtc", pipeline="cascaded", caller=None, callee=None)
    events.emit("endpoint", turn=1, text="Tell me about octopuses.", speech_end=1.0)
    events.emit("agent_text", turn=1, text="An octopus has three hearts,")
    events.emit("barge_in", turn=2, onset=3.0, during="agent_speaking")
    events.emit("false_interruption", turn=2, heard="", resumed="and blue blood.")
    events.emit("agent_text", turn=1, text="and blue blood.")
    events.emit("agent_audio_stop", turn=1)
    events.emit("session_end", turns=1)
    writer.close()
    (turn,) = Store(store.url).get_session("sess-b")["turns"]
    assert turn["agent_text"] == "An octopus has three hearts, and blue blood."
    assert not turn["interrupted"] and turn["false_interruptions"] == 1


def test_writer_survives_a_failing_write(store):
    writer = StoreWriter(store)
    writer.submit("add_error", "s", None)  # a write that fails (no message)
    writer.submit("start_session", "s2", transport="file")
    assert writer.flush(30)
    assert writer.failed == 1 and writer.written == 1
    assert store.get_session("s2")["transport"] == "file"
    writer.close()


# ---------------------------------------------------------------------- migrations


def test_migrations_versioned_idempotent_and_wal(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    stores = []
    errors = []

    def open_one():
        try:
            stores.append(Store(url))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(4)]  # four opens at once migrate once
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for s in stores:
        assert s.version == schema.LATEST
        s.close()
    with sqlite3.connect(tmp_path / "m.db") as c:
        assert c.execute("SELECT id, version FROM schema_version").fetchall() == [(1, schema.LATEST)]
        assert c.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"sessions", "turns", "errors", "schema_version"} <= tables
        c.execute("UPDATE schema_version SET version = 999")
    with pytest.raises(StoreError, match="schema version 999"):
        Store(url)


def test_bad_store_urls_are_clear_errors(tmp_path):
    with pytest.raises(StoreError, match="invalid store URL"):
        Store("not a url at all")
    with pytest.raises(StoreError) as e:
        Store("postgresql+psycopg://voice:hunter2@127.0.0.1:1/voice")  # nothing listens on port 1
    assert "hunter2" not in str(e.value) and "***" in str(e.value)


# ------------------------------------------------------------------ real PostgreSQL


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL cluster on a Unix socket (initdb/pg_ctl from the system packages)."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="voice-pg-"))  # under /tmp: reachable by another user
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser")
        import pwd

        user = "postgres" if any(p.pw_name == "postgres" for p in pwd.getpwall()) else "nobody"
        for path in (base, sock):
            shutil.chown(path, user)
        run_as = ["runuser", "-u", user, "--"]
    subprocess.run([*run_as, initdb, "-D", str(data), "-A", "trust", "-U", "voice", "--no-sync"],
                   check=True, capture_output=True)
    log = base / "pg.log"
    subprocess.run([*run_as, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                    f"-k {sock} -c listen_addresses='' -c fsync=off", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://voice@/postgres?host={sock}"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_store(postgres):
    pytest.importorskip("psycopg")
    store = Store(postgres)
    assert store.dialect == "postgresql" and store.version == schema.LATEST
    writer = StoreWriter(store)
    events = EventLog("pg-sess")
    events.subscribe(SessionRecorder(writer, "pg-sess"))
    _conversation(events)
    _more(events)
    writer.close()
    again = Store(postgres)  # reopening: migrations are a no-op
    try:
        record = again.get_session("pg-sess")
        assert record["turn_count"] == 3 and record["error_count"] == 1 and record["status"] == "ended"
        assert [t["interrupted"] for t in record["turns"]] == [False, True, False]
        assert again.find_session_id("pg-") == "pg-sess"
    finally:
        again.close()


# ---------------------------------------------------------------------------- CLI


def _voice(*args, env=None):
    return subprocess.run([sys.executable, "-m", "voice.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def test_sessions_cli(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'voice.db'}")
    writer = StoreWriter(store)
    events = EventLog("cli0123456ab")
    events.subscribe(SessionRecorder(writer, "cli0123456ab"))
    _conversation(events)
    _more(events)
    writer.close()
    env = {"VOICE_DATA_DIR": str(tmp_path)}

    listed = _voice("sessions", "list", env=env)
    assert listed.returncode == 0 and "cli0123456ab" in listed.stdout and "3 turns" in listed.stdout, listed
    shown = _voice("sessions", "show", "cli01", env=env)  # a unique prefix is enough
    assert shown.returncode == 0, shown.stderr
    assert "user:  What is the capital of France?" in shown.stdout
    assert "agent: Once upon a time,  (interrupted)" in shown.stdout
    assert "error: LLM endpoint timed out" in shown.stdout
    exported = _voice("sessions", "export", "cli0123456ab", "--format", "json", env=env)
    data = json.loads(exported.stdout)
    assert data["id"] == "cli0123456ab" and len(data["turns"]) == 3 and data["turns"][0]["voice_to_voice"] == 1.1
    out = tmp_path / "t.txt"
    assert _voice("sessions", "export", "cli0123456ab", "--format", "txt", "-o", str(out), env=env).returncode == 0
    assert out.read_text().startswith("session cli0123456ab  sip / cascaded  ended")

    missing = _voice("sessions", "show", "nope", env=env)
    assert missing.returncode == 2 and missing.stderr.strip() == "voice: error: no session 'nope' in the store"
    bad = _voice("sessions", "list", env={"VOICE_STORE__URL": "postgresql+psycopg://u:secret@127.0.0.1:1/x"})
    assert bad.returncode == 2 and "secret" not in bad.stderr and "Traceback" not in bad.stderr, bad.stderr


# ------------------------------------------------------------- a real conversation


@pytest.mark.slow
def test_real_session_recorded_with_audio(tmp_path, settings, runtime, transcriber):
    """`talk_file` (the file transport) with the store and audio recording on: the record matches the
    events, the user and agent WAVs are beside it."""
    from voice.audio import read_wav
    from voice.store import flush_writers
    from voice.talk import talk_file

    s = settings.model_copy(update={"data_dir": tmp_path / "data",
                                    "store": settings.store.model_copy(update={"record_audio": True})})
    wav = speak("What is the capital of France?", tmp_path / "q.wav", tail_s=6.0)
    result = asyncio.run(talk_file(wav, tmp_path / "o.wav", None, s, runtime=runtime))
    assert flush_writers(30)
    store = Store.from_settings(s)
    try:
        record = store.get_session(result.events.session_id)
    finally:
        store.close()
    assert record["status"] == "ended" and record["transport"] == "file" and record["pipeline"] == "cascaded"
    endpoints = result.events.of("endpoint")
    assert len(record["turns"]) == len(endpoints) >= 1
    turn = record["turns"][0]
    assert turn["user_text"] == endpoints[0]["text"]
    played = " ".join(e["text"].strip() for e in result.events.of("agent_text") if e["turn"] == turn["turn"])
    assert turn["agent_text"] == played and played
    metrics = result.events.of("turn_metrics")[0]
    assert turn["voice_to_voice"] == metrics["voice_to_voice"] and turn["asr_time"] == metrics["asr_time"]

    audio = Path(record["audio_dir"])
    assert audio.parent == (tmp_path / "data" / "recordings").resolve()
    user = read_wav(audio / "user.wav")
    agent = read_wav(audio / "agent.wav")
    assert abs(len(user) / 16000 - result.input_seconds) < 2.0  # the mic, as heard (plus the listening tail)
    assert "france" in transcriber.transcribe(user).lower()
    said = transcriber.transcribe(agent).lower()
    words = [w.strip(".,!?").lower() for w in played.split() if len(w.strip(".,!?")) > 3]
    assert any(w in said for w in words), (said, played)  # the agent's track holds what it said


def test_store_disabled_writes_nothing(tmp_path, settings):
    from voice.session import _attach_records

    s = settings.model_copy(update={"data_dir": tmp_path, "store": settings.store.model_copy(update={"enabled": False})})
    assert _attach_records(s, EventLog("x")) == (None, None)
    assert not (tmp_path / "voice.db").exists()
