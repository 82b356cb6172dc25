"""`make bench-sip`: K simultaneous phone calls through the SIP front (kamailio + N agent workers).

What runs: the real service, ``voice serve --sip --sip-workers N`` (a subprocess,
its own data directory), and K SIPp callers started at the same moment, one
SIPp per call, each with its own question (espeak-ng, a different voice per
call, sent as PCMU with ``rtp_stream``). Every call holds for ``--hold`` seconds
after its question and then hangs up (BYE). Nothing in the agent is mocked.

What is measured, on the wire (an ``AF_PACKET`` socket on ``lo``, which needs
CAP_NET_RAW, records every SIP and RTP packet):

  * answered: SIPp's INVITE got 200 OK through the front;
  * held: answered, no BYE from the agent side, and SIPp's own BYE at the end
    got 200 (the agent still had the call); dropped = answered but not held;
  * spoken answer: the agent's RTP for that call, from just before its first
    voiced packet to the end of the call, transcribed with the project's ASR
    (faster-whisper, as the agent itself uses), has >= 2 words;
  * voice-to-voice latency: from the caller's last voiced RTP packet to the
    agent's first voiced packet (20 ms packets above -45 dBFS), as a caller
    would hear it; median and p90 over the answered calls;
  * not mixed up: each call's session record (the service's store) names
    that call's caller, and the text the agent heard on it is closer to that
    call's question than to any other call's.

    python -m bench.sip_load [--calls 10] [--workers 3] [--hold 20] [--out out/bench-sip]

Writes ``OUT/sip_load_K{calls}.json`` (and each call's agent audio as WAV) and prints a table.
A benchmark, not a test: the figures depend on what else the machine does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voice.audio import rms_dbfs

ROOT = Path(__file__).resolve().parents[1]
VOICED_DBFS = -45.0
SIPP = shutil.which("sipp")

# One SIPp call through a record-routing proxy: ACK and BYE follow the route set
# ([routes], [next_url]); the question plays once, then silence for HOLD_MS.
SCENARIO = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="voice front call">
  <send retrans="500">
    <![CDATA[

      INVITE sip:agent@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "call@@IDX@@" <sip:call@@IDX@@@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:agent@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:call@@IDX@@@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Subject: voice bench
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [rtpstream_audio_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20
      a=sendrecv

    ]]>
  </send>

  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>

  <send>
    <![CDATA[

      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: "call@@IDX@@" <sip:call@@IDX@@@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:agent@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:call@@IDX@@@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <nop>
    <action>
      <exec rtp_stream="@@AUDIO@@,1,0"/>
    </action>
  </nop>

  <pause milliseconds="@@HOLD_MS@@"/>

  <send retrans="500">
    <![CDATA[

      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: "call@@IDX@@" <sip:call@@IDX@@@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:agent@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:call@@IDX@@@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>

  <recv response="200" crlf="true"/>
</scenario>
"""


# ------------------------------------------------------------------ helpers

def free_port(host: str = "127.0.0.1", taken: set[int] | None = None) -> int:
    from voice.transports.sip.front import free_port as _free

    return _free(host, taken)


def ulaw_decode(data: bytes) -> np.ndarray:
    u = (~np.frombuffer(data, dtype=np.uint8)).astype(np.int32)
    sign = u & 0x80
    exp = (u >> 4) & 0x07
    mant = u & 0x0F
    mag = (((mant << 3) + 0x84) << exp) - 0x84
    return np.where(sign != 0, -mag, mag).astype(np.int16)


def pcmu_payload(payload: bytes) -> np.ndarray | None:
    """float32 audio of a PCMU RTP packet (None for anything else)."""
    if len(payload) <= 12 or payload[0] >> 6 != 2 or payload[1] & 0x7F != 0:
        return None
    off = 12 + 4 * (payload[0] & 0x0F)
    if payload[0] & 0x10:
        off += 4 + 4 * struct.unpack("!H", payload[off + 2:off + 4])[0]
    return ulaw_decode(payload[off:]).astype(np.float32) / 32768.0


def words(text: str) -> list[str]:
    return [w.lower() for w in re.findall(r"[a-zA-Z']+", text or "")]


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


class Sniffer(threading.Thread):
    """Every UDP packet on ``lo`` (AF_PACKET; needs CAP_NET_RAW): (src port, dst port, payload, time)."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="sip-sniffer")
        # PermissionError without CAP_NET_RAW
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.packets: list[tuple[int, int, bytes, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                pkt, addr = self.sock.recvfrom(65535)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                break
            if addr[2] == socket.PACKET_OUTGOING or len(pkt) < 42 or pkt[12:14] != b"\x08\x00":
                continue
            ihl = (pkt[14] & 0x0F) * 4
            if pkt[23] != 17:
                continue
            sport, dport = struct.unpack("!HH", pkt[14 + ihl:18 + ihl])
            self.packets.append((sport, dport, pkt[14 + ihl + 8:], time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        self.join(2)
        self.sock.close()


def _sip_header(msg: str, name: str) -> str | None:
    for line in msg.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        k, sep, v = line.partition(":")
        if sep and k.strip().lower() == name.lower():
            return v.strip()
    return None


# ------------------------------------------------------------------ the callers

@dataclass
class Question:
    idx: int
    text: str
    voice: str
    ul: Path
    seconds: float


def make_questions(k: int, out_dir: Path) -> list[Question]:
    """K spoken questions (different texts and voices) as raw mu-law 8 kHz, SIPp's rtp_stream format."""
    from bench.latency import QUESTIONS, VOICES

    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise SystemExit("espeak-ng and sox are needed (make test / make bench-sip install them)")
    out = []
    for i in range(k):
        text = QUESTIONS[i % len(QUESTIONS)]
        voice = VOICES[i % len(VOICES)]
        raw = out_dir / f"q{i}.wav"
        ul = out_dir / f"q{i}.ul"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(raw), text], check=True, capture_output=True)
        # 0.3 s of silence before the question: the call is up and PJSIP listening when the words start
        subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-t", "ul", str(ul), "pad", "0.3", "0"],
                       check=True, capture_output=True)
        out.append(Question(i, text, voice, ul, ul.stat().st_size / 8000.0))
    return out


@dataclass
class CallPlan:
    q: Question
    call_id: str
    sip_port: int
    rtp_port: int
    rc: int | None = None
    log: str = ""


async def place_calls(host: str, port: int, questions: list[Question], hold_s: float, work: Path,
                      timeout_s: float | None = None, transport: str = "u1") -> list[CallPlan]:
    """One SIPp per question, all started at once; returns when every SIPp has finished.

    ``transport``: SIPp's ``-t`` (``u1`` UDP, ``t1`` TCP) between the callers and the front."""
    if SIPP is None:
        raise SystemExit("sipp (Debian sip-tester) is not installed")
    taken: set[int] = set()
    plans = []
    stamp = f"{os.getpid()}-{int(time.time())}"
    for q in questions:
        sp = free_port(taken=taken)
        taken.add(sp)
        rp = free_port(taken=taken | {p + d for p in taken for d in (1, 2, 3)})
        taken |= {rp, rp + 1, rp + 2, rp + 3}
        plans.append(CallPlan(q, f"voice-bench-{q.idx}-{stamp}-1@127.0.0.1", sp, rp))
    limit = timeout_s or (max(q.seconds for q in questions) + hold_s + 60)

    async def one(p: CallPlan) -> None:
        scen = work / f"call{p.q.idx}.xml"
        text = SCENARIO
        for k, v in {"IDX": p.q.idx, "AUDIO": p.q.ul,
                     "HOLD_MS": int((p.q.seconds + hold_s) * 1000)}.items():
            text = text.replace(f"@@{k}@@", str(v))
        scen.write_text(text)
        cmd = [SIPP, f"{host}:{port}", "-sf", str(scen), "-m", "1", "-l", "1", "-i", "127.0.0.1",
               "-mi", "127.0.0.1", "-p", str(p.sip_port), "-mp", str(p.rtp_port), "-t", transport, "-nostdin",
               "-cid_str", p.call_id.replace("-1@", "-%u@"),  # SIPp matches replies by its own Call-ID
               # A stray message is logged, not fatal: through the front (kamailio, several UDP
               # workers) a 180 sent just before the 200 can arrive after it, and a UAC ignores a
               # late provisional (RFC 3261 13.2.2.4). The call must still run to its end.
               "-default_behaviors", "all,-abortunexp",
               "-timeout", f"{int(limit)}s", "-timeout_error", "-trace_err",
               "-error_file", str(work / f"call{p.q.idx}_err.log"),
               "-trace_msg", "-message_file", str(work / f"call{p.q.idx}_msg.log")]
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE, cwd=str(work))
        try:
            _, err = await asyncio.wait_for(proc.communicate(), limit + 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            err = b"(killed: did not finish)"
        p.rc = proc.returncode
        tail = err.decode(errors="replace")[-1500:]
        ef = work / f"call{p.q.idx}_err.log"
        if ef.exists():
            tail += ef.read_text(errors="replace")[-1500:]
        p.log = tail

    await asyncio.gather(*(one(p) for p in plans))
    return plans


# ------------------------------------------------------------------ reading the wire

@dataclass
class CallResult:
    idx: int
    question: str
    call_id: str
    sipp_rc: int | None
    invite_status: int | None = None
    answered: bool = False
    agent_bye: bool = False
    caller_bye_ok: bool = False
    held: bool = False
    agent_rtp_port: int | None = None
    agent_rtp_s: float = 0.0
    agent_voiced_s: float = 0.0
    agent_speaks_at_s: float | None = None  # into the agent's RTP (its first voiced packet)
    v2v_s: float | None = None
    transcript: str = ""
    spoken_answer: bool = False
    record: dict = field(default_factory=dict)
    log: str = ""


def read_wire(packets: list, plans: list[CallPlan]) -> tuple[list[CallResult], dict[int, np.ndarray]]:
    """Per call: SIP outcome on the caller's leg, the agent's RTP, voice-to-voice on the wire."""
    results, audio = [], {}
    for p in plans:
        r = CallResult(p.q.idx, p.q.text, p.call_id, p.rc, log=p.log if p.rc else "")
        caller_rtp = None
        bye_at = None
        for sport, dport, payload, t in packets:
            if p.sip_port not in (sport, dport) or not payload[:12].strip():
                continue
            try:
                msg = payload.decode("utf-8", "replace")
            except Exception:  # noqa: BLE001
                continue
            if _sip_header(msg, "Call-ID") != p.call_id and _sip_header(msg, "i") != p.call_id:
                continue
            cseq = (_sip_header(msg, "CSeq") or "").split()
            method = cseq[1] if len(cseq) == 2 else ""
            if sport == p.sip_port and msg.startswith("INVITE "):
                m = re.search(r"m=audio (\d+)", msg)
                caller_rtp = int(m.group(1)) if m else caller_rtp
            elif dport == p.sip_port and msg.startswith("SIP/2.0 ") and method == "INVITE":
                code = int(msg[8:11])
                if code >= 200:
                    r.invite_status = code
                if code == 200:
                    r.answered = True
                    m = re.search(r"m=audio (\d+)", msg)
                    r.agent_rtp_port = int(m.group(1)) if m else r.agent_rtp_port
            elif dport == p.sip_port and msg.startswith("BYE "):
                r.agent_bye = True
            elif sport == p.sip_port and msg.startswith("BYE "):
                bye_at = bye_at or t
            elif dport == p.sip_port and msg.startswith("SIP/2.0 200") and method == "BYE":
                r.caller_bye_ok = True
        r.held = r.answered and not r.agent_bye and r.caller_bye_ok
        if r.agent_rtp_port and caller_rtp:
            agent_pk = [(t, a) for s, d, pl, t in packets if s == r.agent_rtp_port and d == caller_rtp
                        for a in [pcmu_payload(pl)] if a is not None]
            caller_pk = [(t, a) for s, d, pl, t in packets if s == caller_rtp and d == r.agent_rtp_port
                         for a in [pcmu_payload(pl)] if a is not None]
            if agent_pk:
                pcm = np.concatenate([a for _, a in agent_pk])
                audio[p.q.idx] = pcm
                r.agent_rtp_s = round(len(pcm) / 8000.0, 2)
                voiced_at = [i for i, (_, a) in enumerate(agent_pk) if rms_dbfs(a) > VOICED_DBFS]
                voiced = [agent_pk[i][0] for i in voiced_at]
                r.agent_voiced_s = round(len(voiced) * 0.02, 2)
                if voiced_at:
                    r.agent_speaks_at_s = round(sum(len(a) for _, a in agent_pk[:voiced_at[0]]) / 8000.0, 2)
                if voiced:
                    first = voiced[0]
                    last_caller = max((t for t, a in caller_pk if t < first and rms_dbfs(a) > VOICED_DBFS), default=None)
                    if last_caller is not None:
                        r.v2v_s = round(first - last_caller, 3)
        results.append(r)
    return results, audio


def check_records(results: list[CallResult], db_url: str, since: float) -> None:
    """Attach each call's session record (matched by its caller URI) and whether it heard its own question."""
    from voice.store import Store

    store = Store(db_url)
    try:
        rows = [r for r in store.list_sessions(500) if (r["started_at"] or 0) >= since - 5 and r["transport"] == "sip"]
        by_user: dict[str, list[dict]] = {}
        for row in rows:
            m = re.match(r"sips?:(call\d+)@", row.get("caller") or "")
            if m:
                by_user.setdefault(m.group(1), []).append(row)
        qwords = {r.idx: set(words(r.question)) - {"a", "the", "is", "of", "to", "what", "for", "do", "i", "in"}
                  for r in results}
        for r in results:
            recs = by_user.get(f"call{r.idx}", [])
            info: dict = {"sessions": len(recs)}
            if len(recs) == 1:
                full = store.get_session(recs[0]["id"]) or {}
                heard = " ".join(t.get("user_text") or "" for t in full.get("turns", []))
                info["agent_text"] = " ".join(t.get("agent_text") or "" for t in full.get("turns", [])).strip()
                hw = set(words(heard))
                own = len(hw & qwords[r.idx])
                best_other = max((len(hw & w) for i, w in qwords.items() if i != r.idx), default=0)
                info.update(session_id=recs[0]["id"], status=recs[0]["status"], turns=recs[0]["turns"], heard=heard,
                            heard_own_question=own > 0 and own > best_other)
            r.record = info
    finally:
        store.close()


def transcribe_all(results: list[CallResult], audio: dict[int, np.ndarray], out_dir: Path | None) -> None:
    from models.asr import load_transcriber
    from voice.audio import resample, write_wav
    from voice.settings import load_settings

    transcriber = load_transcriber(load_settings().asr)
    for r in results:
        a = audio.get(r.idx)
        if a is None or not len(a):
            continue
        if out_dir is not None:
            write_wav(out_dir / f"agent_call{r.idx}.wav", a, 8000)
        # from just before the agent first speaks: whisper tiny loses short replies after long silence
        start = max(0, int(((r.agent_speaks_at_s or 0.0) - 0.5) * 8000))
        text = transcriber.transcribe(resample(a[start:], 8000, 16000).astype(np.float32))
        text = text if isinstance(text, str) else getattr(text, "text", str(text))
        r.transcript = text.strip()
        r.spoken_answer = len(words(r.transcript)) >= 2


def summarize(results: list[CallResult], k: int) -> dict:
    v2v = [r.v2v_s for r in results if r.v2v_s is not None]
    answered = sum(r.answered for r in results)
    held = sum(r.held for r in results)
    return {
        "calls": k, "answered": answered, "held": held, "dropped": answered - held,
        "not_answered": k - answered,
        "spoken_answers": sum(r.spoken_answer for r in results),
        "records_matching": sum(1 for r in results if r.record.get("heard_own_question")),
        "records_one_per_call": sum(1 for r in results if r.record.get("sessions") == 1),
        "v2v_median_s": round(statistics.median(v2v), 3) if v2v else None,
        "v2v_p90_s": pct(v2v, 90), "v2v_max_s": round(max(v2v), 3) if v2v else None,
        "v2v_n": len(v2v),
    }


def print_table(results: list[CallResult], s: dict, extra: dict) -> None:
    print(f"\n{'call':>4} {'status':>6} {'held':>5} {'agent BYE':>9} {'RTP s':>6} {'voiced s':>8} {'v2v s':>6}  "
          f"{'record':<7} transcript of the agent")
    for r in results:
        rec = "ok" if r.record.get("heard_own_question") else ("1 rec" if r.record.get("sessions") == 1
                                                               else f"{r.record.get('sessions', '?')} rec")
        print(f"{r.idx:>4} {r.invite_status or '-':>6} {'yes' if r.held else 'NO':>5} "
              f"{'YES' if r.agent_bye else 'no':>9} {r.agent_rtp_s:>6.1f} {r.agent_voiced_s:>8.1f} "
              f"{'-' if r.v2v_s is None else f'{r.v2v_s:.2f}':>6}  {rec:<7} {r.transcript[:70]!r}")
    print(f"\n{s['calls']} calls through the front ({extra.get('workers')} workers): answered {s['answered']}, "
          f"held {s['held']}, dropped {s['dropped']}, not answered {s['not_answered']}; "
          f"spoken answers {s['spoken_answers']}/{s['calls']}; records that heard their own question "
          f"{s['records_matching']}/{s['calls']}")
    print(f"voice-to-voice on the wire over {s['v2v_n']} calls: median {s['v2v_median_s']} s, "
          f"p90 {s['v2v_p90_s']} s, max {s['v2v_max_s']} s")


# ------------------------------------------------------------------ the service

def health(url: str) -> dict | None:
    """The service's /health JSON, or None while it does not answer."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return json.loads(r.read())
    except Exception:  # noqa: BLE001
        return None


def start_service(workers: int, sip_port: int, http_port: int, data_dir: Path, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, VOICE_SIP__WORKERS=str(workers), VOICE_SIP__PORT=str(sip_port),
               VOICE_DATA_DIR=str(data_dir), NO_TORCH_COMPILE="1")
    voice = str(Path(sys.executable).with_name("voice"))
    cmd = [voice if os.path.exists(voice) else sys.executable, *([] if os.path.exists(voice) else ["-m", "voice.cli"]),
           "serve", "--sip", "--sip-workers", str(workers), "--port", str(http_port)]
    log = open(log_path, "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env,
                            start_new_session=True)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"voice serve exited with code {proc.returncode} while starting")
        h = health(url)
        if h and h.get("sip", {}).get("healthy"):
            return h
        time.sleep(0.5)
    raise RuntimeError(f"the service was not healthy in {timeout:.0f}s")


async def bench(calls: int, workers: int, hold_s: float, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="voice-bench-sip-"))
    sip_port, http_port = free_port(), free_port()
    log_path = out_dir / f"serve_K{calls}.log"
    print(f"bench-sip: {calls} calls, {workers} workers, hold {hold_s:.0f}s; service log {log_path}", flush=True)
    questions = make_questions(calls, work)
    sniffer = Sniffer()
    t_start = time.monotonic()
    proc = start_service(workers, sip_port, http_port, work / "data", log_path)
    url = f"http://127.0.0.1:{http_port}"
    extra: dict = {"workers": workers, "hold_s": hold_s, "sip_port": sip_port}
    try:
        health = await asyncio.to_thread(wait_healthy, url, proc, 300)
        extra["startup_s"] = round(time.monotonic() - t_start, 1)
        print(f"service up in {extra['startup_s']}s: {health['sip']['workers_ready']} workers ready, "
              f"capacity {health['sip']['capacity']} calls", flush=True)
        sniffer.start()
        since = time.time()
        t0 = time.monotonic()
        plans = await place_calls("127.0.0.1", sip_port, questions, hold_s, work)
        extra["calls_wall_s"] = round(time.monotonic() - t0, 1)
        await asyncio.sleep(0.5)
        extra["health_after"] = health(url)
    finally:
        if sniffer.is_alive():
            sniffer.stop()
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            extra["serve_exit"] = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            extra["serve_exit"] = "killed after 60 s"
        extra["stop_s"] = round(time.monotonic() - t_stop, 1)
    results, audio = read_wire(sniffer.packets, plans)
    from voice.store import store_url
    from voice.settings import StoreSettings

    check_records(results, store_url(StoreSettings(), work / "data"), since)
    transcribe_all(results, audio, out_dir)
    s = summarize(results, calls)
    print_table(results, s, extra)
    print(f"service: startup {extra.get('startup_s')} s, SIGTERM -> exit {extra['serve_exit']} in {extra['stop_s']} s",
          flush=True)
    report = {"summary": s, "run": extra, "machine": {"cpus": os.cpu_count(), "loadavg_after": os.getloadavg()},
              "calls": [r.__dict__ for r in results]}
    path = out_dir / f"sip_load_K{calls}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.sip_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=10, help="simultaneous calls (default 10)")
    p.add_argument("--workers", type=int, default=0, help="SIP worker processes (default: calls / 4, rounded up)")
    p.add_argument("--hold", type=float, default=20.0, help="seconds each call stays up after its question")
    p.add_argument("--out", default="out/bench-sip")
    args = p.parse_args(argv)
    workers = args.workers or max(2, math.ceil(args.calls / 4))
    report = asyncio.run(bench(args.calls, workers, args.hold, Path(args.out)))
    s = report["summary"]
    return 0 if s["answered"] == s["calls"] and s["dropped"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
