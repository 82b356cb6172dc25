"""The session store: SQLite (WAL) by default, PostgreSQL (or any SQLAlchemy URL) for deployments.

:class:`Store` is synchronous and thread-safe (one SQLAlchemy engine); the
audio path never calls it directly, it goes through
:class:`voice.store.writer.StoreWriter`'s thread. Each write is its own
transaction, committed before the call returns: a finished turn is on disk.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from voice.store import schema
from voice.store.schema import errors, sessions, tool_calls, turns

DB_FILENAME = "voice.db"
TURN_FIELDS = ("user_text", "agent_text", "interrupted", "false_interruptions", "speech_end", "endpoint_t",
               "agent_start_t", "agent_end_t", "endpoint_delay", "asr_time", "llm_ttft", "tts_first_audio",
               "voice_to_voice", "errors")


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message is one line and never holds the URL's password."""


def store_url(store_settings, data_dir: str | Path) -> str:
    """The SQLAlchemy URL of the configured store (a secret when it holds a password)."""
    if store_settings.url is not None and store_settings.url.get_secret_value():
        return store_settings.url.get_secret_value()
    return f"sqlite:///{Path(data_dir).resolve() / DB_FILENAME}"


def safe_url(url: str) -> str:
    """``url`` with any password masked (for messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid store URL>"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=10000")
    # WAL: readers never block the writer, a crash never corrupts. Switching a new
    # database to WAL takes an exclusive lock for which SQLite does not call the busy
    # handler, so when several processes or threads open it at once, retry briefly.
    deadline = time.monotonic() + 10.0
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    cur.execute("PRAGMA synchronous=FULL")  # a committed turn survives power loss too
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError("invalid store URL (store.url must be an SQLAlchemy URL)") from None
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 10, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True, pool_size=2, max_overflow=2)
    except (ArgumentError, ImportError, SQLAlchemyError) as e:
        raise StoreError(f"cannot use store {safe_url(url)}: {type(e).__name__}: {str(e).splitlines()[0]}") from None


class Store:
    def __init__(self, url: str):
        self.url = url
        self.engine = _engine(url)
        try:
            self.version = schema.migrate(self.engine)
        except schema.SchemaError as e:
            self.engine.dispose()
            raise StoreError(str(e)) from None
        except SQLAlchemyError as e:
            self.engine.dispose()
            first = str(getattr(e, "orig", None) or e).splitlines()[0]
            raise StoreError(f"cannot open store {safe_url(url)}: {first}") from None

    @classmethod
    def from_settings(cls, settings) -> "Store":
        return cls(store_url(settings.store, settings.data_dir))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ writes

    def _upsert(self, conn, table, values: dict, keys: tuple[str, ...], update: dict) -> None:
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        elif self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:  # generic: update, then insert when nothing matched
            where = [table.c[k] == values[k] for k in keys]
            if conn.execute(table.update().where(*where).values(**update)).rowcount == 0:
                conn.execute(table.insert().values(**values))
            return
        stmt = insert(table).values(**values)
        conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=update))

    def start_session(self, session_id: str, *, started_at: float | None = None, transport: str | None = None,
                      pipeline: str | None = None, caller: str | None = None, callee: str | None = None,
                      audio_dir: str | None = None) -> None:
        values = dict(id=session_id, started_at=started_at or time.time(), status="live", transport=transport,
                      pipeline=pipeline, caller=caller, callee=callee, turns=0, errors=0, audio_dir=audio_dir)
        update = {k: v for k, v in values.items() if k not in ("id", "turns", "errors")}
        with self.engine.begin() as conn:
            self._upsert(conn, sessions, values, ("id",), update)

    def _ensure_session(self, conn, session_id: str) -> None:
        """A row for ``session_id`` (a turn or error can only land beside one)."""
        if conn.execute(select(sessions.c.id).where(sessions.c.id == session_id)).first() is None:
            conn.execute(sessions.insert().values(id=session_id, started_at=time.time(), status="live",
                                                  turns=0, errors=0))

    def write_turn(self, session_id: str, turn: int, **fields: Any) -> None:
        """Insert or update one turn (the whole row is rewritten); one transaction, committed on return."""
        data = {k: fields[k] for k in TURN_FIELDS if k in fields}
        data["written_at"] = time.time()
        with self.engine.begin() as conn:
            self._ensure_session(conn, session_id)
            self._upsert(conn, turns, dict(session_id=session_id, turn=turn, **data), ("session_id", "turn"), data)
            count = conn.execute(select(func.count()).select_from(turns)
                                 .where(turns.c.session_id == session_id)).scalar_one()
            conn.execute(sessions.update().where(sessions.c.id == session_id).values(turns=count))

    def add_error(self, session_id: str, message: str, *, turn: int | None = None, t: float | None = None) -> None:
        with self.engine.begin() as conn:
            self._ensure_session(conn, session_id)
            conn.execute(errors.insert().values(session_id=session_id, turn=turn, t=t, message=message[:2000],
                                                at=time.time()))
            conn.execute(sessions.update().where(sessions.c.id == session_id)
                         .values(errors=sessions.c.errors + 1))

    def add_tool_call(self, session_id: str, name: str, *, turn: int | None = None, t: float | None = None,
                      arguments: str = "{}", ok: bool = True, result: str | None = None,
                      seconds: float | None = None) -> None:
        with self.engine.begin() as conn:
            self._ensure_session(conn, session_id)
            conn.execute(tool_calls.insert().values(session_id=session_id, turn=turn, t=t, name=name[:128],
                                                    arguments=arguments[:4000], ok=ok,
                                                    result=None if result is None else result[:2000],
                                                    seconds=seconds, at=time.time()))

    def end_session(self, session_id: str, *, ended_at: float | None = None) -> None:
        with self.engine.begin() as conn:
            self._ensure_session(conn, session_id)
            conn.execute(sessions.update().where(sessions.c.id == session_id)
                         .values(status="ended", ended_at=ended_at or time.time()))

    # ------------------------------------------------------------------- reads

    def list_sessions(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(sessions).order_by(sessions.c.started_at.desc()).limit(limit)).mappings()
            return [dict(r) for r in rows]

    def find_session_id(self, prefix: str) -> str | None:
        """The id of the one session whose id is or starts with ``prefix``; StoreError when ambiguous."""
        with self.engine.connect() as conn:
            if conn.execute(select(sessions.c.id).where(sessions.c.id == prefix)).first() is not None:
                return prefix
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            ids = [r[0] for r in conn.execute(select(sessions.c.id)
                                              .where(sessions.c.id.like(escaped + "%", escape="\\")).limit(3))]
        if len(ids) > 1:
            raise StoreError(f"session id prefix {prefix!r} is ambiguous: {', '.join(ids)}")
        return ids[0] if ids else None

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        """The session's row with its ``turns`` (in order) and ``errors``, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(sessions).where(sessions.c.id == session_id)).mappings().first()
            if row is None:
                return None
            out = dict(row)
            out["turn_count"] = out.pop("turns")
            out["error_count"] = out.pop("errors")
            out["turns"] = [dict(r) for r in conn.execute(
                select(turns).where(turns.c.session_id == session_id).order_by(turns.c.turn)).mappings()]
            for t in out["turns"]:
                t.pop("session_id", None)
                t["interrupted"] = bool(t["interrupted"])
            out["errors"] = [dict(r) for r in conn.execute(
                select(errors.c.turn, errors.c.t, errors.c.message, errors.c.at)
                .where(errors.c.session_id == session_id).order_by(errors.c.id)).mappings()]
            out["tool_calls"] = [dict(r) for r in conn.execute(
                select(tool_calls.c.turn, tool_calls.c.t, tool_calls.c.name, tool_calls.c.arguments,
                       tool_calls.c.ok, tool_calls.c.result, tool_calls.c.seconds)
                .where(tool_calls.c.session_id == session_id).order_by(tool_calls.c.id)).mappings()]
            for c in out["tool_calls"]:
                c["ok"] = bool(c["ok"])
            return out
