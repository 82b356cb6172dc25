"""SIP phone agent against real peers on loopback: SIPp, baresip and a pjsua2 caller process.

Every test starts its own SIPAgent (PJSIP) on a free port and talks to it with
real SIP stacks; raw-UDP tests send hand-written (and deliberately broken)
SIP. Nothing under test is mocked. Assertions are about outcomes (responses,
call states, digits, audio content), never about timings.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.sip]

pj = pytest.importorskip("pjsua2")

from pipecat.frames.frames import InputAudioRawFrame, InputDTMFFrame  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402

from bench.sip_load import Sniffer, pcmu_payload  # noqa: E402
from voice.audio import read_wav, rms_dbfs  # noqa: E402
from voice.transports.sip import SIPAgent, SIPError, SIPSettings  # noqa: E402
from voice.transports.sip import place_call  # noqa: E402
from voice.transports.sip.front import free_port  # noqa: E402
from voice.transports.sip.transport import echo_session  # noqa: E402

HERE = Path(__file__).parent / "sip"
SIPP = shutil.which("sipp")
BARESIP = shutil.which("baresip")
ESPEAK = shutil.which("espeak-ng")
SOX = shutil.which("sox")

needs_sipp = pytest.mark.skipif(SIPP is None, reason="sipp (Debian sip-tester) not installed")
needs_baresip = pytest.mark.skipif(BARESIP is None, reason="baresip not installed")

QUESTION = "What is the capital of France?"


# ----------------------------------------------------------------------------- helpers

def fill(template: Path, out: Path, **values: object) -> Path:
    text = template.read_text()
    for k, v in values.items():
        text = text.replace(f"@@{k}@@", str(v))
    left = re.findall(r"@@[A-Z0-9_]+@@", text)
    assert not left, f"unfilled placeholders {left} in {template.name}"
    out.write_text(text)
    return out


@pytest.fixture(scope="module")
def question_audio(tmp_path_factory) -> dict[str, Path]:
    """A spoken question: 8 kHz WAV (baresip, pjsua2), raw mu-law .ul (SIPp rtp_stream)."""
    if ESPEAK is None or SOX is None:
        pytest.skip("espeak-ng and sox are needed to synthesise the caller's question")
    d = tmp_path_factory.mktemp("question")
    raw = d / "q_raw.wav"
    subprocess.run([ESPEAK, "-v", "en-us", "-s", "150", "-w", str(raw), QUESTION], check=True)
    wav8k = d / "q8k.wav"
    subprocess.run([SOX, str(raw), "-r", "8000", "-c", "1", "-b", "16", str(wav8k)], check=True)
    # The question followed by silence, so a peer that hangs up at end of file listens a while.
    padded = d / "q8k_padded.wav"
    subprocess.run([SOX, str(raw), "-r", "8000", "-c", "1", "-b", "16", str(padded), "pad", "0.3", "4"], check=True)
    padded16 = d / "q16k_padded.wav"  # baresip's aufile wants the codec's rate (G.722: 16 kHz)
    subprocess.run([SOX, str(raw), "-r", "16000", "-c", "1", "-b", "16", str(padded16), "pad", "0.3", "4"],
                   check=True)
    ul = d / "q.ul"
    subprocess.run([SOX, str(raw), "-r", "8000", "-c", "1", "-t", "ul", str(ul)], check=True)
    return {"wav8k": wav8k, "padded": padded, "padded16k": padded16, "ul": ul}


class Tap(FrameProcessor):
    """Records what the pipeline receives from the call: 16 kHz audio and DTMF frames."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.audio = bytearray()
        self.rates: set[int] = set()
        self.dtmf: list[str] = []

    async def process_frame(self, frame, direction: FrameDirection):
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self.audio += frame.audio
            self.rates.add(frame.sample_rate)
        elif isinstance(frame, InputDTMFFrame):
            self.dtmf.append(frame.button.value)
        await self.push_frame(frame, direction)

    def float_audio(self) -> np.ndarray:
        return np.frombuffer(bytes(self.audio), dtype=np.int16).astype(np.float32) / 32768.0


def tapped_echo(taps: dict[str, Tap], hangup_after: float | None = None, beep: bool = True):
    """A session: the built-in echo responder with a Tap; optionally the agent hangs up after N s."""
    async def session(call):
        tap = Tap()
        taps[call.session_id] = tap
        if hangup_after is not None:
            asyncio.get_running_loop().call_later(hangup_after, call.hangup)
        await echo_session(call, taps=[tap], beep=beep)
    return session


@pytest.fixture
async def make_agent():
    agents: list[SIPAgent] = []

    async def _make(session=None, **kw) -> SIPAgent:
        kw.setdefault("port", free_port())
        kw.setdefault("log_level", 1)
        agent = SIPAgent(SIPSettings(**kw), session)
        await agent.start()
        agents.append(agent)
        return agent

    yield _make
    for a in agents:
        await a.stop()


async def run_sipp(scenario: Path, agent_port: int | None, tmp: Path, *args: str, timeout: float = 40,
                   local_ip: str = "127.0.0.1") -> tuple[int, str]:
    """Run SIPp to completion; returns (exit code, its error/message log tail)."""
    name = scenario.stem
    cmd = [SIPP]
    if agent_port is not None:
        cmd.append(f"127.0.0.1:{agent_port}")
    cmd += ["-i", local_ip, "-mi", local_ip, "-p", str(free_port(local_ip)), "-mp", str(free_port(local_ip)),
            "-nostdin", "-timeout", f"{int(timeout)}s", "-timeout_error",
            "-trace_err", "-error_file", str(tmp / f"{name}_err.log"),
            "-trace_msg", "-message_file", str(tmp / f"{name}_msg.log")]
    if scenario.suffix == ".xml":
        cmd += ["-sf", str(scenario)]
    cmd += list(args)
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE, cwd=str(tmp))
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout + 15)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        err = b"(killed: did not finish)"
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    log = ""
    for f in (tmp / f"{name}_err.log", tmp / f"{name}_msg.log"):
        if f.exists():
            log += f"--- {f.name}\n" + f.read_text(errors="replace")[-4000:]
    return proc.returncode, err.decode(errors="replace")[-2000:] + log


class RawSIP:
    """A UDP socket that sends hand-written SIP and collects the responses."""

    def __init__(self, agent_port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()
        self.agent = ("127.0.0.1", agent_port)

    def close(self) -> None:
        self.sock.close()

    def message(self, method: str = "INVITE", *, call_id: str | None = None, body: str | None = None,
                content_length: int | None = None, content_type: str = "application/sdp",
                extra: str = "", cseq: int = 1) -> bytes:
        call_id = call_id or uuid.uuid4().hex
        if body is None:
            body = sdp(self.host, 40000) if method == "INVITE" else ""
        clen = len(body.encode()) if content_length is None else content_length
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        a = f"{self.agent[0]}:{self.agent[1]}"
        lines = [
            f"{method} sip:agent@{a} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.host}:{self.port};branch={branch};rport",
            f"From: <sip:raw@{self.host}:{self.port}>;tag={uuid.uuid4().hex[:8]}",
            f"To: <sip:agent@{a}>",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:raw@{self.host}:{self.port}>",
            "Max-Forwards: 70",
        ]
        if extra:
            lines.append(extra)
        if body or content_length is not None:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {clen}")
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.agent)

    def collect(self, seconds: float = 1.0, until_final: int = 0) -> list[str]:
        """Responses received within ``seconds`` (stop early after ``until_final`` final responses)."""
        out: list[str] = []
        deadline = time.monotonic() + seconds
        finals = 0
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _ = self.sock.recvfrom(65535)
            except (TimeoutError, socket.timeout):
                break
            text = data.decode(errors="replace")
            out.append(text)
            if until_final and status_of(text) >= 200:
                finals += 1
                if finals >= until_final:
                    break
        return out

    def ack_final(self, request: bytes, response: str) -> None:
        """ACK a non-2xx final response (same branch, To tag from the response)."""
        req = request.decode()
        via = re.search(r"^Via: [^\r\n]*", req, re.M).group(0)
        frm = re.search(r"^From: [^\r\n]*", req, re.M).group(0)
        cid = re.search(r"^Call-ID: [^\r\n]*", req, re.M).group(0)
        to = re.search(r"^To: [^\r\n]*", response, re.M | re.I).group(0)
        cseq = re.search(r"^CSeq: (\d+)", req, re.M).group(1)
        ruri = req.split(" ", 2)[1]
        self.send((f"ACK {ruri} SIP/2.0\r\n{via}\r\n{frm}\r\n{to}\r\n{cid}\r\nCSeq: {cseq} ACK\r\n"
                   "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode())


def in_dialog(raw: RawSIP, invite: bytes, ok: str, method: str, cseq: int) -> bytes:
    """ACK (for a 2xx) or BYE inside the dialog a 200 OK established."""
    req = invite.decode()
    frm = re.search(r"^From: [^\r\n]*", req, re.M).group(0)
    cid = re.search(r"^Call-ID: [^\r\n]*", req, re.M).group(0)
    to = re.search(r"^To: [^\r\n]*", ok, re.M | re.I).group(0)
    contact = re.search(r"^Contact: *<([^>]+)>", ok, re.M | re.I).group(1)
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    return (f"{method} {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {raw.host}:{raw.port};branch={branch};rport\r\n"
            f"{frm}\r\n{to}\r\n{cid}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def ulaw_encode(pcm: np.ndarray) -> bytes:
    x = np.clip(pcm.astype(np.int32), -32635, 32635)
    sign = np.where(x < 0, 0x80, 0)
    x = np.abs(x) + 0x84
    exp = np.floor(np.log2(x)).astype(np.int32) - 7
    exp = np.clip(exp, 0, 7)
    mant = (x >> (exp + 3)) & 0x0F
    return (~(sign | (exp << 4) | mant) & 0xFF).astype(np.uint8).tobytes()


def sdp(ip: str, port: int) -> str:
    return ("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            "m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n").format(ip=ip, port=port)


def status_of(response: str) -> int:
    m = re.match(r"SIP/2\.0 (\d{3})", response)
    return int(m.group(1)) if m else 0


def final_statuses(responses: list[str]) -> list[int]:
    return [s for s in (status_of(r) for r in responses) if s >= 200]


class RtpSniffer(Sniffer):
    """Records UDP on lo with an AF_PACKET socket (needs CAP_NET_RAW): the RTP the agent really sent.

    SIPp streams from its own RTP port and PJSIP latches onto the address it
    receives RTP from, so a plain socket advertised in SIPp's SDP would stop
    receiving; capturing on the wire sees the agent's packets wherever they go.
    The capture itself is the load benchmark's (bench/sip_load.py).
    """

    def __init__(self) -> None:
        try:
            super().__init__()
        except (PermissionError, OSError, AttributeError) as e:
            pytest.skip(f"recording RTP on lo needs CAP_NET_RAW: {e}")

    def _agent_rtp_ports(self, sip_port: int) -> set[int]:
        ports = set()
        for sport, _, payload, _ in self.packets:
            if sport == sip_port and payload.startswith(b"SIP/2.0 200"):
                m = re.search(rb"m=audio (\d+)", payload)
                if m:
                    ports.add(int(m.group(1)))
        assert ports, "no 200 OK with SDP from the agent on the wire"
        return ports

    def agent_audio(self, sip_port: int) -> np.ndarray:
        """The agent's PCMU RTP as float32 at 8 kHz (its RTP port read from its 200 OK)."""
        ports = self._agent_rtp_ports(sip_port)
        pcm = [a for a in (pcmu_payload(p) for s, _, p, _ in self.packets if s in ports) if a is not None]
        return np.concatenate(pcm) if pcm else np.zeros(0, np.float32)

    def reply_gap(self, sip_port: int, threshold_dbfs: float = -45.0) -> float | None:
        """Seconds on the wire from the caller's last voiced RTP packet (before the agent first
        speaks) to the agent's first voiced packet: the voice-to-voice latency a caller hears."""
        ports = self._agent_rtp_ports(sip_port)
        voiced = lambda a: a is not None and rms_dbfs(a) > threshold_dbfs  # noqa: E731
        agent_first = next((t for s, _, p, t in self.packets if s in ports and voiced(pcmu_payload(p))), None)
        if agent_first is None:
            return None
        caller_last = max((t for _, d, p, t in self.packets if d in ports and t < agent_first
                           and voiced(pcmu_payload(p))), default=None)
        return None if caller_last is None else agent_first - caller_last


def to16k(audio8k: np.ndarray) -> np.ndarray:
    from voice.audio import resample

    return resample(audio8k, 8000, 16000).astype(np.float32)


def words(text: str) -> list[str]:
    return re.findall(r"[a-zA-Z']+", text)


# ----------------------------------------------------------------------------- tests

def test_settings_defaults_and_validation():
    s = SIPSettings()
    assert (s.host, s.port, s.public_bind) == ("127.0.0.1", 5080, False)
    with pytest.raises(ValueError, match="public_bind"):
        SIPSettings(host="0.0.0.0")
    assert SIPSettings(host="0.0.0.0", public_bind=True).public_bind
    with pytest.raises(ValueError):
        SIPSettings(allowlist=["not-a-net"])
    with pytest.raises(ValueError):
        SIPSettings(transfer_uri="tel:123")
    with pytest.raises(ValueError):
        SIPSettings(auth_user="bob")  # password missing
    with pytest.raises(ValueError):
        SIPSettings(registrar_uri="sip:pbx.example.com")  # credentials missing


async def test_port_in_use_is_a_clean_error_and_the_agent_can_restart():
    port = free_port()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", port))
    try:
        with pytest.raises(SIPError, match=f"127.0.0.1:{port}"):
            await SIPAgent(SIPSettings(port=port, log_level=0)).start()
    finally:
        blocker.close()
    agent = await SIPAgent(SIPSettings(port=port, log_level=0)).start()  # PJSIP re-initialises cleanly
    try:
        with pytest.raises(SIPError, match="already running"):
            await SIPAgent(SIPSettings(port=free_port())).start()
        assert agent.bound_port == port
    finally:
        await agent.stop()


@needs_sipp
@pytest.mark.slow
async def test_sipp_question_gets_spoken_answer(tmp_path, question_audio, runtime, settings, transcriber):
    """SIPp calls and asks a question as PCMU RTP; the agent (the real voice session) answers with speech.

    The agent's RTP is recorded on the wire and transcribed (``transcriber``, ``runtime`` and
    ``settings`` come from tests/conftest.py).
    """
    sniffer = RtpSniffer()  # skips without CAP_NET_RAW, so before the agent starts
    port = free_port()
    agent = SIPAgent(SIPSettings(port=port, log_level=1), runtime=runtime, app_settings=settings)
    await agent.start()
    sniffer.start()
    try:
        scen = fill(HERE / "uac_speak.xml", tmp_path / "speak.xml", AUDIO=question_audio["ul"],
                    LOOPS=1, LISTEN_MS=16000)
        rc, log = await run_sipp(scen, port, tmp_path, "-m", "1", "-l", "1")
        assert rc == 0, log
        await asyncio.sleep(0.5)
    finally:
        sniffer.stop()
        calls = list(agent.history)
        await agent.stop()
    assert len(calls) == 1 and calls[0].codec == "PCMU"
    heard = sniffer.agent_audio(port)
    from voice.audio import write_wav

    write_wav(tmp_path / "agent_rtp.wav", heard, 8000)  # for a listen when this fails
    assert len(heard) > 8000 * 5, "the agent sent less than 5 s of RTP"
    assert rms_dbfs(heard) > -50, "the agent's RTP is silent"
    text = transcriber.transcribe(to16k(heard))
    gap = sniffer.reply_gap(port)
    print(f"agent said: {text!r}; voice-to-voice on the wire: {gap if gap is None else round(gap, 2)} s")
    assert len(words(text)) >= 2, f"no spoken answer in the agent's RTP (transcribed {text!r})"


@needs_sipp
async def test_sipp_audio_both_ways_with_echo_responder(tmp_path, make_agent, question_audio, transcriber):
    """The transport at the edges: what SIPp streams arrives at 16 kHz intact; the agent's audio goes back out."""
    taps: dict[str, Tap] = {}
    agent = await make_agent(tapped_echo(taps, beep=False))
    sniffer = RtpSniffer()
    sniffer.start()
    try:
        scen = fill(HERE / "uac_speak.xml", tmp_path / "speak.xml", AUDIO=question_audio["ul"],
                    LOOPS=1, LISTEN_MS=4000)
        rc, log = await run_sipp(scen, agent.bound_port, tmp_path, "-m", "1", "-l", "1")
        assert rc == 0, log
        await asyncio.sleep(0.3)
    finally:
        sniffer.stop()
    (tap,) = taps.values()
    assert tap.rates == {16000}
    heard_by_agent = tap.float_audio()
    text = transcriber.transcribe(heard_by_agent)
    assert {"capital"} <= {w.lower() for w in words(text)}, f"agent heard {text!r}"
    sent = sniffer.agent_audio(agent.bound_port)
    from voice.audio import write_wav

    write_wav(tmp_path / "agent_rtp.wav", sent, 8000)
    assert rms_dbfs(sent) > -40, "the agent's RTP is silent"
    back = transcriber.transcribe(to16k(sent))
    stats = [c.stats() for c in agent.history]
    assert "capital" in back.lower(), f"the echo came back as {back!r} ({stats})"


@needs_baresip
async def test_baresip_calls_plays_wav_and_hangs_up(tmp_path, make_agent, question_audio, transcriber):
    """baresip (G.722 preferred) dials the agent, plays a WAV, hangs up at its end; both directions carry audio."""
    taps: dict[str, Tap] = {}
    agent = await make_agent(tapped_echo(taps, beep=False))
    rtp_lo = 30000 + (os.getpid() % 500) * 20
    cfgdir = tmp_path / "baresip"
    (cfgdir / "rec").mkdir(parents=True)
    fill(HERE / "baresip.conf", cfgdir / "config", SIP_PORT=free_port(), DIR=cfgdir,
         WAV=question_audio["padded16k"], RTP_LO=rtp_lo, RTP_HI=rtp_lo + 19, CODEC1="g722.so", CODEC2="g711.so")
    (cfgdir / "accounts").write_text("<sip:baresip@127.0.0.1>;regint=0\n")
    (cfgdir / "contacts").write_text("")
    proc = await asyncio.create_subprocess_exec(
        BARESIP, "-f", str(cfgdir), "-e", f"/dial sip:agent@127.0.0.1:{agent.bound_port}", "-t", "12",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(cfgdir))
    out, _ = await asyncio.wait_for(proc.communicate(), 40)
    out = out.decode(errors="replace")
    await asyncio.sleep(0.3)
    calls = list(agent.history)
    assert len(calls) == 1, out[-3000:]
    call = calls[0]
    assert call.ended and call.last_status == 200, out[-3000:]
    assert call.codec == "G722", f"negotiated {call.codec}"
    assert "terminated" in out
    (tap,) = taps.values()
    heard = transcriber.transcribe(tap.float_audio())
    assert "capital" in heard.lower(), f"agent heard {heard!r}"
    dec = sorted((cfgdir / "rec").glob("*-dec.wav"))  # what baresip received from the agent
    assert dec, out[-3000:]
    back = read_wav(dec[0])
    assert rms_dbfs(back) > -40
    assert "capital" in transcriber.transcribe(back).lower()


async def test_jitter_loss_and_reordering_are_absorbed(make_agent, question_audio, transcriber):
    """A hand-rolled RTP sender with up to 60 ms of jitter, 5 % loss and reordering: PJSIP's jitter
    buffer smooths it, the audio port keeps the 20 ms clock (silence when nothing is there) and
    the pipeline still hears the question."""
    import random

    taps: dict[str, Tap] = {}
    agent = await make_agent(tapped_echo(taps, beep=False))
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    raw = RawSIP(agent.bound_port)
    loop = asyncio.get_running_loop()
    try:
        invite = raw.message("INVITE", body=sdp("127.0.0.1", rtp.getsockname()[1]))
        raw.send(invite)
        res = await loop.run_in_executor(None, raw.collect, 3.0, 1)
        ok = next(r for r in res if status_of(r) == 200)
        raw.send(in_dialog(raw, invite, ok, "ACK", 1))
        agent_rtp = int(re.search(r"m=audio (\d+)", ok).group(1))
        pcm = (read_wav(question_audio["padded"], 8000) * 32767).astype(np.int16)
        rng = random.Random(7)
        packets = []
        for i, off in enumerate(range(0, len(pcm) - 160, 160)):
            header = struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 0x1234ABCD)
            packets.append((i * 0.02 + rng.uniform(0, 0.06), header + ulaw_encode(pcm[off:off + 160])))
        packets = [p for p in packets if rng.random() > 0.05]  # 5 % loss
        packets.sort(key=lambda p: p[0])  # jitter larger than 20 ms also reorders
        t0 = time.monotonic()
        for due, pkt in packets:
            await asyncio.sleep(max(0.0, t0 + due - time.monotonic()))
            rtp.sendto(pkt, ("127.0.0.1", agent_rtp))
        (call,) = agent.calls.values()
        bye = in_dialog(raw, invite, ok, "BYE", 2)
        raw.send(bye)
        res = await loop.run_in_executor(None, raw.collect, 3.0, 1)
        assert any(status_of(r) == 200 and "BYE" in r for r in res), (bye, res, call.state)
    finally:
        raw.close()
        rtp.close()
    assert await call.wait_ended(5)
    elapsed = time.monotonic() - t0
    assert call.audio.frames_pulled >= 0.8 * elapsed * 50  # the 20 ms clock kept running
    (tap,) = taps.values()
    heard = transcriber.transcribe(tap.float_audio())
    assert "capital" in heard.lower(), f"agent heard {heard!r}"


@needs_sipp
async def test_cancel_before_answer(tmp_path, make_agent):
    started: list[str] = []

    async def session(call):
        started.append(call.session_id)

    agent = await make_agent(session, answer_delay_s=5.0)
    rc, log = await run_sipp(HERE / "uac_cancel.xml", agent.bound_port, tmp_path, "-m", "1")
    assert rc == 0, log
    await asyncio.sleep(0.3)
    (call,) = agent.history
    assert call.ended and call.last_status == 487
    assert call.connected_at is None and not started


@needs_sipp
@pytest.mark.parametrize("transport", ["u1", "t1"], ids=["udp", "tcp"])
async def test_agent_hangs_up_with_bye(tmp_path, make_agent, question_audio, transport):
    """The session ends (here: after 2 s) and the agent sends BYE; SIPp answers it with 200 (UDP and TCP)."""
    taps: dict[str, Tap] = {}
    agent = await make_agent(tapped_echo(taps, hangup_after=2.0))
    scen = fill(HERE / "uac_agent_bye.xml", tmp_path / "bye.xml", AUDIO=question_audio["ul"])
    rc, log = await run_sipp(scen, agent.bound_port, tmp_path, "-m", "1", "-t", transport)
    assert rc == 0, log
    (call,) = agent.history
    assert await call.wait_ended(5)
    assert call.last_status == 200
    (tap,) = taps.values()
    assert len(tap.audio) > 0


@needs_sipp
async def test_reinvite_hold_and_unhold(tmp_path, make_agent, question_audio):
    """SIPp puts the call on hold (a=sendonly) and takes it off; the agent answers recvonly/sendrecv
    and keeps receiving audio afterwards."""
    taps: dict[str, Tap] = {}
    holds: list[bool] = []
    agent = await make_agent(tapped_echo(taps))
    scen = fill(HERE / "uac_hold.xml", tmp_path / "hold.xml", AUDIO=question_audio["ul"])

    async def watch():
        while True:
            for c in agent.history:
                if not holds or holds[-1] != c.on_hold:
                    holds.append(c.on_hold)
            await asyncio.sleep(0.05)

    w = asyncio.create_task(watch())
    rc, log = await run_sipp(scen, agent.bound_port, tmp_path, "-m", "1")
    w.cancel()
    assert rc == 0, log  # the ereg checks inside the scenario fail the call if the SDP answers are wrong
    (call,) = agent.history
    assert call.ended and call.last_status == 200
    assert True in holds and holds[-1] is False, holds
    (tap,) = taps.values()
    assert len(tap.audio) / 2 / 16000 > 3.0  # audio kept arriving across hold and unhold


async def test_pjsua_caller_dtmf_transfer_and_hold(tmp_path, make_agent, question_audio):
    """A pjsua2 caller (separate process) sends RFC 4733 DTMF "12#0"; the digits reach the pipeline as
    InputDTMFFrames, "0" makes the agent REFER the caller to sip.transfer_uri, and a hold/unhold
    re-INVITE from pjsua2 is survived. The transfer target is a SIPp UAS."""
    if SIPP is None:
        pytest.skip("sipp not installed")
    uas_port = free_port()
    target = f"sip:desk@127.0.0.1:{uas_port}"
    uas = asyncio.create_task(run_sipp(Path("uas"), None, tmp_path, "-sn", "uas", "-p", str(uas_port), "-m", "1",
                                       timeout=30))
    taps: dict[str, Tap] = {}
    digits: list[str] = []
    agent = await make_agent(tapped_echo(taps), transfer_uri=target)
    agent.on_dtmf = lambda call, d: digits.append(d)
    await asyncio.sleep(0.5)  # let SIPp bind
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "pjsua_caller.py"), f"sip:agent@127.0.0.1:{agent.bound_port}",
        "--dtmf", "12#0", "--dtmf-at", "2.5", "--hold-at", "0.8", "--unhold-at", "1.6", "--duration", "10",
        "--play", str(question_audio["padded"]), "--timeout", "20",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 40)
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert proc.returncode == 0, err.decode()[-2000:]
    rc, log = await asyncio.wait_for(uas, 40)
    assert rc == 0, log  # the transfer target answered the transferred call and got its BYE
    (call,) = agent.history
    assert await call.wait_ended(5)
    assert digits == ["1", "2", "#", "0"], (digits, events)
    (tap,) = taps.values()
    assert tap.dtmf == ["1", "2", "#", "0"]
    assert call.transfers == [target]
    refers = [e for e in events if e["event"] == "refer"]
    assert refers and refers[0]["uri"].strip("<>") == target, events
    # hold (PJSUA_CALL_MEDIA_LOCAL_HOLD=2 on the caller's side) then active again
    med = [e["status"] for e in events if e["event"] == "media"]
    assert 2 in med and med[med.index(2):].count(1) >= 1, med


def _digest_response(user: str, realm: str, password: str, nonce: str, uri: str, method: str = "INVITE",
                     qop: str | None = "auth", nc: str = "00000001", cnonce: str = "abcdef") -> str:
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731, S324
    ha1, ha2 = md5(f"{user}:{realm}:{password}"), md5(f"{method}:{uri}")
    if qop:
        resp = md5(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
        return (f'Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                f'response="{resp}", algorithm=MD5, qop={qop}, nc={nc}, cnonce="{cnonce}"')
    resp = md5(f"{ha1}:{nonce}:{ha2}")
    return f'Authorization: Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", response="{resp}"'


@needs_sipp
async def test_inbound_digest_auth_and_allowlist(tmp_path, make_agent):
    """With an empty allowlist and inbound credentials: no credentials -> 401 challenge, wrong password
    -> 403, SIPp answering the challenge correctly gets the call."""
    agent = await make_agent(allowlist=[], auth_user="alice", auth_password="s3cret", auth_realm="agent.test")
    raw = RawSIP(agent.bound_port)
    try:
        inv = raw.message("INVITE")
        raw.send(inv)
        res = raw.collect(3, until_final=1)
        assert final_statuses(res) == [401], res
        challenge = next(r for r in res if status_of(r) == 401)
        raw.ack_final(inv, challenge)
        nonce = re.search(r'nonce="([^"]+)"', challenge).group(1)
        assert 'realm="agent.test"' in challenge
        uri = f"sip:agent@127.0.0.1:{agent.bound_port}"
        bad = raw.message("INVITE", extra=_digest_response("alice", "agent.test", "wrong", nonce, uri), cseq=2)
        raw.send(bad)
        res = raw.collect(3, until_final=1)
        assert final_statuses(res) == [403], res
        raw.ack_final(bad, next(r for r in res if status_of(r) == 403))
    finally:
        raw.close()
    assert not agent.calls
    scen = fill(HERE / "uac_auth.xml", tmp_path / "auth.xml", USER="alice", PASSWORD="s3cret")
    rc, log = await run_sipp(scen, agent.bound_port, tmp_path, "-m", "1")
    assert rc == 0, log
    assert any(c.connected_at for c in agent.history)


async def test_source_outside_allowlist_is_forbidden(make_agent):
    agent = await make_agent(allowlist=["10.0.0.0/8"])
    raw = RawSIP(agent.bound_port)
    try:
        inv = raw.message("INVITE")
        raw.send(inv)
        res = raw.collect(3, until_final=1)
        assert final_statuses(res) == [403], res
        raw.ack_final(inv, res[-1])
        # OPTIONS is still answered (keep-alive pings from trunks)
        raw.send(raw.message("OPTIONS"))
        assert final_statuses(raw.collect(2, until_final=1)) == [200]
    finally:
        raw.close()
    assert agent.rejections.get(403) == 1 and not any(c.connected_at for c in agent.history)


@needs_sipp
async def test_register_with_digest_and_refresh(tmp_path, make_agent):
    """The agent registers with a registrar (SIPp verifying the digest) and refreshes before expiry."""
    reg_port = free_port()
    scen = fill(HERE / "uas_registrar.xml", tmp_path / "registrar.xml", USER="alice", PASSWORD="pbxpass",
                EXPIRES=8)
    registrar = asyncio.create_task(run_sipp(scen, None, tmp_path, "-p", str(reg_port), "-m", "1", timeout=30))
    await asyncio.sleep(0.5)
    agent = await make_agent(registrar_uri=f"sip:127.0.0.1:{reg_port}", registrar_user="alice",
                             registrar_password="pbxpass", register_refresh_s=60)
    rc, log = await asyncio.wait_for(registrar, 60)
    assert rc == 0, log  # the second REGISTER carried a valid digest and the refresh came
    assert agent.registered and agent.reg_status == 200
    assert log.count("REGISTER sip:") >= 3  # initial, authenticated, refresh


@needs_sipp
async def test_malformed_sip_and_flood_while_a_call_talks(tmp_path, make_agent, question_audio):
    """Broken SIP gets a 4xx/5xx or is dropped, an INVITE flood is rate-limited / refused busy,
    OPTIONS and unknown methods are answered - and a call in progress keeps talking throughout."""
    taps: dict[str, Tap] = {}
    agent = await make_agent(tapped_echo(taps), max_calls=3, invites_per_minute_per_source=6)
    scen = fill(HERE / "uac_speak.xml", tmp_path / "long.xml", AUDIO=question_audio["ul"], LOOPS=-1,
                LISTEN_MS=30000)
    sipp = asyncio.create_task(run_sipp(scen, agent.bound_port, tmp_path, "-m", "1"))
    for _ in range(100):
        if agent.calls and next(iter(agent.calls.values())).connected:
            break
        await asyncio.sleep(0.05)
    (live,) = agent.calls.values()
    assert live.connected
    rx_before = live.audio.frames_received

    loop = asyncio.get_running_loop()
    p = agent.bound_port

    def exchange(build, seconds: float = 1.0) -> list[int]:
        """Send one message from a fresh socket (so retransmitted answers to earlier cases don't mix in)."""
        raw = RawSIP(p, host="127.0.0.2")
        try:
            data = build(raw)
            raw.send(data)
            res = raw.collect(seconds, until_final=1)
            for r in res:
                if status_of(r) >= 300 and data.startswith(b"INVITE"):
                    raw.ack_final(data, r)
            return [status_of(r) for r in res]
        finally:
            raw.close()

    cases = {
        "truncated headers": lambda r: f"INVITE sip:agent@127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:9;bra".encode(),
        "no blank line": lambda r: f"INVITE sip:agent@127.0.0.1:{p} SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 INVITE".encode(),
        "content-length too long": lambda r: r.message("INVITE", content_length=5000),
        "content-length too short": lambda r: r.message("INVITE", content_length=12),
        "content-length not a number": lambda r: r.message("INVITE").replace(b"Content-Length: ", b"Content-Length: x"),
        "garbage sdp": lambda r: r.message("INVITE", body="this is not SDP \x00\x01\x02 at all\r\n"),
        "sdp without media": lambda r: r.message("INVITE", body="v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n"),
        "binary junk": lambda r: bytes(range(256)) * 4,
        "empty datagram": lambda r: b"\r\n\r\n",
        "unknown method": lambda r: r.message("FROBNICATE"),
        "bye outside a dialog": lambda r: r.message("BYE"),
        "bad version": lambda r: r.message("INVITE").replace(b"SIP/2.0\r\n", b"SIP/9.9\r\n", 1),
        "missing call-id": lambda r: re.sub(rb"Call-ID: [^\r]*\r\n", b"", r.message("INVITE")),
    }
    results = {}
    for name, build in cases.items():
        codes = await loop.run_in_executor(None, exchange, build)
        results[name] = [c for c in codes if c >= 200]
    # A 2xx to broken input would be a bug; 4xx/5xx/6xx or silence (dropped) is fine.
    assert all(c >= 400 for finals in results.values() for c in finals), results
    for name in ("content-length too long", "content-length too short", "garbage sdp"):
        assert results[name] and results[name][0] in (400, 488), results
    assert results["unknown method"] in ([], [405], [501]), results
    assert (await loop.run_in_executor(None, exchange, lambda r: r.message("OPTIONS")))[-1] == 200

    # INVITE flood from one source: 80 INVITEs in about 3 s. The agent holds 4 call slots (the
    # wheel's cap); INVITEs finding them all busy get PJSIP's stateless 486, those that get a slot
    # pass the per-source rate limit (503 beyond 6/min) and the max_calls check (486).
    raw = RawSIP(p, host="127.0.0.2")
    try:
        res: list[str] = []
        for i in range(80):
            raw.send(raw.message("INVITE"))
            res += await loop.run_in_executor(None, raw.collect, 0.035)
        res += await loop.run_in_executor(None, raw.collect, 2.0)
        finals = final_statuses(res)
        assert finals, "the flood got no answer at all"
        assert set(finals) <= {200, 486, 503}, sorted(set(finals))
        assert 503 in finals and 486 in finals, (sorted(set(finals)), agent.rejections)
    finally:
        raw.close()
    assert agent.rejections.get(503, 0) >= 1
    assert live.connected, "the call in progress did not survive"
    assert sum(1 for c in agent.history if c.source.startswith("127.0.0.2") and c._accepted) <= 2  # max_calls=3
    rx_mid = live.audio.frames_received
    await asyncio.sleep(1.0)
    assert live.audio.frames_received > rx_mid  # still receiving after the abuse

    rc, log = await sipp
    assert rc == 0, log  # the live call ran to its own BYE and got 200
    assert live.ended and live.last_status == 200
    assert live.audio.frames_received - rx_before > 150  # audio kept flowing during the abuse
    tap = taps[live.session_id]
    assert len(tap.audio) / 2 / 16000 > 8


@needs_sipp
async def test_max_calls_busy_and_concurrent_calls(tmp_path, make_agent, question_audio):
    """Four SIPp calls at once are all answered and carry audio; one more gets 486 Busy Here."""
    taps: dict[str, Tap] = {}
    agent = await make_agent(tapped_echo(taps), max_calls=4)
    scen = fill(HERE / "uac_speak.xml", tmp_path / "conc.xml", AUDIO=question_audio["ul"], LOOPS=-1,
                LISTEN_MS=6000)
    sipp = asyncio.create_task(run_sipp(scen, agent.bound_port, tmp_path, "-m", "4", "-l", "4", "-r", "20"))
    for _ in range(200):
        if sum(1 for c in agent.calls.values() if c.connected) == 4:
            break
        await asyncio.sleep(0.05)
    assert sum(1 for c in agent.calls.values() if c.connected) == 4
    raw = RawSIP(agent.bound_port, host="127.0.0.3")
    try:
        inv = raw.message("INVITE")
        raw.send(inv)
        res = await asyncio.get_running_loop().run_in_executor(None, raw.collect, 3.0, 1)
        assert final_statuses(res) == [486], res
        raw.ack_final(inv, res[-1])
    finally:
        raw.close()
    rc, log = await sipp
    assert rc == 0, log
    assert len(taps) == 4
    assert all(len(t.audio) / 2 / 16000 > 4 for t in taps.values())


@needs_sipp
async def test_place_call_outbound(tmp_path, question_audio):
    """place_call(uri) dials SIPp's UAS, runs the session, and the agent's BYE ends the call."""
    uas_port = free_port()
    uas = asyncio.create_task(run_sipp(Path("uas"), None, tmp_path, "-sn", "uas", "-p", str(uas_port), "-m", "1",
                                       "-rtp_echo", timeout=30))
    await asyncio.sleep(0.5)
    taps: dict[str, Tap] = {}
    call = await place_call(f"sip:someone@127.0.0.1:{uas_port}",
                            sip_settings=SIPSettings(log_level=1),
                            session=tapped_echo(taps, hangup_after=2.5))
    assert call.direction == "outbound" and call.connected_at is not None
    assert call.ended and call.last_status == 200
    rc, log = await asyncio.wait_for(uas, 40)
    assert rc == 0, log  # SIPp's UAS saw our BYE and answered it
    (tap,) = taps.values()
    # SIPp echoes our RTP (-rtp_echo): the beep we sent came back to the pipeline.
    assert rms_dbfs(tap.float_audio()) > -50


async def test_start_sip_shares_the_service_session_limit():
    """start_sip(app_state) (what `voice serve --sip` calls) takes a slot in the service's session
    registry per call: a full registry answers 486, a freed slot lets the next call in."""
    from types import SimpleNamespace

    from voice.service import SessionRegistry
    from voice.transports.sip import start_sip

    registry = SessionRegistry(1)
    browser_slot = registry.try_reserve("webrtc")
    state = SimpleNamespace(settings=SimpleNamespace(sip=SIPSettings(port=free_port(), log_level=1)),
                            runtime=None, registry=registry, sessions_started=0)
    agent = await start_sip(state)
    try:
        raw = RawSIP(agent.bound_port)
        try:
            inv = raw.message("INVITE")
            raw.send(inv)
            res = await asyncio.get_running_loop().run_in_executor(None, raw.collect, 3.0, 1)
            assert final_statuses(res) == [486], res
            raw.ack_final(inv, res[-1])
            registry.release(browser_slot)
            raw.send(raw.message("INVITE"))
            res = await asyncio.get_running_loop().run_in_executor(None, raw.collect, 3.0, 1)
            assert 200 in final_statuses(res), res
            assert registry.count("sip") == 1
        finally:
            raw.close()
    finally:
        await agent.stop()
    assert registry.live == 0  # the call's slot went back when the agent hung it up


# ----------------------------------------------------------------------------- SIP details (issue 20)

@needs_sipp
@pytest.mark.parametrize("offer, expect", [("a=fmtp:101 0-15", "0-15"), ("a=fmtp:101 0-11", "0-11"),
                                           ("a=ptime:20", "0-15")], ids=["0-15", "0-11", "no-fmtp"])
async def test_answer_lists_only_the_dtmf_events_offered(tmp_path, make_agent, offer, expect):
    """RFC 4733: the answer's telephone-event fmtp lists events from those offered (no fmtp in the
    offer means 0-15). PJSIP on its own answers 0-16 whatever the offer. SIPp checks the 200's
    SDP itself (the call fails on any other event list)."""
    agent = await make_agent()
    scen = fill(HERE / "uac_dtmf_answer.xml", tmp_path / "dtmf.xml", FMTP=offer, EXPECT=expect)
    rc, log = await run_sipp(scen, agent.bound_port, tmp_path, "-m", "1")
    assert rc == 0, log
    (call,) = agent.history
    assert call.connected_at is not None


@needs_sipp
async def test_options_advertises_only_what_a_caller_gets(tmp_path, make_agent):
    """OPTIONS: Allow lists neither REFER (a caller's REFER is declined, 603) nor SUBSCRIBE (refused
    with 405, which SIPp checks); the methods a call needs are there."""
    agent = await make_agent()
    rc, log = await run_sipp(HERE / "uac_options.xml", agent.bound_port, tmp_path, "-m", "1")
    assert rc == 0, log
    msgs = (tmp_path / "uac_options_msg.log").read_text(errors="replace")
    allow = re.search(r"^Allow:\s*([^\r\n]*)", msgs.split("SIP/2.0 200 OK", 1)[1], re.M | re.I)
    assert allow, msgs[-3000:]
    methods = {m.strip() for m in allow.group(1).split(",")}
    assert not methods & {"REFER", "SUBSCRIBE"}, methods
    assert {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "NOTIFY"} <= methods, methods


async def test_callers_bad_requests_are_one_line_warnings(make_agent):
    """Requests a caller gets wrong (no common codec, a CSeq out of range, no Call-ID, broken
    SDP, broken headers) are answered or dropped and logged as one-line warnings, never ERROR."""
    from loguru import logger

    records: list = []
    sink = logger.add(lambda m: records.append(m.record), level="WARNING")
    try:
        agent = await make_agent(log_level=3)
        p = agent.bound_port
        loop = asyncio.get_running_loop()
        g729 = ("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
                "m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n")
        cases = [
            lambda r: r.message("INVITE", body=g729),
            lambda r: r.message("INVITE").replace(b"CSeq: 1 INVITE", b"CSeq: 99999999999 INVITE"),
            lambda r: re.sub(rb"Call-ID: [^\r]*\r\n", b"", r.message("INVITE")),
            lambda r: r.message("INVITE", body="this is not SDP \x00\x01\x02 at all\r\n"),
            lambda r: f"INVITE sip:agent@127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:9;bra".encode(),
        ]

        def exchange(build) -> None:
            raw = RawSIP(p, host="127.0.0.2")
            try:
                data = build(raw)
                raw.send(data)
                for r in raw.collect(1.0, until_final=1):
                    if status_of(r) >= 300:
                        raw.ack_final(data, r)
            finally:
                raw.close()

        for build in cases:
            await loop.run_in_executor(None, exchange, build)
    finally:
        logger.remove(sink)
    mine = [r for r in records if r["name"].startswith("voice.transports.sip")]
    assert mine, "nothing was logged about the bad requests"
    assert not [r["message"] for r in mine if r["level"].no >= 40], [r["message"] for r in mine]
    assert all("\n" not in r["message"] for r in mine), [r["message"] for r in mine]
