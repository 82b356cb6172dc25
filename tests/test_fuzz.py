"""Fuzzing every parser at the edge with hypothesis: no crash, only the documented clean errors.

* the signalling endpoint (``POST``/``PATCH /api/offer``, ``POST /api/token``) through the ASGI app:
  random JSON, random bytes, random content types, generated and mutated SDP;
* ``check_offer_sdp`` directly (generated SDP, mutations of a real browser-like offer);
* data-channel messages from the page (``WebRTCSession``'s handler, fed what pipecat hands it:
  any JSON value);
* config files: TOML through ``voice.settings.load_settings`` (including the ``[sip]`` section,
  ``voice.transports.sip``'s public settings model);
* WAV input: ``voice.audio.read_wav`` on random bytes and on RIFF headers with random fields.

About 5,300 cases; under a minute on 2 cores. ``VOICE_FUZZ_SCALE=10`` runs ten times as many.
"""

from __future__ import annotations

import asyncio
import json
import os
import string
import struct
import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

SCALE = float(os.environ.get("VOICE_FUZZ_SCALE", "1"))


def fuzz(n: int):
    return hsettings(max_examples=max(1, int(n * SCALE)), deadline=None, derandomize=False,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                            HealthCheck.data_too_large, HealthCheck.filter_too_much])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)

# ------------------------------------------------------------------------------ SDP

_token = st.text(alphabet=string.ascii_letters + string.digits + "+/=-_.", min_size=0, max_size=24)
_port = st.one_of(st.integers(-5, 70000), st.just(9), st.just(0))
_ip = st.one_of(st.just("127.0.0.1"), st.just("0.0.0.0"), st.just("::1"), _token)
_sdp_line = st.one_of(
    st.builds(lambda a, b, ip: f"o=- {a} {b} IN IP4 {ip}", st.integers(-1, 2**64), st.integers(-1, 99), _ip),
    st.just("s=-"), st.just("t=0 0"),
    st.builds(lambda k, p, proto, fmts: f"m={k} {p} {proto} {' '.join(map(str, fmts))}",
              st.sampled_from(["audio", "video", "application", "text", ""]), _port,
              st.sampled_from(["UDP/TLS/RTP/SAVPF", "RTP/AVP", "UDP/DTLS/SCTP", "x"]),
              st.lists(st.integers(-1, 300), max_size=4)),
    st.builds(lambda ip: f"c=IN IP4 {ip}", _ip),
    st.builds(lambda t: f"a=ice-ufrag:{t}", _token), st.builds(lambda t: f"a=ice-pwd:{t}", _token),
    st.builds(lambda h: f"a=fingerprint:sha-256 {h}", st.text(alphabet="0123456789ABCDEF:", max_size=95)),
    st.sampled_from(["a=setup:actpass", "a=setup:active", "a=sendrecv", "a=rtcp-mux", "a=group:BUNDLE 0 1",
                     "a=msid-semantic:WMS *", "a=sctp-port:5000", "a=end-of-candidates"]),
    st.builds(lambda m: f"a=mid:{m}", _token),
    st.builds(lambda pt, codec, rate: f"a=rtpmap:{pt} {codec}/{rate}", st.integers(-1, 300),
              st.sampled_from(["opus", "PCMU", "x"]), st.integers(-1, 96000)),
    st.builds(lambda f, c, p, ip, port, typ: f"a=candidate:{f} {c} {p} 2130706431 {ip} {port} typ {typ}",
              _token, st.integers(-1, 3), st.sampled_from(["udp", "tcp", "x"]), _ip, _port,
              st.sampled_from(["host", "srflx", "relay", "x"])),
    st.text(max_size=60),
)
generated_sdp = st.builds(lambda head, lines, sep: (head + sep.join(lines)),
                          st.sampled_from(["v=0\r\n", "v=0\n", "", "v=1\r\n", " v=0\r\n"]),
                          st.lists(_sdp_line, max_size=25), st.sampled_from(["\r\n", "\n", "\r"]))


@pytest.fixture(scope="module")
def real_offer() -> str:
    from aiortc import RTCConfiguration, RTCPeerConnection

    async def make():
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.createDataChannel("events")
        pc.addTransceiver("audio", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


def _mutate(sdp: str, ops) -> str:
    lines = sdp.split("\r\n")
    for kind, i, text in ops:
        if not lines:
            lines = [text]
            continue
        i %= len(lines)
        if kind == "drop":
            del lines[i]
        elif kind == "dup":
            lines.insert(i, lines[i])
        elif kind == "replace":
            lines[i] = text
        elif kind == "truncate":
            lines[i] = lines[i][: len(text)]
        elif kind == "insert":
            lines.insert(i, text)
    return "\r\n".join(lines)


mutations = st.lists(st.tuples(st.sampled_from(["drop", "dup", "replace", "truncate", "insert"]),
                               st.integers(0, 10_000), st.one_of(_sdp_line, st.text(max_size=30))),
                     min_size=1, max_size=6)


@fuzz(1000)
@given(sdp=st.one_of(generated_sdp, st.text(max_size=300)))
def test_check_offer_sdp_generated(sdp):
    from voice.service import ApiError, check_offer_sdp

    try:
        check_offer_sdp(sdp)
    except ApiError as e:
        assert e.status == 400 and e.message


@fuzz(600)
@given(ops=mutations)
def test_check_offer_sdp_mutated_real_offer(real_offer, ops):
    from voice.service import ApiError, check_offer_sdp

    try:
        check_offer_sdp(_mutate(real_offer, ops))
    except ApiError as e:
        assert e.status == 400 and e.message


# ------------------------------------------------------------------ the HTTP API


@pytest.fixture(scope="module")
def client():
    """The app with no models (the offer path stops at 503 before any peer connection is made)
    and one live-looking peer entry, so PATCH reaches the ICE candidate parser."""
    from starlette.testclient import TestClient

    from voice.service import create_app
    from voice.settings import load_settings

    app = create_app(load_settings(security={"api_key": "fuzz-key", "require_token": False}), None)

    async def add_ice_candidate(candidate):  # the peer accepts whatever the parser produced
        return None

    app.state.voice.webrtc["fuzz-pc"] = types.SimpleNamespace(
        connection=types.SimpleNamespace(add_ice_candidate=add_ice_candidate), id="fuzz")
    app.state.voice.ended["gone-pc"] = True
    return TestClient(app, raise_server_exceptions=False)


CLEAN = {400, 404, 410, 413, 415, 503}


def _clean(r, allowed=CLEAN):
    assert r.status_code in allowed, (r.status_code, r.text[:300])
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert "Traceback" not in r.text


offer_bodies = st.fixed_dictionaries(
    {}, optional={"sdp": st.one_of(generated_sdp, json_values), "type": st.one_of(st.just("offer"), json_values),
                  "pc_id": st.one_of(st.just("fuzz-pc"), st.just("gone-pc"), json_values),
                  "pipeline": st.one_of(st.sampled_from(["cascaded", "native"]), json_values)})


@fuzz(600)
@given(body=st.one_of(offer_bodies, json_values))
def test_offer_json(client, body):
    _clean(client.post("/api/offer", content=json.dumps(body), headers={"Content-Type": "application/json"}))


@fuzz(150)
@given(ops=mutations, pipeline=st.sampled_from(["cascaded", "native", None]))
def test_offer_mutated_real_sdp(client, real_offer, ops, pipeline):
    body = {"sdp": _mutate(real_offer, ops), "type": "offer", **({"pipeline": pipeline} if pipeline else {})}
    _clean(client.post("/api/offer", json=body))


@fuzz(300)
@given(raw=st.binary(max_size=2000),
       ctype=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", "",
                              "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]),
       method=st.sampled_from(["POST", "PATCH"]), length=st.one_of(st.none(), st.text(max_size=8)))
def test_offer_raw_bytes(client, raw, ctype, method, length):
    headers = {"Content-Type": ctype}
    if length is not None and all(c.isprintable() and c != " " for c in length) and length:
        headers["Content-Length"] = length
    try:
        r = client.request(method, "/api/offer", content=raw, headers=headers)
    except Exception as e:  # an invalid Content-Length the HTTP client itself refuses to send
        assert "Content-Length" in headers, e
        return
    _clean(r)


candidates = st.lists(st.one_of(
    st.fixed_dictionaries({}, optional={"candidate": st.one_of(_sdp_line, st.text(max_size=80), json_values),
                                        "sdp_mid": json_values, "sdpMid": json_values,
                                        "sdp_mline_index": json_values, "sdpMLineIndex": json_values}),
    json_values), max_size=5)


@fuzz(500)
@given(pc_id=st.one_of(st.just("fuzz-pc"), st.just("gone-pc"), json_values),
       cands=st.one_of(candidates, json_values))
def test_patch_candidates(client, pc_id, cands):
    r = client.patch("/api/offer", json={"pc_id": pc_id, "candidates": cands})
    if r.status_code == 200:
        assert r.json() == {"ok": True}
    else:
        _clean(r)


@fuzz(200)
@given(auth=st.text(max_size=120), token=st.text(max_size=120))
def test_token_endpoint_headers(client, auth, token):
    headers = {}
    for name, value in (("Authorization", auth), ("X-Voice-Token", token)):
        if value and all(32 <= ord(c) < 127 for c in value):
            headers[name] = value
    r = client.post("/api/token", headers=headers)
    assert r.status_code in (200, 401), r.text
    if r.status_code == 200:
        assert headers["Authorization"].split(None, 1)[1].strip() == "fuzz-key"


# ------------------------------------------------------------- data channel


@pytest.fixture(scope="module")
def page_channel():
    """WebRTCSession's data-channel handler on a real (unconnected) SmallWebRTCConnection."""
    from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection

    from voice.events import EventLog
    from voice.settings import load_settings
    from voice.transports.webrtc import WebRTCSession

    loop = asyncio.new_event_loop()

    async def make():
        connection = SmallWebRTCConnection(ice_servers=[])
        return WebRTCSession(connection, None, load_settings(), EventLog("fuzz"))

    session = loop.run_until_complete(make())
    handlers = session.transport._event_handlers["on_app_message"].handlers
    assert handlers
    yield loop, session, handlers

    async def close():
        await session.connection.pc.close()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    loop.run_until_complete(close())
    loop.close()


@fuzz(800)
@given(message=st.one_of(json_values, st.fixed_dictionaries({"type": st.one_of(
    st.sampled_from(["heartbeat", "bye", "event", "signalling", ""]), json_values)}, optional={"x": json_values})))
def test_page_messages(page_channel, message):
    loop, session, handlers = page_channel
    for handler in handlers:
        loop.run_until_complete(handler(session.transport, message, "fuzz-peer"))
    if isinstance(message, dict) and message.get("type") == "bye":
        assert session.end_reason == "peer said bye"


# ------------------------------------------------------------------ config files

_SECTIONS = {
    None: ["host", "port", "pipeline", "data_dir", "log_level", "apology", "max_sessions"],
    "asr": ["engine", "model", "beam_size", "window_s", "partial_interval_s"],
    "llm": ["backend", "base_url", "api_key", "max_tokens", "temperature", "timeout_s", "allowed_tools"],
    "tts": ["voice", "speaker_id", "length_scale"],
    "vad": ["webrtc_aggressiveness", "silero_threshold", "start_s"],
    "turn": ["endpoint_silence_s", "max_wait_s", "speculate"],
    "store": ["enabled", "url", "record_audio"],
    "security": ["api_key", "require_token", "token_ttl_s", "cors_origins", "shutdown_grace_s"],
    "sip": ["host", "port", "public_bind", "transports", "allowlist", "max_calls", "registrar_uri",
            "auth_password", "reject_delay_s"],
    "webrtc": ["ice_servers", "turn_password"],
    "nope": ["x"],
}

_toml_scalar = st.one_of(
    st.integers(-2**70, 2**70).map(str), st.floats().map(lambda f: "nan" if f != f else ("inf" if f == float("inf")
                                                                                      else "-inf" if f == float("-inf") else repr(f))),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=30).map(lambda s: json.dumps(s)),
    st.sampled_from(['"0.0.0.0"', '"127.0.0.1"', '"::1"', '"cascaded"', '"native"', '"openai"', '"udp"',
                     '"sqlite:///x.db"', '"10.0.0.0/8"', '"not/a/net"', "1979-05-27T07:32:00Z"]),
)
_toml_value = st.one_of(_toml_scalar, st.lists(_toml_scalar, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"))


@st.composite
def toml_documents(draw):
    out = []
    for section in draw(st.lists(st.sampled_from(list(_SECTIONS)), max_size=4, unique=True)):
        if section is not None:
            out.append(f"[{section}]")
        keys = _SECTIONS[section] + ["unknown_key"]
        for key in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True)):
            out.append(f"{key} = {draw(_toml_value)}")
    return "\n".join(out) + "\n"


@fuzz(500)
@given(doc=st.one_of(toml_documents(), st.text(max_size=200)))
def test_config_files(tmp_path_factory, doc):
    from voice.settings import ConfigError, Settings, load_settings

    path = tmp_path_factory.getbasetemp() / "fuzz.toml"
    path.write_bytes(doc.encode("utf-8", "surrogatepass"))
    try:
        result = load_settings(path)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert isinstance(result, Settings)


# -------------------------------------------------------------------------- WAV


@st.composite
def riff_files(draw):
    fmt_tag = draw(st.sampled_from([1, 3, 0xFFFE, 0, 2, 85, draw(st.integers(0, 0xFFFF))]))
    channels = draw(st.one_of(st.integers(0, 8), st.integers(0, 0xFFFF)))
    rate = draw(st.one_of(st.sampled_from([8000, 16000, 44100, 48000]), st.integers(0, 2**32 - 1)))
    bits = draw(st.sampled_from([8, 16, 24, 32, 64, 0, 7, draw(st.integers(0, 0xFFFF))]))
    block = draw(st.one_of(st.just(max(1, channels * bits // 8) % 0x10000), st.integers(0, 0xFFFF)))
    payload = draw(st.binary(max_size=4096))
    data_size = draw(st.one_of(st.just(len(payload)), st.integers(0, 2**32 - 1)))
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, (rate * block) % 2**32, block, bits)
    fmt_size = draw(st.one_of(st.just(len(fmt)), st.integers(0, 64)))
    body = b"WAVE" + b"fmt " + struct.pack("<I", fmt_size) + fmt + b"data" + struct.pack("<I", data_size) + payload
    riff_size = draw(st.one_of(st.just(len(body)), st.integers(0, 2**32 - 1)))
    return b"RIFF" + struct.pack("<I", riff_size) + body


@fuzz(700)
@given(blob=st.one_of(riff_files(), st.binary(max_size=2048),
                      st.binary(max_size=512).map(lambda b: b"RIFF\x24\x00\x00\x00WAVEfmt " + b)))
def test_read_wav(tmp_path_factory, blob):
    from voice.audio import AudioError, read_wav

    path = tmp_path_factory.getbasetemp() / "fuzz.wav"
    path.write_bytes(blob)
    try:
        audio = read_wav(path)
    except AudioError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) > 0 and np.isfinite(audio).all()


@pytest.mark.parametrize("rate", [1, 999])
def test_read_wav_rejects_absurd_rates(tmp_path, rate):
    """A tiny file at 1 Hz would resample to 16,000 times its length (a 1 MB file: 32 GB)."""
    import soundfile as sf

    from voice.audio import AudioError, read_wav

    path = tmp_path / "slow.wav"
    sf.write(str(path), np.zeros(64, np.float32), rate, subtype="PCM_16")
    with pytest.raises(AudioError, match="sample rate"):
        read_wav(path)
