"""More calls than one PJSIP process holds: the kamailio front in front of N SIP agent workers.

Real everything: kamailio (Debian package), worker processes running the real
pipeline on the real models, SIPp callers each asking a spoken question as PCMU,
the wire recorded on ``lo`` (AF_PACKET, needs CAP_NET_RAW). Assertions are about
outcomes (answers, who hung up, audio on the wire, which record belongs to which
call), never timings. The callers and the wire reading are bench/sip_load.py's,
so the benchmark measures exactly what this test checks.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.sip]

from bench.sip_load import Sniffer, health, make_questions, place_calls, read_wire  # noqa: E402
from voice.transports.sip import SIPSettings  # noqa: E402
from voice.transports.sip.errors import SIPError  # noqa: E402
from voice.transports.sip.front import (  # noqa: E402
    SIPFront,
    check_config,
    free_port,
    render_config,
    sip_options_ok,
)

ROOT = Path(__file__).resolve().parents[1]
KAMAILIO = shutil.which("kamailio") or shutil.which("kamailio", path="/usr/sbin")
needs_front = pytest.mark.skipif(
    KAMAILIO is None or shutil.which("sipp") is None,
    reason="kamailio and sipp (Debian packages kamailio, sip-tester) are needed; make test installs them")


def _sniffer() -> Sniffer:
    try:
        return Sniffer()
    except (PermissionError, OSError) as e:
        pytest.skip(f"recording the wire on lo needs CAP_NET_RAW: {e}")


def _store_sessions(data_dir: Path) -> dict[str, dict]:
    from voice.store import Store, store_url
    from voice.settings import StoreSettings

    store = Store(store_url(StoreSettings(), data_dir))
    try:
        return {r["id"]: r for r in store.list_sessions(500)}
    finally:
        store.close()


# ----------------------------------------------------------------------------- cheap checks

def test_workers_need_a_fixed_front_port():
    assert SIPSettings(workers=3, port=5080).workers == 3
    with pytest.raises(ValueError, match="fixed sip.port"):
        SIPSettings(workers=2, port=0)
    with pytest.raises(ValueError):
        SIPSettings(workers=0)


@pytest.mark.skipif(KAMAILIO is None, reason="kamailio not installed")
def test_rendered_config_is_accepted_by_kamailio(tmp_path):
    """The checked-in template, filled in for UDP+TCP and for UDP only, passes `kamailio -c`."""
    for transports in (["udp", "tcp"], ["udp"]):
        sip = SIPSettings(workers=3, port=free_port(), transports=transports)
        d = tmp_path / "-".join(transports)
        d.mkdir()
        cfg = render_config(sip, [free_port(), free_port(), free_port()], free_port(), d)
        check_config(KAMAILIO, cfg)
        text = cfg.read_text()
        assert "@@" not in text.replace("@@@", "")
        assert ("disable_tcp=yes" in text) == (transports == ["udp"])
        ds = (d / "dispatcher.list").read_text().splitlines()[1:]
        assert len(ds) == 3 and all("maxload=4" in line for line in ds)


def test_missing_kamailio_is_one_line_error(tmp_path):
    """`voice serve --sip --sip-workers 2` without kamailio: one line, exit 2, before any model loads."""
    env = dict(os.environ, VOICE_SIP__KAMAILIO=str(tmp_path / "no-such-kamailio"), VOICE_DATA_DIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "voice.cli", "serve", "--sip", "--sip-workers", "2",
                           "--port", str(free_port())], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("voice: error: sip.workers = 2 needs kamailio"), proc.stderr
    assert "apt-get install kamailio" in lines[0]


# ----------------------------------------------------------------------------- the real thing

@needs_front
@pytest.mark.slow
async def test_ten_concurrent_calls_through_the_front(tmp_path):
    """kamailio + 3 workers (4 call slots each) answer 10 simultaneous SIPp calls and hold every
    one until SIPp hangs up; each call's agent RTP carries the agent's voice; every worker's
    calls, sessions and records map one to one onto SIPp's Call-IDs (nothing mixed up)."""
    from voice.settings import load_settings

    sniffer = _sniffer()
    data_dir = tmp_path / "data"
    port = free_port()
    settings = load_settings(data_dir=str(data_dir), sip={"workers": 3, "port": port})
    questions = make_questions(10, tmp_path)
    front = SIPFront(settings)
    await front.start()
    try:
        status = front.status()
        assert status["healthy"] and status["workers_ready"] == 3 and status["capacity"] == 12, status
        sniffer.start()
        plans = await place_calls("127.0.0.1", port, questions, hold_s=20.0, work=tmp_path)
        await asyncio.sleep(1.0)  # the last end events and records
        after = front.status()
        calls = front.calls()
    finally:
        if sniffer.is_alive():
            sniffer.stop()
        await front.stop()

    # SIPp: every scenario ran to the end (INVITE -> 200 -> ACK, question, pause, BYE -> 200);
    # an agent BYE, a 4xx/5xx or a lost dialog would have failed its call.
    failed = {p.q.idx: p.log for p in plans if p.rc != 0}
    assert not failed, json.dumps(failed, indent=1)[:6000]

    results, audio = read_wire(sniffer.packets, plans)
    for r in results:
        assert r.invite_status == 200, r
        assert not r.agent_bye, f"call {r.idx}: the agent side sent BYE"
        assert r.held, r
        # the agent's RTP ran for the whole call and carried its voice
        expected_s = questions[r.idx].seconds + 20.0
        assert r.agent_rtp_s > 0.8 * expected_s, (r.idx, r.agent_rtp_s, expected_s)
        assert r.agent_voiced_s > 0.2, f"call {r.idx}: the agent's RTP is silent ({r})"
    rtp_ports = [r.agent_rtp_port for r in results]
    assert len(set(rtp_ports)) == 10, f"two calls share a media stream: {rtp_ports}"

    # the workers' view: 10 calls, each SIPp Call-ID exactly once, all ended by the caller
    assert after["live_calls"] == 0 and sum(w["calls_total"] for w in after["workers"]) == 10, after
    assert all(w["restarts"] == 0 and w["calls_lost"] == 0 for w in after["workers"]), after
    assert all(w["calls_total"] <= 4 for w in after["workers"]), after  # the front respected maxload
    assert sum(1 for w in after["workers"] if w["calls_total"]) >= 2, after  # and spread the calls
    by_call_id = {p.call_id: p for p in plans}
    assert sorted(c["call_id"] for c in calls) == sorted(by_call_id), calls
    assert len({c["sid"] for c in calls}) == 10
    assert all(c.get("by") == "caller" and c.get("status") == 200 for c in calls), calls
    # each worker saw the call coming from the front's own socket, on behalf of the caller (SIPp on 127.0.0.1)
    assert all(c["source"] == f"127.0.0.1 via 127.0.0.1:{front.internal_port}" for c in calls), calls
    for w in {c["worker"] for c in calls}:
        mine = [c for c in calls if c["worker"] == w]
        assert len({c["sid"] for c in mine}) == len({c["call_id"] for c in mine}) == len(mine)

    # the records: one per call, written by the worker that took it, naming that call's caller
    sessions = _store_sessions(data_dir)
    for c in calls:
        rec = sessions.get(c["sid"])
        assert rec is not None, f"no record for session {c['sid']} (call {c['call_id']})"
        idx = by_call_id[c["call_id"]].q.idx
        assert rec["transport"] == "sip" and rec["status"] == "ended", rec
        assert re.match(rf"sips?:call{idx}@", rec["caller"] or ""), (c, rec)
        assert c["remote"].startswith(f"sip:call{idx}@"), c
    assert len([r for r in sessions.values() if r["transport"] == "sip"]) == 10


def _wait(pred, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"voice serve exited ({proc.returncode}) while waiting for {what}")
        value = pred()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@needs_front
@pytest.mark.slow
async def test_voice_serve_with_workers_restarts_a_dead_worker_and_stops_cleanly(tmp_path):
    """`voice serve --sip --sip-workers 2`: /health shows the front and both workers; a worker killed
    with SIGKILL is reported and restarted; a call still gets answered; SIGTERM stops everything."""
    sip_port, http_port = free_port(), free_port()
    env = dict(os.environ, VOICE_SIP__PORT=str(sip_port), VOICE_DATA_DIR=str(tmp_path / "data"))
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "voice.cli", "serve", "--sip", "--sip-workers", "2",
                             "--port", str(http_port)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{http_port}"
    pids: list[int] = []
    try:
        h = await asyncio.to_thread(_wait, lambda: (health(url) or {}).get("sip", {}).get("healthy") and health(url),
                                    240, "a healthy front", proc)
        sip = h["sip"]
        assert sip["workers_total"] == 2 and sip["front"]["state"] == "running", sip
        pids = [w["pid"] for w in sip["workers"]] + [sip["front"]["pid"]]
        victim = sip["workers"][0]
        os.kill(victim["pid"], signal.SIGKILL)
        down = await asyncio.to_thread(_wait, lambda: (h := health(url)) and not h["sip"]["healthy"] and h, 20,
                                       "the dead worker in /health", proc)
        assert down["sip"]["workers"][0]["state"] in ("dead", "starting"), down
        back = await asyncio.to_thread(
            _wait, lambda: (h := health(url)) and h["sip"]["healthy"] and h["sip"]["workers"][0]["restarts"] == 1
            and h, 120, "the worker's restart", proc)
        assert back["sip"]["workers"][0]["pid"] != victim["pid"]
        pids.append(back["sip"]["workers"][0]["pid"])
        assert await asyncio.to_thread(sip_options_ok, "127.0.0.1", sip_port)
        questions = make_questions(1, tmp_path)
        (plan,) = await place_calls("127.0.0.1", sip_port, questions, hold_s=3.0, work=tmp_path)
        assert plan.rc == 0, plan.log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "killed"
        log.close()
    out = (tmp_path / "serve.log").read_text(errors="replace")
    assert code == 0, out[-4000:]
    assert "worker 1" in out and "exited with code -9" in out, out[-4000:]
    for pid in pids:  # workers and kamailio are gone with the service
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), pid


async def test_front_start_failure_is_reported_and_cleans_up(tmp_path):
    """A worker that cannot start (its port taken) fails start() with one line; nothing is left running."""
    if KAMAILIO is None:
        pytest.skip("kamailio not installed")
    import socket

    from voice.settings import load_settings

    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    taken = blocker.getsockname()[1]
    try:
        settings = load_settings(data_dir=str(tmp_path / "data"), store={"enabled": False},
                                 sip={"workers": 2, "port": free_port(), "worker_port_base": taken})
        front = SIPFront(settings, run_dir=tmp_path / "run")
        with pytest.raises(SIPError, match="worker 1 exited while starting"):
            await front.start()
        assert front.kamailio is None
        assert all(w.proc is None or w.proc.returncode is not None for w in front.workers)
    finally:
        blocker.close()


@needs_front
async def test_registration_goes_out_through_the_front(tmp_path):
    """With a registrar configured, worker 1 (only) registers through the front with the front's address
    as its Contact, so the PBX sends calls to the front; the digest and the refresh go through too."""
    from voice.settings import load_settings

    reg_port = free_port()
    text = (ROOT / "tests" / "sip" / "uas_registrar.xml").read_text()
    for k, v in {"USER": "alice", "PASSWORD": "pbxpass", "EXPIRES": 8}.items():
        text = text.replace(f"@@{k}@@", str(v))
    scen = tmp_path / "registrar.xml"
    scen.write_text(text)
    msg_log = tmp_path / "registrar_msg.log"
    registrar = await asyncio.create_subprocess_exec(
        shutil.which("sipp"), "-sf", str(scen), "-i", "127.0.0.1", "-p", str(reg_port), "-m", "1", "-nostdin",
        "-timeout", "40s", "-timeout_error", "-trace_msg", "-message_file", str(msg_log),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=str(tmp_path))
    await asyncio.sleep(0.5)
    port = free_port()
    settings = load_settings(data_dir=str(tmp_path / "data"), store={"enabled": False},
                             sip={"workers": 2, "port": port, "registrar_uri": f"sip:127.0.0.1:{reg_port}",
                                  "registrar_user": "alice", "registrar_password": "pbxpass",
                                  "register_refresh_s": 60})
    front = SIPFront(settings)
    await front.start()
    try:
        _, err = await asyncio.wait_for(registrar.communicate(), 60)
    finally:
        await front.stop()
    log = msg_log.read_text(errors="replace")
    assert registrar.returncode == 0, err.decode(errors="replace") + log[-3000:]
    registers = [m for m in re.split(r"-{10,}", log) if re.search(r"^REGISTER sip:", m, re.M)]
    assert len(registers) >= 3, log[-3000:]  # initial, with the digest, the refresh
    contacts = {m.group(1) for r in registers for m in [re.search(r"^Contact:\s*<([^>;]+)", r, re.M | re.I)] if m}
    assert contacts == {f"sip:alice@127.0.0.1:{port}"}, contacts  # the front, not a worker's port
    call_ids = {m.group(1).strip() for r in registers for m in [re.search(r"^Call-ID:(.*)$", r, re.M | re.I)] if m}
    assert len(call_ids) == 1, call_ids  # one registration: worker 1's
    internal = front.internal_port
    assert all(re.search(rf"^Via: SIP/2.0/UDP 127\.0\.0\.1:({port}|{internal})", r, re.M) for r in registers), \
        registers[0]  # the front relayed it (its Via on top)


async def test_worker_believes_the_callers_address_only_from_the_front():
    """A worker applies its allowlist to the caller the front names in X-Voice-Source, and only when
    the INVITE comes from the front's own socket: the same header from anywhere else is ignored."""
    pytest.importorskip("pjsua2")
    import socket
    import uuid

    from voice.transports.sip import SIPAgent
    from voice.transports.sip.config import FrontLink
    from voice.transports.sip.transport import echo_session

    def invite(sock: socket.socket, agent_port: int, source: str) -> bytes:
        host, port = sock.getsockname()
        body = (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
                "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")
        lines = [f"INVITE sip:agent@127.0.0.1:{agent_port} SIP/2.0",
                 f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
                 f"From: <sip:raw@{host}:{port}>;tag={uuid.uuid4().hex[:8]}", f"To: <sip:agent@127.0.0.1:{agent_port}>",
                 f"Call-ID: {uuid.uuid4().hex}", "CSeq: 1 INVITE", f"Contact: <sip:raw@{host}:{port}>",
                 "Max-Forwards: 70", f"X-Voice-Source: {source}", "Content-Type: application/sdp",
                 f"Content-Length: {len(body)}"]
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def final_status(sock: socket.socket, seconds: float = 4.0) -> int:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65535).decode(errors="replace")
            except (TimeoutError, socket.timeout):
                break
            m = re.match(r"SIP/2\.0 (\d{3})", data)
            if m and int(m.group(1)) >= 200:
                return int(m.group(1))
        return 0

    front_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front_sock.bind(("127.0.0.1", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    link = FrontLink(proxy_host="127.0.0.1", proxy_port=front_sock.getsockname()[1],
                     proxy_uri="sip:127.0.0.1:1;lr", contact_uri="sip:agent@127.0.0.1:1", media_host="127.0.0.1")
    agent = SIPAgent(SIPSettings(port=free_port(), allowlist=["10.0.0.0/8"], log_level=1),
                     lambda call: echo_session(call, beep=False), front=link)
    await agent.start()
    loop = asyncio.get_running_loop()
    try:
        other.sendto(invite(other, agent.bound_port, "10.1.2.3"), ("127.0.0.1", agent.bound_port))
        assert await loop.run_in_executor(None, final_status, other) == 403  # not the front: header ignored
        front_sock.sendto(invite(front_sock, agent.bound_port, "192.0.2.9"), ("127.0.0.1", agent.bound_port))
        assert await loop.run_in_executor(None, final_status, front_sock) == 403  # the front, a caller outside
        front_sock.sendto(invite(front_sock, agent.bound_port, "10.1.2.3"), ("127.0.0.1", agent.bound_port))
        assert await loop.run_in_executor(None, final_status, front_sock) == 200  # the front, an allowed caller
        await asyncio.sleep(0.1)
        (call,) = agent.history  # the accepted one (rejected INVITEs never enter it)
        assert call.source.startswith("10.1.2.3 via 127.0.0.1:")
    finally:
        await agent.stop()
        front_sock.close()
        other.close()
