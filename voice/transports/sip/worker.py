"""One SIP agent worker behind the kamailio front (started by :class:`voice.transports.sip.front.SIPFront`).

``python -m voice.transports.sip.worker --spec FILE --index I --port P``

A normal phone agent (``SIPAgent`` with the real pipeline, its own PJSIP
endpoint and its own models) on ``127.0.0.1:P``, UDP, with a
:class:`~voice.transports.sip.config.FrontLink`: callers' addresses come from
the front's X-Voice-Source header, RTP is bound where callers can reach it,
digest nonces are shared with the other workers. Records go to the configured
store like any session.

It reports to the front on its original stdout, one JSON object per line
(``ready``, ``call``, ``end``); everything else that would print to stdout is
sent to stderr. SIGTERM/SIGINT: refuse new calls (486, the front tries another
worker), hang up the live ones (BYE through the front), flush the records, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from typing import Any

_events_lock = threading.Lock()
_events: Any = None


def emit(**ev: Any) -> None:
    if _events is None:
        return
    line = json.dumps(ev, separators=(",", ":")) + "\n"
    with _events_lock:
        try:
            _events.write(line)
            _events.flush()
        except (OSError, ValueError):
            pass


class _Slots:
    """The worker's session registry: refuses every new call once draining (SIGTERM)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.draining = False
        self._live: set[str] = set()
        self._lock = threading.Lock()

    def try_reserve(self, kind: str, key: str | None = None) -> str | None:
        with self._lock:
            if self.draining or len(self._live) >= self.limit or key is None:
                return None
            self._live.add(key)
            return key

    def release(self, key: str) -> None:
        with self._lock:
            self._live.discard(key)


def worker_settings(spec: dict, index: int, port: int):
    """(app Settings, worker SIPSettings, FrontLink) from the front's spec file."""
    from voice.settings import Settings

    from .config import FrontLink

    app = Settings.model_validate(spec["settings"])
    sip = app.sip.model_copy(update={
        "host": "127.0.0.1", "port": port, "public_bind": False, "public_address": None,
        "transports": ["udp"], "workers": 1, "worker_port_base": 0,
    })
    app = app.model_copy(update={"sip": sip})
    f = spec["front"]
    link = FrontLink(proxy_host=f["proxy_host"], proxy_uri=f["proxy_uri"], contact_uri=f["contact_uri"],
                     media_host=f["media_host"], media_public_address=f.get("media_public_address"),
                     nonce_key=bytes.fromhex(f["nonce_key"]) if f.get("nonce_key") else None,
                     register=index == 1, proxy_port=int(f.get("proxy_port") or 0))
    return app, sip, link


async def run(app, sip, link, index: int) -> int:
    from loguru import logger

    from voice.runtime import Runtime

    from .agent import SIPAgent
    from .errors import SIPError

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runtime = await asyncio.to_thread(Runtime.load, app)
    if app.store.enabled:
        from voice.store import StoreError, shared_writer

        try:
            await asyncio.to_thread(shared_writer, app)
        except (StoreError, OSError) as e:
            logger.error(f"sessions will not be recorded: {e}")
    slots = _Slots(app.max_sessions)

    def on_call(call) -> None:
        emit(ev="call", sid=call.session_id, call_id=call.call_id, source=call.source, remote=call.remote_uri,
             t=time.time())

        def ended() -> None:
            emit(ev="end", sid=call.session_id, call_id=call.call_id, status=call.last_status,
                 reason=call.last_reason, by="agent" if call.local_hangup else "caller", t=time.time())

        call.add_end_listener(ended)

    agent = SIPAgent(sip, runtime=runtime, app_settings=app, registry=slots, on_call=on_call, front=link)
    try:
        await agent.start()
    except SIPError as e:
        logger.error(f"sip worker {index}: {e}")
        return 3
    emit(ev="ready", port=agent.bound_port, pid=os.getpid())
    await stop.wait()
    slots.draining = True
    logger.info(f"sip worker {index}: stopping ({len(agent.calls)} live calls)")
    await agent.stop()
    from voice.store import close_writers

    await asyncio.to_thread(close_writers)
    return 0


def main(argv: list[str] | None = None) -> int:
    global _events
    p = argparse.ArgumentParser(prog="voice.transports.sip.worker")
    p.add_argument("--spec", required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    # Our stdout is the event pipe to the front; whatever else prints to stdout goes to stderr.
    _events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    from loguru import logger

    with open(args.spec) as f:
        spec = json.load(f)
    app, sip, link = worker_settings(spec, args.index, args.port)
    logger.remove()
    logger.add(sys.stderr, level=app.log_level,
               format=f"{{time:HH:mm:ss.SSS}} {{level: <7}} [sip-w{args.index}] {{message}}")
    try:
        return asyncio.run(run(app, sip, link, args.index))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
