"""One call, inbound or outbound: its dialog state, its media (the audio port on the conference
bridge) and its controls (hang up, transfer, DTMF), as :class:`SIPCall`; and the pjsua2 Call
subclass that feeds PJSIP's callbacks into it.

The owning agent (agent.py) is reached through ``call.agent`` at run time; this module does
not import it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from loguru import logger

from .audio_port import AudioBridge
from .sipmsg import answer_dtmf_events, clean_uri


class SIPCall:
    """One call, inbound or outbound, as seen from asyncio.

    Audio goes through :attr:`audio` (an :class:`AudioBridge`: 8 kHz int16
    mono). Control methods (:meth:`hangup`, :meth:`transfer`,
    :meth:`send_dtmf`) are thread-safe and return immediately.
    """

    def __init__(self, agent: Any, direction: str) -> None:
        self.agent = agent  # the SIPAgent (agent.py) that owns this call
        self.direction = direction  # "inbound" | "outbound"
        self.session_id = uuid.uuid4().hex[:12]
        self.audio = AudioBridge()
        self.pj_id: int | None = None
        self.remote_uri = ""
        self.local_uri = ""
        self.source = ""  # ip:port the INVITE came from (inbound); behind the front: "CALLER_IP via FRONT"
        self.call_id = ""  # the SIP Call-ID (a proxy in front keeps it: the caller's own)
        self.local_hangup = False  # we ended it (hangup(), stop(), max duration), not the caller
        self.state = "new"  # new, ringing, connected, ended
        self.codec: str | None = None
        self.on_hold = False
        self.last_status: int | None = None
        self.last_reason = ""
        self.created_at = time.monotonic()
        self.connected_at: float | None = None
        self.ended_at: float | None = None
        self.dtmf_digits: list[str] = []
        self.transfers: list[str] = []
        self._dtmf_listeners: list[Callable[[str], Any]] = []
        self._end_listeners: list[Callable[[], Any]] = []
        self._connected_evt = asyncio.Event()
        self._ended_evt = asyncio.Event()
        # pjsip-thread-only state
        self._pj: Any = None
        self._port: Any = None
        self._accepted = False
        self._slot: str | None = None  # key in the service's session registry

    # ---- public, asyncio side ----
    @property
    def caller(self) -> str:
        return self.remote_uri if self.direction == "inbound" else self.local_uri

    @property
    def callee(self) -> str:
        return self.local_uri if self.direction == "inbound" else self.remote_uri

    @property
    def ended(self) -> bool:
        return self.state == "ended"

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """True once the call is answered; False if it ended (or timed out) first."""
        t_conn = asyncio.ensure_future(self._connected_evt.wait())
        t_end = asyncio.ensure_future(self._ended_evt.wait())
        try:
            await asyncio.wait({t_conn, t_end}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            t_conn.cancel()
            t_end.cancel()
        return self._connected_evt.is_set() and not self._ended_evt.is_set()

    async def wait_ended(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._ended_evt.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def add_dtmf_listener(self, fn: Callable[[str], Any]) -> None:
        """``fn(digit)`` runs on the asyncio loop for every DTMF digit received."""
        self._dtmf_listeners.append(fn)

    def remove_dtmf_listener(self, fn: Callable[[str], Any]) -> None:
        if fn in self._dtmf_listeners:
            self._dtmf_listeners.remove(fn)

    def add_end_listener(self, fn: Callable[[], Any]) -> None:
        """``fn()`` runs on the asyncio loop once the call has ended (at once if it already has)."""
        if self.ended:
            self.agent._loop.call_soon(fn)
        else:
            self._end_listeners.append(fn)

    def remove_end_listener(self, fn: Callable[[], Any]) -> None:
        if fn in self._end_listeners:
            self._end_listeners.remove(fn)

    def hangup(self, status_code: int | None = None) -> None:
        """BYE a connected call, CANCEL an outgoing one, reject an unanswered incoming one."""
        if not self.ended:
            self.local_hangup = True
            self.agent._post(self._pj_hangup, status_code)

    def transfer(self, uri: str) -> None:
        """Blind transfer (REFER) to ``uri``."""
        if not self.ended:
            self.agent._post(self._pj_transfer, uri)

    def send_dtmf(self, digits: str) -> None:
        """Send RFC 4733 DTMF events."""
        if not self.ended:
            self.agent._post(self._pj_send_dtmf, digits)

    def stats(self) -> dict[str, Any]:
        a = self.audio
        return {
            "session_id": self.session_id, "direction": self.direction, "state": self.state,
            "remote_uri": self.remote_uri, "call_id": self.call_id, "codec": self.codec,
            "last_status": self.last_status,
            "frames_pulled": a.frames_pulled, "frames_sent_audio": a.frames_sent_audio,
            "underruns": a.underruns, "frames_received": a.frames_received,
            "dtmf": "".join(self.dtmf_digits),
        }

    def __repr__(self) -> str:
        return f"SIPCall({self.direction} {self.remote_uri or '?'} {self.state})"

    # ---- pjsip thread ----
    def _pj_hangup(self, status_code: int | None) -> None:
        import pjsua2 as pj

        if self._pj is None or self.ended:
            return
        op = pj.CallOpParam()
        if status_code:
            op.statusCode = status_code
        try:
            self._pj.hangup(op)
        except pj.Error as e:
            logger.debug(f"sip: hangup {self}: {e.info()}")

    def _pj_transfer(self, uri: str) -> None:
        import pjsua2 as pj

        if self._pj is None or self.ended:
            return
        try:
            self._pj.xfer(uri, pj.CallOpParam(True))
            self.transfers.append(uri)
            logger.info(f"sip: call {self.session_id} transferring to {uri}")
        except pj.Error as e:
            logger.warning(f"sip: transfer of {self.session_id} to {uri} failed: {e.info()}")

    def _pj_send_dtmf(self, digits: str) -> None:
        import pjsua2 as pj

        if self._pj is None or not self.connected:
            return
        try:
            self._pj.dialDtmf(digits)
        except pj.Error as e:
            logger.debug(f"sip: dtmf {digits!r} on {self.session_id}: {e.info()}")

    def _pj_on_state(self) -> None:
        import pjsua2 as pj

        if self._pj is None:
            return
        ci = self._pj.getInfo()
        self.pj_id = ci.id
        self.remote_uri = clean_uri(ci.remoteUri) or self.remote_uri
        self.local_uri = clean_uri(ci.localUri) or self.local_uri
        self.last_status = int(ci.lastStatusCode)
        self.last_reason = ci.lastReason
        if ci.state == pj.PJSIP_INV_STATE_EARLY and self.state == "new":
            self.state = "ringing"
        elif ci.state == pj.PJSIP_INV_STATE_CONFIRMED and self.state in ("new", "ringing"):
            self.state = "connected"
            self.connected_at = time.monotonic()
            logger.info(f"sip: call {self.session_id} connected ({self.direction} {self.remote_uri})")
            self.agent._to_loop(self.agent._on_call_connected, self)
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED and self.state != "ended":
            self.state = "ended"
            self.ended_at = time.monotonic()
            logger.log("INFO" if self._accepted else "DEBUG",
                       f"sip: call {self.session_id} ended ({self.last_status} {self.last_reason})")
            self._pj_disconnect_port()
            # Drop the pjsua2 Call right here (it is destroyed as soon as this callback returns,
            # which pjsua2 allows for DISCONNECTED). Released any later, its destructor would hang
            # up whichever new call PJSIP has meanwhile put in the same call slot (seen: a 603).
            self.agent._pj_live.discard(self)
            self._pj = None
            self.agent._release(self)
            self.agent._to_loop(self.agent._on_call_ended, self)

    def _pj_on_media(self) -> None:
        import pjsua2 as pj

        if self._pj is None or self.ended:
            return
        ci = self._pj.getInfo()
        media = ci.media
        for i in range(len(media)):
            mi = media[i]
            if mi.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            self.on_hold = mi.status in (pj.PJSUA_CALL_MEDIA_REMOTE_HOLD, pj.PJSUA_CALL_MEDIA_LOCAL_HOLD)
            if mi.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                try:
                    self.codec = self._pj.getStreamInfo(i).codecName
                except pj.Error:
                    pass
                if self._port is None:
                    self._port = self.agent._port_class(self.audio)
                    self._port.create(f"call-{self.session_id}")
                aud = self._pj.getAudioMedia(i)
                aud.startTransmit(self._port)
                self._port.startTransmit(aud)
                logger.debug(f"sip: call {self.session_id} media {mi.status} codec {self.codec}")
            break

    def _pj_disconnect_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            # Released on the pjsip thread a second later: the conference bridge's media
            # thread can still be in this port's callbacks right after the disconnect, and
            # freeing it then crashed the process (seen once in a full test run).
            self.agent._graveyard.append((time.monotonic() + 1.0, port))

    def _pj_on_dtmf(self, digit: str) -> None:
        # media thread: record and hand off; pjsua2 work goes through the queue
        self.dtmf_digits.append(digit)
        self.agent._to_loop(self.agent._on_dtmf, self, digit)



def _call_class():
    import pjsua2 as pj

    class Call(pj.Call):
        def __init__(self, acc, call_id, owner: SIPCall) -> None:
            super().__init__(acc, call_id)
            self.owner = owner

        def onCallState(self, prm) -> None:  # noqa: N802
            try:
                self.owner._pj_on_state()
            except Exception:  # noqa: BLE001
                logger.exception("sip: onCallState failed")

        def onCallMediaState(self, prm) -> None:  # noqa: N802
            try:
                self.owner._pj_on_media()
            except Exception:  # noqa: BLE001
                logger.exception("sip: onCallMediaState failed")

        def onDtmfDigit(self, prm) -> None:  # noqa: N802
            try:
                self.owner._pj_on_dtmf(prm.digit)
            except Exception:  # noqa: BLE001
                logger.exception("sip: onDtmfDigit failed")

        def onCallSdpCreated(self, prm) -> None:  # noqa: N802
            # An answer (to the INVITE or a re-INVITE) lists only the DTMF events that were offered.
            try:
                offer = prm.remSdp.wholeSdp
                if offer:
                    ours = prm.sdp.wholeSdp
                    fixed = answer_dtmf_events(ours, offer)
                    if fixed != ours:
                        prm.sdp.wholeSdp = fixed
            except Exception:  # noqa: BLE001
                logger.exception("sip: onCallSdpCreated failed")

        def onCallTransferRequest(self, prm) -> None:  # noqa: N802
            # Never let a caller make us dial elsewhere (toll fraud): refuse incoming REFERs.
            logger.info(f"sip: refusing REFER to {prm.dstUri} on {self.owner.session_id}")
            prm.statusCode = 603

        def onCallTransferStatus(self, prm) -> None:  # noqa: N802
            try:
                prm.cont = self.owner.agent._pj_on_transfer_status(self.owner, int(prm.statusCode),
                                                                   bool(prm.finalNotify))
            except Exception:  # noqa: BLE001
                logger.exception("sip: onCallTransferStatus failed")

    return Call



class Lazy:
    """Build the pjsua2 subclasses on first use so importing this module does not load PJSIP."""

    def __init__(self, factory: Callable[[], type]) -> None:
        self._factory = factory
        self._cls: type | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._cls is None:
            self._cls = self._factory()
        return self._cls(*args, **kwargs)



PJCall = Lazy(_call_class)
