"""Store writes off the event loop: one thread per store, fed by a queue.

Sessions call :meth:`StoreWriter.submit` (never blocks: it only enqueues);
the thread runs the writes in order, each its own committed transaction. A
failing write is logged (without the store URL's password) and dropped: the
store must never break a conversation. One writer per store URL per process
(:func:`shared_writer`), so SQLite sees a single writing connection.
"""

from __future__ import annotations

import atexit
import queue
import threading
from typing import Any

from loguru import logger

from voice.store.db import Store, StoreError, safe_url, store_url

_STOP = object()


class StoreWriter:
    def __init__(self, store: Store):
        self.store = store
        self._queue: queue.Queue = queue.Queue()
        self.failed = 0
        self.written = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="voice-store", daemon=True)
        self._thread.start()

    def submit(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Queue ``store.<method>(*args, **kwargs)``; returns at once."""
        if self._closed:
            logger.warning(f"session store closed; dropped {method}")
            return
        self._queue.put((method, args, kwargs))

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything submitted so far is written; False on timeout."""
        if not self._thread.is_alive():
            return self._queue.empty()
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, stop the thread, release the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self.store.close()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            method, args, kwargs = item
            try:
                getattr(self.store, method)(*args, **kwargs)
                self.written += 1
            except Exception as e:
                self.failed += 1
                first = str(getattr(e, "orig", None) or e).splitlines()[0] if str(e) else type(e).__name__
                logger.error(f"session store ({safe_url(self.store.url)}): {method} failed: {first}")


_WRITERS: dict[str, StoreWriter] = {}
_LOCK = threading.Lock()


def shared_writer(settings) -> StoreWriter:
    """This process's writer for ``settings.store`` (opened, and migrated, on first use)."""
    url = store_url(settings.store, settings.data_dir)
    with _LOCK:
        writer = _WRITERS.get(url)
        if writer is None or writer._closed:
            writer = StoreWriter(Store(url))
            _WRITERS[url] = writer
        return writer


def close_writers(timeout: float = 30.0) -> None:
    """Flush and close every writer of this process (service shutdown, interpreter exit)."""
    with _LOCK:
        writers = list(_WRITERS.values())
        _WRITERS.clear()
    for w in writers:
        try:
            w.close(timeout)
        except Exception as e:  # never raise at exit
            logger.warning(f"closing the session store failed: {e}")


def flush_writers(timeout: float = 30.0) -> bool:
    with _LOCK:
        writers = list(_WRITERS.values())
    return all(w.flush(timeout) for w in writers)


atexit.register(close_writers)

__all__ = ["StoreWriter", "StoreError", "shared_writer", "close_writers", "flush_writers"]
