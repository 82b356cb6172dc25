"""The SIP phone agent: the PJSIP (pjsua2) endpoint, its transports and accounts, and the calls it
answers and places (each a :class:`~voice.transports.sip.call.SIPCall`, call.py).

The package's modules, each with one job; imports run one way (serve -> front, agent; worker ->
agent; agent -> call, policy, transport; transport -> call; call -> audio_port), and no module
imports one that imports it:
``agent.py`` (this) the endpoint and accounts; ``call.py`` one call's dialog and media;
``policy.py`` who may call; ``sipmsg.py`` reading raw SIP text; ``transport.py`` a call as a
pipecat transport; ``front.py`` the kamailio front's supervision (``sip.workers > 1``);
``worker.py`` one worker process behind it; ``serve.py`` what ``voice serve --sip`` and
``voice call`` start; ``errors.py`` SIPError (re-exported here).

Threading
---------
* One dedicated thread ("pjsip") owns the pjsua2 Endpoint: it creates and
  destroys the library, polls SIP with ``libHandleEvents`` (``uaConfig.threadCnt
  = 0``) and runs every pjsua2 API call the rest of the program asks for
  (commands posted to a queue, results returned as futures). SIP callbacks
  (``onIncomingCall``, ``onCallState``, ``onCallMediaState`` ...) therefore run
  on this thread.
* PJSIP's own media threads (RTP worker, null sound device clock) call the
  audio port (``onFrameRequested``/``onFrameReceived``, every 20 ms) and the
  DTMF callbacks. Those only touch lock-protected Python state, hand results
  to asyncio with ``loop.call_soon_threadsafe`` and post any pjsua2 work
  (e.g. a transfer) to the pjsip thread.
* The asyncio loop runs one session task per connected call. It never calls
  pjsua2 directly; it is registered with ``libRegisterThread`` anyway, so an
  object that happens to be released there cannot trip PJLIB's thread check.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import heapq
import ipaddress
import itertools
import queue
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from .audio_port import make_port_class
from .call import PJCall, Lazy, SIPCall
from .config import FrontLink, SIPSettings
from .errors import SIPError
from .policy import InboundPolicy
from .sipmsg import clean_uri, header, host_of

__all__ = ["SIPAgent", "SIPError", "END_GRACE_S"]

SessionFn = Callable[[SIPCall], Awaitable[None]]

END_GRACE_S = 5.0  # a session whose call has ended gets this long to finish before it is cancelled
# Methods PJSIP's modules put in the Allow header (OPTIONS, dialog responses) that a caller does not
# get here: a REFER is declined (603: we never dial elsewhere for a caller) and a SUBSCRIBE refused
# (405). MESSAGE stays: PJSIP answers it 200 (the agent logs it and does nothing with it).
NOT_ALLOWED = ("REFER", "SUBSCRIBE")


class SIPAgent:
    """A SIP user agent on PJSIP that turns each answered call into a voice session.

    ``session`` is ``async def session(call: SIPCall)``; it runs on the asyncio
    loop from the moment a call connects; when it returns the call is hung up,
    and when the call ends first it gets a grace period and is then
    cancelled. Without ``session``, calls run :func:`voice.session.run_session`
    when ``runtime`` and ``app_settings`` are given (what ``voice serve --sip``
    does), else a built-in responder (a beep, then echo) for bring-up.

    Only one SIPAgent can run per process (PJSIP's endpoint is a singleton).
    """

    _active: SIPAgent | None = None
    _active_lock = threading.Lock()

    def __init__(self, settings: SIPSettings | None = None, session: SessionFn | None = None, *,
                 runtime: Any = None, app_settings: Any = None,
                 on_dtmf: Callable[[SIPCall, str], Any] | None = None,
                 on_call: Callable[[SIPCall], Any] | None = None,
                 registry: Any = None, app_state: Any = None, front: FrontLink | None = None) -> None:
        self.settings = settings or SIPSettings()
        # Set when this agent is one worker behind the kamailio front (sip.workers > 1, see front.py).
        self.front = front
        # The service's shared session limit (voice.service.SessionRegistry: try_reserve/release,
        # thread-safe); a call that finds it full gets 486 like one beyond max_calls.
        self.registry = registry
        self.app_state = app_state
        self._session_fn = session
        self.runtime = runtime
        self.app_settings = app_settings
        self.on_dtmf = on_dtmf
        self.on_call = on_call  # called on the loop when any call connects
        self.bound_port: int | None = None
        self.bound_host = self.settings.host
        self.registered = False
        self.reg_status: int | None = None
        self.rejections: dict[int, int] = {}  # status code -> count (inbound calls we refused)
        self.calls: dict[str, SIPCall] = {}  # session_id -> call, live calls only
        self.history: deque[SIPCall] = deque(maxlen=200)
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._thread: threading.Thread | None = None
        self._cmds: queue.SimpleQueue = queue.SimpleQueue()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._stopping = threading.Event()
        self._tasks: dict[str, asyncio.Task] = {}
        self.policy = InboundPolicy(self.settings, front.nonce_key if front is not None else None)
        # pjsip-thread-only
        self._ep: Any = None
        self._accounts: list[Any] = []
        self._reg_account: Any = None
        self._local_account: Any = None
        self._pj_live: set[SIPCall] = set()  # calls holding a pjsua2 Call object (ids get reused)
        self._graveyard: list[Any] = []
        self._port_class: Any = None
        self._log_writer: Any = None
        self.allow = ""  # the methods the Allow header advertises (set when PJSIP starts)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> SIPAgent:
        with SIPAgent._active_lock:
            if SIPAgent._active is not None:
                raise SIPError("a SIP agent is already running in this process")
            SIPAgent._active = self
        self._loop = asyncio.get_running_loop()
        if self.settings.trust_registrar and self.settings.registrar_uri:
            self.policy.trusted_ips = await self._loop.run_in_executor(None, self._resolve_registrar)
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._pj_main, args=(ready,), name="pjsip", daemon=True)
        self._thread.start()
        try:
            await asyncio.wrap_future(ready)
        except BaseException:
            await self._loop.run_in_executor(None, self._thread.join, 5)
            with SIPAgent._active_lock:
                SIPAgent._active = None
            raise
        atexit.register(self._stop_thread_at_exit)
        try:
            import pjsua2 as pj

            if not pj.Endpoint.instance().libIsThreadRegistered():
                pj.Endpoint.instance().libRegisterThread(f"asyncio-{threading.get_ident()}")
        except Exception:  # noqa: BLE001
            pass
        logger.info(f"sip: listening on {self.bound_host}:{self.bound_port} ({'/'.join(self.settings.transports)})")
        return self

    async def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        for call in list(self.calls.values()):
            call.hangup(503)  # BYE when connected; 503 to one still ringing; CANCEL when we dialled
        deadline = time.monotonic() + timeout
        for call in list(self.calls.values()):
            await call.wait_ended(max(0.1, deadline - time.monotonic()))
        tasks = [t for t in self._tasks.values() if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.5, deadline - time.monotonic()))
        self._stopping.set()
        await self._loop.run_in_executor(None, self._thread.join, 10)
        self._thread = None
        atexit.unregister(self._stop_thread_at_exit)
        with SIPAgent._active_lock:
            SIPAgent._active = None
        logger.info("sip: stopped")

    def _stop_thread_at_exit(self) -> None:
        """Interpreter exit without stop(): shut PJSIP down before Python finalises (its media
        threads call into Python every 20 ms)."""
        if self._thread is not None and self._thread.is_alive():
            self._stopping.set()
            self._thread.join(5)

    async def __aenter__(self) -> SIPAgent:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def place_call(self, uri: str, *, timeout: float = 60.0) -> SIPCall:
        """Call ``uri`` (``sip:user@host[:port]``); returns once answered, raises SIPError otherwise.

        The call's session starts when it connects, exactly as for inbound calls.
        """
        if not uri.lower().startswith(("sip:", "sips:")):
            uri = "sip:" + uri
        call = await asyncio.wrap_future(self._post(self._pj_place_call, uri))
        if not await call.wait_connected(timeout):
            if not call.ended:
                call.hangup()
                await call.wait_ended(5)
            raise SIPError(f"call to {uri} failed: {call.last_status or 'timeout'} {call.last_reason}".strip())
        return call

    # ------------------------------------------------------------------ thread plumbing
    def _post(self, fn: Callable, *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` on the pjsip thread; the future carries its result."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self._thread is None or self._stopping.is_set():
            fut.set_exception(SIPError("SIP agent is not running"))
            return fut
        self._cmds.put((fn, args, fut))
        return fut

    def _to_loop(self, fn: Callable, *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed
            pass

    def _pj_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))

    def _pj_main(self, ready: concurrent.futures.Future) -> None:
        import pjsua2 as pj

        try:
            self._pj_init()
        except BaseException as e:  # noqa: BLE001
            msg = e.info() if isinstance(e, pj.Error) else str(e)
            try:
                self._pj_destroy()
            except Exception:  # noqa: BLE001
                pass
            ready.set_exception(SIPError(f"cannot start SIP on {self.settings.host}:{self.settings.port}: {msg}"))
            return
        ready.set_result(None)
        shutdown_at: float | None = None
        while True:
            try:
                self._ep.libHandleEvents(10)
                self._pj_run_commands()
                self._pj_run_timers()
                if self._graveyard:
                    now = time.monotonic()
                    self._graveyard[:] = [(due, port) for due, port in self._graveyard if due > now]
            except Exception:  # noqa: BLE001 - keep the SIP thread alive
                logger.exception("sip: error in the pjsip loop")
            if self._stopping.is_set():
                if shutdown_at is None:
                    shutdown_at = time.monotonic() + 1.0
                    try:
                        self._ep.hangupAllCalls()
                        if self._reg_account is not None and self.registered:
                            self._reg_account.setRegistration(False)
                    except pj.Error:
                        pass
                elif time.monotonic() > shutdown_at or (not self._pj_live and not self.registered):
                    break
        self._pj_run_commands()
        self._pj_destroy()

    def _pj_run_commands(self) -> None:
        while True:
            try:
                fn, args, fut = self._cmds.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001
                fut.set_exception(e)

    def _pj_run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            try:
                fn()
            except Exception:  # noqa: BLE001
                logger.exception("sip: timer callback failed")

    # ------------------------------------------------------------------ pjsua2 setup
    def _pj_init(self) -> None:
        import pjsua2 as pj

        s = self.settings
        self._port_class = make_port_class()
        self._rtp_base = s.rtp_port or 20000 + 2 * secrets.randbelow(10000)
        ep = pj.Endpoint()
        self._ep = ep
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0  # we poll in this thread
        cfg.uaConfig.mainThreadOnly = False
        # PJSIP's call slots, rejected calls included; the pjsua2-python 2.15.1 wheel caps this at 4
        # whatever is asked (measured), beyond which PJSIP answers 486 Busy Here statelessly.
        cfg.uaConfig.maxCalls = min(32, s.max_calls + 4)
        cfg.uaConfig.userAgent = s.user_agent
        cfg.logConfig.level = s.log_level
        cfg.logConfig.consoleLevel = s.log_level
        cfg.logConfig.msgLogging = s.log_level >= 4
        # The endpoint deletes its log writer in libDestroy(): hand the SWIG object over to C++
        # (__disown__), or Python deletes it a second time later (a heap corruption that showed up
        # as a segfault in an unrelated place a few agents later).
        writer = _make_log_writer()
        writer.__disown__()
        self._log_writer = writer
        cfg.logConfig.writer = writer
        cfg.logConfig.decor = 0
        mc = cfg.medConfig
        mc.clockRate = 8000
        mc.sndClockRate = 8000
        mc.channelCount = 1
        mc.audioFramePtime = 20
        mc.ptime = 20
        mc.noVad = True  # always send RTP (no silence suppression)
        mc.ecTailLen = 0  # no sound card, no echo canceller
        mc.quality = 4
        if s.jitter_min_ms >= 0:
            mc.jbMinPre = s.jitter_min_ms
        if s.jitter_max_ms >= 0:
            mc.jbMax = s.jitter_max_ms
        ep.libInit(cfg)

        public = s.public_address
        first_port: int | None = None
        for kind in s.transports:
            tc = pj.TransportConfig()
            tc.port = first_port if first_port is not None else s.port
            tc.boundAddress = s.host
            if public:
                tc.publicAddress = public
            ttype = pj.PJSIP_TRANSPORT_UDP if kind == "udp" else pj.PJSIP_TRANSPORT_TCP
            if ipaddress.ip_address(s.host).version == 6:
                ttype = pj.PJSIP_TRANSPORT_UDP6 if kind == "udp" else pj.PJSIP_TRANSPORT_TCP6
            tid = ep.transportCreate(ttype, tc)
            if first_port is None:
                first_port = int(ep.transportGetInfo(tid).localName.rsplit(":", 1)[1])
        self.bound_port = first_port
        ep.libStart()
        ep.audDevManager().setNullDev()
        allow = _pj_limit_allow(NOT_ALLOWED)
        if allow is None:
            logger.warning("sip: could not read PJSIP's Allow header; OPTIONS advertises PJSIP's default methods")
        self.allow = ", ".join(allow or [])

        ranks = {c.lower(): i for i, c in enumerate(s.codecs)}
        for ci in ep.codecEnum2():
            cid = ci.codecId.lower()
            prio = 0
            for name, rank in ranks.items():
                if cid.startswith(name):
                    prio = 250 - rank
                    break
            ep.codecSetPriority(ci.codecId, prio)

        host = public or s.host
        hostport = f"[{host}]" if ":" in host else host
        acc_cfg = pj.AccountConfig()
        acc_cfg.idUri = f"sip:{s.user}@{hostport}:{self.bound_port}"
        self._media_config(acc_cfg)
        self._local_account = _Account(self)
        self._local_account.create(acc_cfg, True)
        self._accounts.append(self._local_account)

        front = self.front
        if s.registrar_uri and (front is None or front.register):
            reg = pj.AccountConfig()
            reg_host = re.sub(r"^sips?:", "", s.registrar_uri).split(";", 1)[0]
            reg.idUri = f"sip:{s.registrar_user}@{reg_host}"
            reg.regConfig.registrarUri = s.registrar_uri
            reg.regConfig.timeoutSec = s.register_refresh_s
            reg.regConfig.retryIntervalSec = 30
            cred = pj.AuthCredInfo("digest", s.registrar_realm, s.registrar_user, 0,
                                   s.registrar_password.get_secret_value() if s.registrar_password else "")
            reg.sipConfig.authCreds.append(cred)
            if front is not None:
                # Behind the front the REGISTER goes out through it, and the PBX is told to send
                # calls to the front (which spreads them over the workers), not to this loopback port.
                reg.sipConfig.proxies.append(front.proxy_uri)
                reg.sipConfig.contactForced = f"<{front.contact_uri}>"
            self._media_config(reg)
            self._reg_account = _Account(self)
            self._reg_account.create(reg)
            self._accounts.append(self._reg_account)

    def _media_config(self, acc_cfg: Any) -> None:
        s = self.settings
        host, public = s.host, s.public_address
        if self.front is not None:  # SIP on loopback behind the front; RTP where callers can reach it
            host, public = self.front.media_host, self.front.media_public_address
        acc_cfg.mediaConfig.transportConfig.boundAddress = host
        acc_cfg.mediaConfig.transportConfig.port = self._rtp_base
        if public:
            acc_cfg.mediaConfig.transportConfig.publicAddress = public
        acc_cfg.callConfig.timerMinSESec = 90
        acc_cfg.callConfig.timerSessExpiresSec = 1800

    def _pj_destroy(self) -> None:
        # Every pjsua2 object must be gone before libDestroy(): a Call or port destroyed afterwards
        # (e.g. by a late garbage collection) trips a PJSUA assertion and aborts the process.
        self._timers.clear()  # closures there hold calls
        for call in list(self._pj_live):
            call._port = None
            call._pj = None  # breaks the SIPCall <-> Call cycle, so the Call goes right here
        self._pj_live.clear()
        self._graveyard.clear()
        self._reg_account = None
        self._local_account = None
        for acc in self._accounts:
            try:
                acc.shutdown()
            except Exception:  # noqa: BLE001
                pass
        self._accounts.clear()
        if self._ep is not None:
            try:
                self._ep.libDestroy()
            except Exception:  # noqa: BLE001
                pass
            self._ep = None

    def _resolve_registrar(self) -> set[str]:
        host = re.sub(r"^sips?:", "", self.settings.registrar_uri or "").split(";", 1)[0]
        host = host.split("@")[-1]
        if host.startswith("["):
            host = host[1:host.index("]")]
        elif host.count(":") == 1:
            host = host.rsplit(":", 1)[0]
        try:
            return {ai[4][0] for ai in socket.getaddrinfo(host, None)}
        except OSError:
            logger.warning(f"sip: cannot resolve registrar host {host}")
            return set()

    # ------------------------------------------------------------------ inbound policy (pjsip thread)
    def _admit(self, ip: str, msg: str) -> tuple[int, str, list[tuple[str, str]]]:
        """(0, '', []) to accept, else (status code, reason, extra headers) to reject with."""
        verdict = self.policy.check(ip, msg)
        if verdict[0]:
            return verdict
        live = sum(1 for c in self._pj_live if c._accepted and not c.ended)
        if live >= self.settings.max_calls:
            return 486, "Busy Here", []
        return 0, "", []

    def _reserve(self, call: SIPCall) -> bool:
        """Take a slot in the service's shared session registry (if there is one)."""
        if self.registry is None:
            return True
        try:
            key = self.registry.try_reserve("sip", call.session_id)
        except Exception:  # noqa: BLE001
            logger.exception("sip: session registry failed")
            return False
        call._slot = key
        return key is not None

    def _release(self, call: SIPCall) -> None:
        key, call._slot = call._slot, None
        if key is not None and self.registry is not None:
            try:
                self.registry.release(key)
            except Exception:  # noqa: BLE001
                logger.exception("sip: session registry release failed")

    def _pj_on_incoming(self, acc: Any, prm: Any) -> None:
        import pjsua2 as pj

        call = SIPCall(self, "inbound")
        pjc = PJCall(acc, prm.callId, call)
        call._pj = pjc
        self._pj_live.add(call)
        call.pj_id = prm.callId
        call.source = prm.rdata.srcAddress
        msg = prm.rdata.wholeMsg
        ip = host_of(call.source)
        if self.front is not None and ip == self.front.proxy_host and \
                (not self.front.proxy_port or call.source.rsplit(":", 1)[-1] == str(self.front.proxy_port)):
            # Through the front: the inbound policy applies to the caller it names (it strips any
            # X-Voice-Source a caller sent); without the header, to the front itself.
            fwd = (header(msg, "X-Voice-Source") or "").strip()
            try:
                ipaddress.ip_address(fwd)
                call.source = f"{fwd} via {call.source}"
                ip = fwd
            except ValueError:
                pass
        try:
            ci = pjc.getInfo()
            call.remote_uri = clean_uri(ci.remoteUri)
            call.local_uri = clean_uri(ci.localUri)
            call.call_id = ci.callIdString
        except pj.Error:
            pass
        code, reason, headers = self._admit(ip, msg)
        if not code and not self._reserve(call):
            code, reason, headers = 486, "Busy Here", []
        s = self.settings
        if code:
            self.rejections[code] = self.rejections.get(code, 0) + 1
            lvl = "DEBUG" if code in (401, 503) else "INFO"
            logger.log(lvl, f"sip: rejecting INVITE from {call.source} ({call.remote_uri}): {code} {reason}")
            # Rejected later, never inside this callback: (1) PJSIP defers a hangup made here and
            # drops its extra headers (the WWW-Authenticate of a 401); (2) each call slot PJSIP
            # hands out opens two RTP/RTCP sockets whose ioqueue keys are recycled only ~0.5 s
            # after closing, and an INVITE flood that churns slots faster than that exhausts the
            # ioqueue (a PJLIB assertion aborts the process). Holding a rejected call's slot for
            # reject_delay_s bounds that churn; INVITEs beyond the slots get PJSIP's own
            # stateless 486, which costs no sockets.
            self._pj_later(s.reject_delay_s, lambda: self._pj_reject(call, code, reason, headers))
            return
        call._accepted = True
        self.calls[call.session_id] = call
        self._to_loop(self._register_call, call)
        logger.info(f"sip: incoming call {call.session_id} from {call.remote_uri} ({call.source})"
                    + (f" Call-ID {call.call_id}" if self.front is not None else ""))
        op = pj.CallOpParam()
        op.statusCode = 180
        try:
            pjc.answer(op)
        except pj.Error as e:
            logger.debug(f"sip: 180 failed: {e.info()}")
        self._pj_later(self.settings.answer_delay_s, lambda: self._pj_answer(call))

    def _pj_reject(self, call: SIPCall, code: int, reason: str, headers: list[tuple[str, str]]) -> None:
        import pjsua2 as pj

        if call.ended or call._pj is None:
            return
        op = pj.CallOpParam()
        op.statusCode = code
        op.reason = reason
        for k, v in headers:
            h = pj.SipHeader()
            h.hName = k
            h.hValue = v
            op.txOption.headers.append(h)
        try:
            call._pj.hangup(op)
        except pj.Error as e:
            logger.debug(f"sip: reject failed: {e.info()}")

    def _pj_answer(self, call: SIPCall) -> None:
        import pjsua2 as pj

        if call.ended or call._pj is None:
            return
        op = pj.CallOpParam()
        op.statusCode = 200
        try:
            call._pj.answer(op)
        except pj.Error as e:
            logger.warning(f"sip: answering {call.session_id} failed: {e.info()}")

    def _pj_place_call(self, uri: str) -> SIPCall:
        import pjsua2 as pj

        acc = self._reg_account if self._reg_account is not None and self.registered else self._local_account
        call = SIPCall(self, "outbound")
        if not self._reserve(call):
            raise SIPError("the service is at its session limit")
        pjc = PJCall(acc, pj.PJSUA_INVALID_ID, call)
        call._pj = pjc
        call._accepted = True
        call.remote_uri = uri
        try:
            pjc.makeCall(uri, pj.CallOpParam(True))
        except pj.Error as e:
            self._release(call)
            raise SIPError(f"cannot call {uri}: {e.info().strip()}") from None
        call.pj_id = pjc.getId()
        try:
            call.call_id = pjc.getInfo().callIdString
        except pj.Error:
            pass
        self._pj_live.add(call)
        self.calls[call.session_id] = call
        self._to_loop(self._register_call, call)
        return call

    def _pj_on_transfer_status(self, call: SIPCall, code: int, final: bool) -> bool:
        logger.info(f"sip: transfer of {call.session_id}: {code}{' (final)' if final else ''}")
        if final and 200 <= code < 300:
            self._pj_later(0.0, lambda: call._pj_hangup(None))
            return False
        return True

    # ------------------------------------------------------------------ asyncio side
    def _register_call(self, call: SIPCall) -> None:
        self.history.append(call)

    def _on_call_connected(self, call: SIPCall) -> None:
        call._connected_evt.set()
        if self.app_state is not None and hasattr(self.app_state, "sessions_started"):
            self.app_state.sessions_started += 1
        if self.on_call is not None:
            try:
                self.on_call(call)
            except Exception:  # noqa: BLE001
                logger.exception("sip: on_call callback failed")
        task = self._loop.create_task(self._run_session(call), name=f"sip-session-{call.session_id}")
        self._tasks[call.session_id] = task
        self._loop.call_later(self.settings.max_call_duration_s, call.hangup)

    async def _run_session(self, call: SIPCall) -> None:
        try:
            fn = self._session_fn or self._default_session()
            await fn(call)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001
            logger.exception(f"sip: session for call {call.session_id} failed")
        finally:
            if not call.ended:
                call.hangup()
            self._tasks.pop(call.session_id, None)

    def _default_session(self) -> SessionFn:
        from .transport import echo_session, pipeline_session

        if self.runtime is not None and self.app_settings is not None:
            return lambda call: pipeline_session(call, self.runtime, self.app_settings)
        return echo_session

    def _on_call_ended(self, call: SIPCall) -> None:
        call._ended_evt.set()
        self.calls.pop(call.session_id, None)
        call.audio.clear()
        for fn in list(call._end_listeners):
            try:
                fn()
            except Exception:  # noqa: BLE001
                logger.exception("sip: end listener failed")
        call._end_listeners.clear()
        task = self._tasks.get(call.session_id)
        if task is not None and not task.done():
            self._loop.call_later(END_GRACE_S, lambda: task.done() or task.cancel())

    def _on_dtmf(self, call: SIPCall, digit: str) -> None:
        logger.info(f"sip: call {call.session_id} DTMF {digit!r}")
        for fn in list(call._dtmf_listeners):
            try:
                fn(digit)
            except Exception:  # noqa: BLE001
                logger.exception("sip: DTMF listener failed")
        if self.on_dtmf is not None:
            try:
                self.on_dtmf(call, digit)
            except Exception:  # noqa: BLE001
                logger.exception("sip: on_dtmf callback failed")
        if digit == self.settings.transfer_digit:
            if self.settings.transfer_uri:
                call.transfer(self.settings.transfer_uri)
            else:
                logger.info(f"sip: call {call.session_id} asked for a transfer (DTMF {digit}); "
                            "no sip.transfer_uri configured")


# PJSIP's messages about what a caller sent (malformed SIP or SDP, a request it cannot serve): the
# request is answered or dropped, nothing failed here, so they are warnings, not errors.
_CALLER_FAULTS = ("Error processing", "packet from", "SDP", "Error parsing", "verification failed",
                  "Missing required header", "Bad Request", "Unable to parse")


def _pjsip_log_level(level: int, msg: str) -> str:
    lvl = "ERROR" if level <= 1 else "WARNING" if level == 2 else "DEBUG"
    if "already in use" in msg and "RTP" in msg:
        return "DEBUG"  # PJSIP moves on to the next RTP port by itself
    if lvl == "ERROR" and any(k in msg for k in _CALLER_FAULTS):
        return "WARNING"
    return lvl


def _make_log_writer():
    import pjsua2 as pj

    class _LogWriter(pj.LogWriter):
        def write(self, entry) -> None:  # noqa: D401 - pjsua2 callback
            first, _, rest = entry.msg.rstrip().partition("\n")
            lvl = _pjsip_log_level(entry.level, first)
            if rest and lvl != "DEBUG":
                # One line (e.g. "Error processing packet from ...:"); the packet dump that follows
                # goes to DEBUG.
                logger.log(lvl, "pjsip: " + first.rstrip())
                logger.debug("pjsip: " + rest)
            else:
                logger.log(lvl, "pjsip: " + entry.msg.rstrip())

    return _LogWriter()


def _pj_limit_allow(drop: tuple[str, ...]) -> list[str] | None:
    """Remove ``drop`` from the endpoint's Allow capability; returns the methods left in it.

    pjsua2 has no call for this, so it goes through the C functions the wheel exports
    (``pjsua_get_pjsip_endpt``, ``pjsip_endpt_get_capability``) and edits the header in place
    (a ``pjsip_generic_array_hdr``). The layout is checked first (header type, the name "Allow",
    method tokens); on any mismatch nothing is changed and None is returned. Pjsip thread,
    before the first request.
    """
    import ctypes

    import pjsua2 as pj
    from pjsua2 import _pjsua2

    class PjStr(ctypes.Structure):
        _fields_ = [("ptr", ctypes.c_void_p), ("slen", ctypes.c_ssize_t)]

    class ArrayHdr(ctypes.Structure):  # pjsip_generic_array_hdr (PJSIP_GENERIC_ARRAY_MAX_COUNT = 32)
        _fields_ = [("prev", ctypes.c_void_p), ("next", ctypes.c_void_p), ("type", ctypes.c_int),
                    ("name", PjStr), ("sname", PjStr), ("vptr", ctypes.c_void_p), ("count", ctypes.c_uint),
                    ("values", PjStr * 32)]

    def text(s: PjStr) -> str | None:
        if not s.ptr or not 0 < s.slen < 64:
            return None
        return ctypes.string_at(s.ptr, s.slen).decode("ascii", "replace")

    try:
        lib = ctypes.CDLL(_pjsua2.__file__)
        lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        lib.pjsip_endpt_get_capability.restype = ctypes.c_void_p
        lib.pjsip_endpt_get_capability.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        addr = lib.pjsip_endpt_get_capability(lib.pjsua_get_pjsip_endpt(), pj.PJSIP_H_ALLOW, None)
        if not addr:
            return None
        hdr = ArrayHdr.from_address(addr)
        if hdr.type != pj.PJSIP_H_ALLOW or text(hdr.name) != "Allow" or not 0 < hdr.count <= 32:
            return None
        values = [(hdr.values[i].ptr, hdr.values[i].slen, text(hdr.values[i])) for i in range(hdr.count)]
        if any(m is None or not m.isalpha() or not m.isupper() for _, _, m in values):
            return None
        keep = [v for v in values if v[2] not in drop]
        for i, (ptr, slen, _) in enumerate(keep):
            hdr.values[i].ptr, hdr.values[i].slen = ptr, slen
        hdr.count = len(keep)
        return [m for _, _, m in keep]
    except (OSError, AttributeError, ValueError):
        return None


def _account_class():
    import pjsua2 as pj

    class Account(pj.Account):
        def __init__(self, agent: SIPAgent) -> None:
            super().__init__()
            self.agent = agent

        def onIncomingCall(self, prm) -> None:  # noqa: N802
            try:
                self.agent._pj_on_incoming(self, prm)
            except Exception:  # noqa: BLE001
                logger.exception("sip: incoming call handling failed")

        def onRegState(self, prm) -> None:  # noqa: N802
            try:
                info = self.getInfo()
                self.agent.registered = bool(info.regIsActive)
                self.agent.reg_status = int(prm.code)
                logger.info(f"sip: registration {prm.code} {prm.reason} (active={info.regIsActive}, "
                            f"expires={info.regExpiresSec})")
            except Exception:  # noqa: BLE001
                logger.exception("sip: onRegState failed")

        def onInstantMessage(self, prm) -> None:  # noqa: N802
            logger.debug(f"sip: MESSAGE from {prm.fromUri} ignored")

        def onIncomingSubscribe(self, prm) -> None:  # noqa: N802
            # No presence here: PJSIP would accept anyone's SUBSCRIBE and send them NOTIFYs.
            try:
                logger.info(f"sip: refusing SUBSCRIBE from {prm.fromUri} (405)")
                prm.code = 405
                prm.reason = "Method Not Allowed"
                if self.agent.allow:
                    h = pj.SipHeader()
                    h.hName = "Allow"
                    h.hValue = self.agent.allow
                    prm.txOption.headers.append(h)
            except Exception:  # noqa: BLE001
                logger.exception("sip: onIncomingSubscribe failed")

    return Account



_Account = Lazy(_account_class)
