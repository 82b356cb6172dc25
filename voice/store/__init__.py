"""Session records: every conversation, turn by turn, in SQLite (default) or PostgreSQL.

* :class:`Store` (``voice.store.db``): the database, its schema migrated on open
  (``voice.store.schema``: a minimal versioned-migrations table).
* :class:`StoreWriter` / :func:`shared_writer` (``voice.store.writer``): the one
  thread per process that writes, so the event loop never waits on the disk.
* :class:`SessionRecorder` (``voice.store.recorder``): subscribes to a session's
  EventLog and writes its record turn by turn; ``voice.session.run_session``
  attaches one to every session when ``store.enabled``.
"""

from voice.store.db import Store, StoreError, safe_url, store_url
from voice.store.recorder import SessionRecorder
from voice.store.writer import StoreWriter, close_writers, flush_writers, shared_writer

__all__ = ["Store", "StoreError", "StoreWriter", "SessionRecorder", "shared_writer", "close_writers",
           "flush_writers", "store_url", "safe_url"]
