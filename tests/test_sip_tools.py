"""Call control by voice on a real phone call: SIPp calls the agent (the real voice session, its LLM a
scripted OpenAI-compatible endpoint on loopback) and asks out loud; the agent's end_call, transfer_call
and send_dtmf tools reach SIPp as a BYE, a REFER (to the allowed target only) and RFC 4733 events,
read on the wire. No timing assertions."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess

import pytest

pytestmark = [pytest.mark.sip, pytest.mark.slow]

pytest.importorskip("pjsua2")

from bench.tool_servers import ScriptedLLM  # noqa: E402
from tests.conftest import concat, speak  # noqa: E402
from tests.test_sip import HERE, SIPP, RtpSniffer, fill, run_sipp  # noqa: E402
from voice.transports.sip import SIPAgent, SIPSettings  # noqa: E402
from voice.transports.sip.front import free_port  # noqa: E402

needs_sipp = pytest.mark.skipif(SIPP is None or shutil.which("sox") is None, reason="sipp and sox are needed")

EVENT_DIGITS = "0123456789*#ABCD"


def caller_audio(tmp_path, *texts: str, gap_s: float = 8.0):
    """The caller's requests, spoken (espeak-ng) with gaps, as raw mu-law for SIPp's rtp_stream."""
    from voice.audio import read_wav, write_wav

    parts: list = [0.3]
    for i, text in enumerate(texts):
        parts += [read_wav(speak(text, tmp_path / f"say{i}.wav", lead_s=0, tail_s=0)), gap_s]
    wav = tmp_path / "caller.wav"
    write_wav(wav, concat(parts), 16000)
    ul = tmp_path / "caller.ul"
    subprocess.run(["sox", str(wav), "-r", "8000", "-c", "1", "-t", "ul", str(ul)], check=True)
    return ul


def rfc4733_digits(sniffer, sip_port: int, event_pt: int = 101) -> str:
    """The DTMF digits in the agent's RTP: one per RFC 4733 event (events are told apart by timestamp)."""
    ports = sniffer._agent_rtp_ports(sip_port)
    seen: list[tuple[int, int]] = []
    for sport, _, payload, _ in sniffer.packets:
        if sport not in ports or len(payload) < 16 or payload[1] & 0x7F != event_pt:
            continue
        timestamp = struct.unpack("!I", payload[4:8])[0]
        event = payload[12]
        if (timestamp, event) not in seen:
            seen.append((timestamp, event))
    return "".join(EVENT_DIGITS[e] for _, e in seen if e < len(EVENT_DIGITS))


def _tool_calls(settings, session_id):
    """The session record's tool calls (voice/store)."""
    from voice.store import Store, flush_writers

    assert flush_writers(30)
    store = Store.from_settings(settings)
    try:
        return store.get_session(session_id)["tool_calls"]
    finally:
        store.close()


def _settings(settings, tmp_path, url, allowed, **tools):
    from voice.settings import ToolsSettings

    return settings.model_copy(update={
        "data_dir": tmp_path / "data",
        "llm": settings.llm.model_copy(update={"backend": "openai", "base_url": url, "allowed_tools": allowed}),
        "tools": ToolsSettings(**tools)})


async def _call(tmp_path, port, runtime, s, sniffer, scenario, **fields):
    """One SIPp call (``scenario`` filled with ``fields``) to a fresh agent on ``s``, the wire sniffed:
    (SIPp's exit code, its log, the agent's calls)."""
    agent = SIPAgent(SIPSettings(port=port, log_level=1), runtime=runtime, app_settings=s)
    await agent.start()
    sniffer.start()
    try:
        scen = fill(HERE / scenario, tmp_path / scenario, WAIT_MS=60000, **fields)
        rc, log = await run_sipp(scen, port, tmp_path, "-m", "1", timeout=90)
        await asyncio.sleep(0.5)
    finally:
        sniffer.stop()
        calls = list(agent.history)
        await agent.stop()
    return rc, log, calls


@needs_sipp
async def test_send_dtmf_then_end_call_reach_sipp(tmp_path, runtime, settings):
    """"Open the menu" -> send_dtmf("123"): RFC 4733 events 1, 2, 3 on the wire; "goodbye" -> end_call:
    the agent says goodbye and SIPp receives its BYE (the scenario fails without one)."""
    audio = caller_audio(tmp_path, "Please open the menu.", "Thank you, goodbye.")
    sniffer = RtpSniffer()
    port = free_port()
    with ScriptedLLM() as llm:
        s = _settings(settings, tmp_path, llm.url, ["send_dtmf", "end_call"])
        rc, log, calls = await _call(tmp_path, port, runtime, s, sniffer, "uac_tool_bye.xml", AUDIO=audio)
        requests = list(llm.requests)
    assert rc == 0, log  # SIPp got the agent's BYE and answered it
    (call,) = calls
    assert call.local_hangup and call.ended
    assert rfc4733_digits(sniffer, port) == "123"
    assert [(c["name"], c["ok"]) for c in _tool_calls(s, call.session_id)] == [("send_dtmf", True),
                                                                             ("end_call", True)]
    offered = {t["function"]["name"] for t in requests[0]["tools"]}
    assert offered == {"send_dtmf", "end_call"}  # no transfer_call: not allowed


@needs_sipp
async def test_transfer_call_refers_only_to_the_allowed_target(tmp_path, runtime, settings):
    """"Transfer me to the moon" names no allowed target: refused (no REFER), the agent says so;
    "a real person" -> one REFER whose Refer-To is the configured operator URI (checked by SIPp)."""
    desk = f"sip:desk@127.0.0.1:{free_port()}"
    audio = caller_audio(tmp_path, "Transfer me to the moon please.", "I want to talk to a real person.")
    sniffer = RtpSniffer()
    port = free_port()
    with ScriptedLLM() as llm:
        s = _settings(settings, tmp_path, llm.url, ["transfer_call"], transfer_targets={"operator": desk})
        rc, log, calls = await _call(tmp_path, port, runtime, s, sniffer, "uac_tool_refer.xml", AUDIO=audio,
                                     TARGET_RE=desk.replace(".", "\\."))
    assert rc == 0, log
    (call,) = calls
    assert call.transfers == [desk]
    refers = [p for _, _, p, _ in sniffer.packets if p.startswith(b"REFER ")]
    assert len(refers) == 1 and b"moon" not in refers[0] and desk.encode() in refers[0]
    assert not [p for _, _, p, _ in sniffer.packets if b"203.0.113.9" in p]
    tools = _tool_calls(s, call.session_id)
    assert [(c["name"], c["ok"]) for c in tools] == [("transfer_call", False), ("transfer_call", True)], tools
    assert "is not one of ['operator']" in tools[0]["result"]
