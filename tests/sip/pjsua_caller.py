"""A pjsua2 caller in its own process: the strictest SIP peer for the tests.

Dials TARGET, optionally plays a WAV into the call, records what it hears,
sends RFC 4733 DTMF, puts the call on hold and takes it off again, accepts
REFER (blind transfer) and hangs up after --duration seconds unless the far
end hangs up first. Prints one JSON object per line (events), the last one
{"event": "done", ...}.

    python pjsua_caller.py sip:agent@127.0.0.1:5080 --dtmf 123 --dtmf-at 1.5 --duration 6
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pjsua2 as pj


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


class Call(pj.Call):
    def __init__(self, acc, call_id=pj.PJSUA_INVALID_ID):
        super().__init__(acc, call_id)
        self.state = "new"
        self.connected_at: float | None = None
        self.media_ready = False
        self.last_status = 0
        self.med_status: list[int] = []

    def onCallState(self, prm):  # noqa: N802
        ci = self.getInfo()
        self.last_status = int(ci.lastStatusCode)
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and self.connected_at is None:
            self.connected_at = time.monotonic()
            self.state = "connected"
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.state = "ended"
        emit(event="state", call=ci.id, state=ci.stateText, status=self.last_status)

    def onCallMediaState(self, prm):  # noqa: N802
        ci = self.getInfo()
        media = ci.media
        for i in range(len(media)):
            if media[i].type == pj.PJMEDIA_TYPE_AUDIO:
                self.med_status.append(int(media[i].status))
                emit(event="media", call=ci.id, status=int(media[i].status))
                if media[i].status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    self.media_ready = True

    def onCallTransferRequest(self, prm):  # noqa: N802
        emit(event="refer", uri=prm.dstUri)
        prm.statusCode = 202  # accept: pjsua places the new call itself

    def onCallReplaced(self, prm):  # noqa: N802
        emit(event="replaced")


class Account(pj.Account):
    def onIncomingCall(self, prm):  # noqa: N802
        c = pj.Call(self, prm.callId)
        op = pj.CallOpParam()
        op.statusCode = 486
        c.hangup(op)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--dtmf", default="")
    ap.add_argument("--dtmf-at", type=float, default=1.0)
    ap.add_argument("--hold-at", type=float, default=None)
    ap.add_argument("--unhold-at", type=float, default=None)
    ap.add_argument("--play", default=None, help="WAV file to play into the call")
    ap.add_argument("--record", default=None, help="WAV file to record what the caller hears")
    ap.add_argument("--timeout", type=float, default=20.0)
    a = ap.parse_args()

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = False
    cfg.logConfig.level = 1
    cfg.logConfig.consoleLevel = 1
    cfg.medConfig.clockRate = 8000
    cfg.medConfig.sndClockRate = 8000
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    tc = pj.TransportConfig()
    tc.boundAddress = "127.0.0.1"
    tc.port = 0
    tid = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tc)
    port = int(ep.transportGetInfo(tid).localName.rsplit(":", 1)[1])
    ep.libStart()
    ep.audDevManager().setNullDev()
    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:caller@127.0.0.1:{port}"
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acc = Account()
    acc.create(acfg, True)

    call = Call(acc)
    player = recorder = None
    call.makeCall(a.target, pj.CallOpParam(True))
    emit(event="dialing", target=a.target, port=port)
    t0 = time.monotonic()
    dtmf_sent = held = unheld = False
    hung = False
    while call.state != "ended" and time.monotonic() - t0 < a.timeout:
        ep.libHandleEvents(10)
        if call.connected_at is None or not call.media_ready:
            continue
        if player is None and recorder is None and (a.play or a.record):
            am = call.getAudioMedia(-1)
            if a.play:
                player = pj.AudioMediaPlayer()
                player.createPlayer(a.play, pj.PJMEDIA_FILE_NO_LOOP)
                player.startTransmit(am)
            if a.record:
                recorder = pj.AudioMediaRecorder()
                recorder.createRecorder(a.record)
                am.startTransmit(recorder)
            if not a.play:
                player = False
            if not a.record:
                recorder = False
        t = time.monotonic() - call.connected_at
        if a.dtmf and not dtmf_sent and t >= a.dtmf_at:
            call.dialDtmf(a.dtmf)
            dtmf_sent = True
            emit(event="dtmf_sent", digits=a.dtmf)
        if a.hold_at is not None and not held and t >= a.hold_at:
            call.setHold(pj.CallOpParam(True))
            held = True
            emit(event="hold")
        if a.unhold_at is not None and held and not unheld and t >= a.unhold_at:
            op = pj.CallOpParam(True)
            op.opt.flag = pj.PJSUA_CALL_UNHOLD
            call.reinvite(op)
            unheld = True
            emit(event="unhold")
        if not hung and t >= a.duration:
            hung = True
            call.hangup(pj.CallOpParam(True))
    end = time.monotonic() + 2
    while time.monotonic() < end and call.state != "ended":
        ep.libHandleEvents(10)
    emit(event="done", state=call.state, status=call.last_status, caller_hung_up=hung)
    sys.stdout.flush()
    ep.hangupAllCalls()
    for _ in range(50):
        ep.libHandleEvents(10)
    # Hang up everything (the transferred call too) before players, calls and the library go:
    # destroying them with calls still up crashed pjsua2 2.15 here.
    player = recorder = None
    del call
    acc.shutdown()
    ep.libDestroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
