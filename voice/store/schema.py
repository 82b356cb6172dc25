"""The records' tables and their versioned migrations.

Migrations are a minimal versioned list, not Alembic: ``schema_version`` holds
one row with the version applied; :data:`MIGRATIONS` maps each version to a
function that brings the previous version up to it. ``migrate`` runs the
missing ones in order, inside one transaction that holds the database's write
lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory transaction lock),
so two processes opening the same store at once migrate it once. A database
written by a newer version (a version above the newest known) is refused.

To change the schema: add a function ``_v2(conn)`` that alters the tables
(``ALTER TABLE ... ADD COLUMN ...`` through ``conn.exec_driver_sql`` or
SQLAlchemy DDL), append it to MIGRATIONS, and update the Table objects below
to the new shape. Never edit a migration that has shipped.
"""

from __future__ import annotations

import time

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.engine import Connection

metadata = MetaData()

schema_version = Table(
    "schema_version", metadata,
    Column("id", Integer, primary_key=True),  # always 1: a single row
    Column("version", Integer, nullable=False),
    Column("applied_at", Float, nullable=False),
)

sessions = Table(
    "sessions", metadata,
    Column("id", String(64), primary_key=True),
    Column("started_at", Float, nullable=False),  # Unix time
    Column("ended_at", Float),  # NULL while live (or when the process died mid-session)
    Column("status", String(16), nullable=False),  # live | ended
    Column("transport", String(32)),
    Column("pipeline", String(32)),
    Column("caller", Text),
    Column("callee", Text),
    Column("turns", Integer, nullable=False, default=0),
    Column("errors", Integer, nullable=False, default=0),
    Column("audio_dir", Text),  # per-session WAVs when store.record_audio is on
)

turns = Table(
    "turns", metadata,
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
    Column("turn", Integer, primary_key=True),
    Column("user_text", Text, nullable=False, default=""),
    Column("agent_text", Text, nullable=False, default=""),  # as actually played
    Column("interrupted", Boolean, nullable=False, default=False),
    Column("false_interruptions", Integer, nullable=False, default=0),
    # Input-clock seconds (since the session's first input frame).
    Column("speech_end", Float),
    Column("endpoint_t", Float),
    Column("agent_start_t", Float),
    Column("agent_end_t", Float),
    # Latencies in seconds (the turn_metrics event).
    Column("endpoint_delay", Float),
    Column("asr_time", Float),
    Column("llm_ttft", Float),
    Column("tts_first_audio", Float),
    Column("voice_to_voice", Float),
    Column("errors", Integer, nullable=False, default=0),
    Column("written_at", Float, nullable=False),  # Unix time of the last write of this row
)

errors = Table(
    "errors", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("turn", Integer),
    Column("t", Float),
    Column("message", Text, nullable=False),
    Column("at", Float, nullable=False),
)

# v2: the tools the agent called (voice/tools), one row per call.
tool_calls = Table(
    "tool_calls", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(64), ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
    Column("turn", Integer),
    Column("t", Float),  # input clock: when the result came back
    Column("name", String(128), nullable=False),
    Column("arguments", Text, nullable=False, default="{}"),  # JSON
    Column("ok", Boolean, nullable=False),
    Column("result", Text),  # the start of what went back to the LLM (or the error)
    Column("seconds", Float),
    Column("at", Float, nullable=False),
)

Index("ix_sessions_started_at", sessions.c.started_at)
Index("ix_errors_session", errors.c.session_id)
Index("ix_tool_calls_session", tool_calls.c.session_id)


class SchemaError(RuntimeError):
    """The database's schema is not one this version can use."""


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[sessions, turns, errors], checkfirst=True)


def _v2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[tool_calls], checkfirst=True)


MIGRATIONS = {1: _v1, 2: _v2}
LATEST = max(MIGRATIONS)


def current_version(conn: Connection) -> int:
    row = conn.execute(schema_version.select().where(schema_version.c.id == 1)).first()
    return 0 if row is None else int(row.version)


def migrate(engine) -> int:
    """Bring the database up to :data:`LATEST`; returns the version it is at."""
    if engine.dialect.name == "sqlite":
        # A raw BEGIN IMMEDIATE takes SQLite's write lock before reading the version.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                version = _apply(conn)
                conn.exec_driver_sql("COMMIT")
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            return version
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7365221)"))
        return _apply(conn)


def _apply(conn: Connection) -> int:
    metadata.create_all(conn, tables=[schema_version], checkfirst=True)  # under the lock: created once
    version = current_version(conn)
    if version > LATEST:
        raise SchemaError(f"the session store has schema version {version}; this version of voice "
                          f"knows up to {LATEST} (upgrade voice-agent)")
    for v in range(version + 1, LATEST + 1):
        MIGRATIONS[v](conn)
        if v == 1 and version == 0:
            conn.execute(schema_version.insert().values(id=1, version=v, applied_at=time.time()))
        else:
            conn.execute(schema_version.update().where(schema_version.c.id == 1)
                         .values(version=v, applied_at=time.time()))
    return LATEST
