"""``sip.workers > 1``: N agent processes behind a kamailio front, one SIP address for all of them.

Why: the pjsua2-python wheel holds at most 4 calls per process and PJSIP is one
endpoint per process, so more concurrent calls need more processes, and callers
need one address. The standard answer is a SIP load balancer in front of N user
agents; here that is kamailio's dispatcher (config template:
``deploy/kamailio/kamailio.cfg``).

Picture (all on one machine)::

    caller ──SIP──► kamailio  host:port            (signalling only, record-routes)
       │              │ dispatcher, alg 10: fewest calls first, maxload per worker
       │              ├──► worker 1  127.0.0.1:P1  (voice.transports.sip.worker: PJSIP + models)
       │              ├──► worker 2  127.0.0.1:P2
       │              └──► ...
       └─────RTP─────────► the worker that answered (its SDP names its own media port)

:class:`SIPFront` is what ``voice serve --sip`` holds when ``sip.workers > 1``
(``voice.transports.sip.start_sip`` returns it): it renders the config into a
private run directory, starts the workers (each loads its own models), waits
until every one listens, starts kamailio, and supervises all of them: a worker
or kamailio that dies is logged and restarted (with a back-off); ``stop()``
(SIGTERM/Ctrl-C of the service) stops the workers first (they BYE their calls
through the front and flush their records), then kamailio. ``status()`` is what
``/health`` shows under ``"sip"``.

Workers report calls on a pipe (one JSON object per line): ``ready``, ``call``
(connected: session id, Call-ID, caller), ``end`` (who hung up). Call records
go to the store as in one process (``store.url``; SQLite in WAL mode with a
busy timeout, one writer thread per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from .errors import SIPError
from .config import SIPSettings

TEMPLATE = Path(__file__).resolve().parents[3] / "deploy" / "kamailio" / "kamailio.cfg"
# The wheel's compile-time call slots per process (see config.py max_calls).
PJSIP_SLOTS = 4
_READY_TIMEOUT_S = 240.0
_STOP_GRACE_S = 15.0


# ------------------------------------------------------------------------ kamailio config

def find_kamailio(sip: SIPSettings) -> str:
    """The kamailio binary's path, or SIPError with a one-line fix."""
    name = sip.kamailio
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if path is None:
        raise SIPError(f"sip.workers = {sip.workers} needs kamailio as the SIP front, and {name!r} was not "
                       "found: install the Debian/Ubuntu package kamailio (apt-get install kamailio, or "
                       "`make sip-front`), or set sip.workers = 1")
    return path


def template_path(sip: SIPSettings) -> Path:
    path = Path(sip.front_config) if sip.front_config else TEMPLATE
    if not path.is_file():
        raise SIPError(f"kamailio config template not found: {path} (sip.front_config)")
    return path


def worker_max_calls(sip: SIPSettings) -> int:
    return min(sip.max_calls, PJSIP_SLOTS)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_config(sip: SIPSettings, worker_ports: list[int], internal_port: int, run_dir: Path,
                  template: Path | None = None) -> Path:
    """Write ``kamailio.cfg`` and ``dispatcher.list`` into ``run_dir``; returns the config's path.

    The front listens on ``sip.host:sip.port`` (each of ``sip.transports``) for callers and on
    ``127.0.0.1:internal_port`` (UDP) for the worker leg, so the workers always see the front
    at one loopback address, whatever ``sip.host`` is.
    """
    host = sip.host
    listen = []
    for proto in sip.transports:
        line = f"listen={proto}:{_hostport(host, sip.port)}"
        if sip.public_address:
            line += f" advertise {_hostport(sip.public_address, sip.port)}"
        listen.append(line)
    internal = f"udp:127.0.0.1:{internal_port}"
    listen.append(f"listen={internal}")
    if "tcp" not in sip.transports:
        listen.append("disable_tcp=yes")
    maxload = worker_max_calls(sip)
    ds = ["# setid destination flags priority attrs (written by voice/transports/sip/front.py)"]
    for i, port in enumerate(worker_ports, 1):
        ds.append(f"1 sip:127.0.0.1:{port} 0 0 duid=w{i};maxload={maxload};socket={internal}")
    ds_list = run_dir / "dispatcher.list"
    ds_list.write_text("\n".join(ds) + "\n")
    values = {
        "DEBUG": sip.front_log_level,
        "CHILDREN": 2,
        "LISTEN": "\n".join(listen),
        "USER_AGENT": sip.user_agent.replace('"', ""),
        "FR_INV_MS": int((sip.answer_delay_s + 30.0) * 1000),
        "DS_LIST": str(ds_list),
        "HASH_EXPIRE_S": int(sip.max_call_duration_s + 120),
        "PING_S": 2,
        "PING_FROM": f"sip:front@127.0.0.1:{internal_port}",
    }
    text = (template or template_path(sip)).read_text()
    for k, v in values.items():
        text = text.replace(f"@@{k}@@", str(v))
    left = sorted(set(re.findall(r"@@([A-Z0-9_]+)@@", text)))
    if left:
        raise SIPError(f"kamailio template has unfilled placeholders: {', '.join(left)}")
    cfg = run_dir / "kamailio.cfg"
    cfg.write_text(text)
    return cfg


def check_config(kamailio: str, cfg: Path) -> None:
    """``kamailio -c``: SIPError with kamailio's first error line when the config does not load."""
    import subprocess

    proc = subprocess.run([kamailio, "-c", "-f", str(cfg), "-E", "-Y", str(cfg.parent), "-m", "32", "-M", "8"],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "ERROR" in ln or "CRITICAL" in ln]
        first = (lines or (proc.stderr + proc.stdout).strip().splitlines() or ["(no output)"])[0]
        raise SIPError(f"kamailio rejected the front config {cfg}: {first.strip()}")


def free_port(host: str = "127.0.0.1", taken: set[int] | None = None) -> int:
    """A port free for both UDP and TCP on ``host``."""
    for _ in range(100):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((host, 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if taken and port in taken:
                continue
            t.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise SIPError("no free port for a SIP worker")


def sip_options_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether ``host:port`` answers a SIP OPTIONS over UDP with 200."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind(("::1" if fam == socket.AF_INET6 else "127.0.0.1", 0) if ipaddress.ip_address(host).is_loopback
               else ("", 0))
        lhost, lport = s.getsockname()[:2]
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        msg = (f"OPTIONS sip:{_hostport(host, port)} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {_hostport(lhost, lport)};branch={branch};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:probe@{_hostport(lhost, lport)}>;tag={uuid.uuid4().hex[:8]}\r\n"
               f"To: <sip:{_hostport(host, port)}>\r\nCall-ID: {uuid.uuid4().hex}@probe\r\nCSeq: 1 OPTIONS\r\n"
               "Content-Length: 0\r\n\r\n")
        s.settimeout(timeout)
        try:
            s.sendto(msg.encode(), (host, port))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = s.recv(65535)
                if data.startswith(b"SIP/2.0 200"):
                    return True
                if data.startswith(b"SIP/2.0 ") and not data.startswith(b"SIP/2.0 1"):
                    return False
        except OSError:
            return False
    return False


# ------------------------------------------------------------------------ supervision

def _die_with_parent() -> None:
    """preexec for children: SIGTERM when the service dies, whatever killed it (Linux prctl).

    (PDEATHSIG fires when the thread that started the child exits: the event loop's thread,
    which lives as long as the service.)"""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


@dataclass
class WorkerState:
    index: int
    port: int
    proc: asyncio.subprocess.Process | None = None
    state: str = "starting"  # starting, ready, dead, stopped
    restarts: int = 0
    started_at: float = 0.0
    last_exit: int | None = None
    live: dict[str, dict] = field(default_factory=dict)  # session id -> call info
    history: deque = field(default_factory=lambda: deque(maxlen=2000))  # ended calls
    calls_total: int = 0
    calls_lost: int = 0  # live when the worker died
    ready_evt: asyncio.Event = field(default_factory=asyncio.Event)

    def public(self) -> dict[str, Any]:
        return {"index": self.index, "port": self.port, "pid": self.proc.pid if self.proc else None,
                "state": self.state, "live_calls": len(self.live), "calls_total": self.calls_total,
                "calls_lost": self.calls_lost, "restarts": self.restarts, "last_exit": self.last_exit}


class SIPFront:
    """kamailio + N worker processes (see the module docstring). ``await start()`` / ``await stop()``."""

    def __init__(self, app_settings: Any, *, python: str | None = None, run_dir: str | Path | None = None,
                 ready_timeout_s: float = _READY_TIMEOUT_S) -> None:
        self.app_settings = app_settings
        self.sip: SIPSettings = app_settings.sip
        self.python = python or sys.executable
        self.kamailio_bin = find_kamailio(self.sip)
        self.template = template_path(self.sip)
        self.ready_timeout_s = ready_timeout_s
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="voice-sip-front-"))
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.workers: list[WorkerState] = []
        self.kamailio: asyncio.subprocess.Process | None = None
        self.kamailio_restarts = 0
        self.kamailio_state = "stopped"
        self.internal_port = 0
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()
        self._spec_path = self.run_dir / "worker-spec.json"
        self.bound_host = self.sip.host
        self.bound_port = self.sip.port

    # ---- lifecycle
    async def start(self) -> "SIPFront":
        s = self.sip
        try:
            taken = {s.port}
            ports = []
            for i in range(s.workers):
                p = s.worker_port_base + i if s.worker_port_base else free_port(taken=taken)
                taken.add(p)
                ports.append(p)
            self.internal_port = free_port(taken=taken)
            self.workers = [WorkerState(i + 1, p) for i, p in enumerate(ports)]
            cfg = render_config(s, ports, self.internal_port, self.run_dir, self.template)
            await asyncio.to_thread(check_config, self.kamailio_bin, cfg)
            self._write_spec()
            logger.info(f"sip: starting {s.workers} SIP workers on 127.0.0.1 ports "
                        f"{', '.join(map(str, ports))} behind kamailio on {_hostport(s.host, s.port)} "
                        f"(run dir {self.run_dir})")
            for w in self.workers:
                await self._spawn_worker(w)
            await self._wait_ready(self.workers, self.ready_timeout_s)
            await self._spawn_kamailio()
            await self._wait_front(10.0)
        except BaseException:
            await self.stop()
            raise
        logger.info(f"sip: front on {_hostport(s.host, s.port)} ({'/'.join(s.transports)}) -> "
                    f"{len(self.workers)} workers x {worker_max_calls(s)} calls")
        return self

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        grace = float(getattr(getattr(self.app_settings, "security", None), "shutdown_grace_s", 10.0)) + 5.0
        # Workers first: they BYE their calls through the front and flush their records.
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        await self._reap(procs, max(grace, _STOP_GRACE_S))
        for w in self.workers:
            w.state = "stopped"
        if self.kamailio is not None and self.kamailio.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.kamailio.send_signal(signal.SIGTERM)
            await self._reap([self.kamailio], 5.0)
        self.kamailio_state = "stopped"
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        self._spec_path.unlink(missing_ok=True)  # it holds the settings' secrets
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        logger.info("sip: front and workers stopped")

    async def _reap(self, procs: list, timeout: float) -> None:
        if not procs:
            return
        waits = [asyncio.ensure_future(p.wait()) for p in procs]
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for p in procs:
            if p.returncode is None:
                logger.warning(f"sip: pid {p.pid} did not stop in {timeout:.0f}s: killed")
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
        if pending:
            await asyncio.wait(pending, timeout=5)

    # ---- status (GET /health "sip")
    def status(self) -> dict[str, Any]:
        ready = sum(1 for w in self.workers if w.state == "ready")
        return {
            "mode": "front", "address": _hostport(self.sip.host, self.sip.port),
            "front": {"state": self.kamailio_state, "pid": self.kamailio.pid if self.kamailio else None,
                      "restarts": self.kamailio_restarts},
            "workers_ready": ready, "workers_total": len(self.workers),
            "live_calls": sum(len(w.live) for w in self.workers),
            "capacity": len(self.workers) * worker_max_calls(self.sip),
            "healthy": self.kamailio_state == "running" and ready == len(self.workers),
            "workers": [w.public() for w in self.workers],
        }

    def calls(self) -> list[dict[str, Any]]:
        """Every call the workers reported (live and ended), each with its worker's index."""
        out = []
        for w in self.workers:
            out += [dict(c, worker=w.index) for c in list(w.history) + list(w.live.values())]
        return out

    # ---- workers
    def _write_spec(self) -> None:
        s = self.sip
        data = _plain(self.app_settings.model_dump())
        data["data_dir"] = str(Path(self.app_settings.data_dir).resolve())
        wildcard = ipaddress.ip_address(s.host).is_unspecified
        public = s.public_address or (None if wildcard else s.host)
        spec = {
            "settings": data,
            "front": {
                "proxy_host": "127.0.0.1",
                "proxy_port": self.internal_port,
                "proxy_uri": f"sip:127.0.0.1:{self.internal_port};lr",
                "contact_uri": f"sip:{s.registrar_user or s.user}@{_hostport(public or '127.0.0.1', s.port)}",
                "media_host": s.host,
                "media_public_address": s.public_address,
                "nonce_key": secrets.token_hex(32),
            },
        }
        fd = os.open(self._spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds secrets
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)

    async def _spawn_worker(self, w: WorkerState) -> None:
        w.state = "starting"
        w.ready_evt = asyncio.Event()
        w.started_at = time.monotonic()
        w.proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "voice.transports.sip.worker", "--spec", str(self._spec_path),
            "--index", str(w.index), "--port", str(w.port),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=None,
            start_new_session=True,  # Ctrl-C in a terminal reaches the service only; it stops them in order
            preexec_fn=_die_with_parent, limit=1 << 20)
        self._task(self._watch_worker(w, w.proc), f"sip-worker-{w.index}")

    async def _wait_ready(self, workers: list[WorkerState], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for w in workers:
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(w.ready_evt.wait(), max(0.1, left))
            except TimeoutError:
                raise SIPError(f"SIP worker {w.index} did not come up in {timeout:.0f}s") from None
            if w.state != "ready":
                raise SIPError(f"SIP worker {w.index} exited while starting (exit code {w.last_exit}); "
                               "its log is above")

    async def _watch_worker(self, w: WorkerState, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self._on_event(w, ev)
        code = await proc.wait()
        w.last_exit = code
        if w.proc is not proc:
            return
        lost = len(w.live)
        w.calls_lost += lost
        for c in w.live.values():
            w.history.append(dict(c, state="lost"))
        w.live.clear()
        if self._stopping:
            w.state = "stopped"
            w.ready_evt.set()
            return
        was_ready = w.state == "ready"
        w.state = "dead"
        w.ready_evt.set()
        if not was_ready and not w.restarts:
            return  # start() reports it (no restart loop for a worker that cannot start at all)
        w.restarts += 1
        delay = min(30.0, 2.0 ** min(w.restarts, 5))
        logger.error(f"sip: worker {w.index} (pid {proc.pid}, port {w.port}) exited with code {code}"
                     f"{f', {lost} live calls lost' if lost else ''}; restarting in {delay:.0f}s")
        await asyncio.sleep(delay)
        if not self._stopping:
            await self._spawn_worker(w)

    def _on_event(self, w: WorkerState, ev: dict) -> None:
        kind = ev.get("ev")
        if kind == "ready":
            w.state = "ready"
            w.ready_evt.set()
            if w.restarts:
                logger.info(f"sip: worker {w.index} is back (restart {w.restarts})")
        elif kind == "call":
            w.calls_total += 1
            w.live[ev["sid"]] = ev
        elif kind == "end":
            call = w.live.pop(ev.get("sid"), None) or {}
            w.history.append({**call, **ev})

    # ---- kamailio
    async def _spawn_kamailio(self) -> None:
        cfg = self.run_dir / "kamailio.cfg"
        self.kamailio = await asyncio.create_subprocess_exec(
            self.kamailio_bin, "-f", str(cfg), "-DD", "-E", "-Y", str(self.run_dir),
            "-P", str(self.run_dir / "kamailio.pid"), "-m", "64", "-M", "8",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=None,
            start_new_session=True, preexec_fn=_die_with_parent)
        self.kamailio_state = "starting"
        self._task(self._watch_kamailio(self.kamailio), "sip-front")

    async def _wait_front(self, timeout: float) -> None:
        host = "127.0.0.1" if ipaddress.ip_address(self.sip.host).is_unspecified else self.sip.host
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kamailio is None or self.kamailio.returncode is not None:
                raise SIPError(f"kamailio exited at start (code {self.kamailio.returncode if self.kamailio else '?'}) "
                               f"on {_hostport(self.sip.host, self.sip.port)}; its log is above")
            if "udp" not in self.sip.transports or await asyncio.to_thread(sip_options_ok, host, self.sip.port, 0.5):
                self.kamailio_state = "running"
                return
            await asyncio.sleep(0.1)
        raise SIPError(f"kamailio did not answer on {_hostport(self.sip.host, self.sip.port)} in {timeout:.0f}s")

    async def _watch_kamailio(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._stopping or proc is not self.kamailio or self.kamailio_state != "running":
            return
        self.kamailio_state = "dead"
        self.kamailio_restarts += 1
        delay = min(30.0, 2.0 ** min(self.kamailio_restarts, 5))
        logger.error(f"sip: kamailio (pid {proc.pid}) exited with code {code}; new calls cannot reach the workers; "
                     f"restarting it in {delay:.0f}s")
        await asyncio.sleep(delay)
        if self._stopping:
            return
        try:
            await self._spawn_kamailio()
            await self._wait_front(10.0)
            logger.info(f"sip: kamailio is back (restart {self.kamailio_restarts})")
        except SIPError as e:
            logger.error(f"sip: {e}")

    def _task(self, coro, name: str) -> None:
        t = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)


def _plain(obj: Any) -> Any:
    """``model_dump()`` output as JSON-able data with secrets revealed (for the workers' spec file)."""
    if hasattr(obj, "get_secret_value"):
        return obj.get_secret_value()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


async def start_front(app_state: Any) -> SIPFront:
    """``start_sip`` when ``sip.workers > 1``: the front and its workers; ``/health`` shows ``status()``."""
    front = SIPFront(app_state.settings)
    await front.start()
    with contextlib.suppress(Exception):
        app_state.sip_status = front.status
    return front
