"""Reading raw SIP and SDP text: URIs, addresses, header values, DTMF event lists (no PJSIP needed)."""

from __future__ import annotations

import re


def clean_uri(uri: str) -> str:
    """'"Bob" <sip:bob@host:5060>;tag=x' -> 'sip:bob@host:5060'."""
    m = re.search(r"<([^>]*)>", uri)
    if m:
        return m.group(1)
    return uri.split(";", 1)[0].strip()


def host_of(addr: str) -> str:
    """'127.0.0.1:5070' / '[::1]:5070' / '::1' -> the IP address."""
    addr = addr.strip()
    if addr.startswith("["):
        return addr[1:addr.index("]")]
    if addr.count(":") == 1:
        return addr.rsplit(":", 1)[0]
    return addr


def header(msg: str, name: str) -> str | None:
    """The first value of header ``name`` in a raw SIP message (None if absent)."""
    head = msg.split("\r\n\r\n", 1)[0]
    for line in head.split("\r\n")[1:]:
        k, sep, v = line.partition(":")
        if sep and k.strip().lower() == name.lower():
            return v.strip()
    return None



def _events(spec: str) -> set[int]:
    """'0-15,66' -> the RFC 4733 event codes it lists (anything unreadable is skipped)."""
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if hi else a
        except ValueError:
            continue
        if 0 <= a <= b <= 255:
            out.update(range(a, b + 1))
    return out


def _event_list(events: set[int]) -> str:
    runs: list[list[int]] = []
    for e in sorted(events):
        if runs and e == runs[-1][1] + 1:
            runs[-1][1] = e
        else:
            runs.append([e, e])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


_TELEPHONE_EVENT = re.compile(r"^a=rtpmap:(\d+) telephone-event/(\d+)", re.M | re.I)


def answer_dtmf_events(answer: str, offer: str) -> str:
    """Our SDP answer with each telephone-event format's events cut to those the offer listed.

    RFC 4733 (7.1.1): the answer lists the events the answerer will receive, out of those
    offered; an offer without an fmtp line means 0-15. PJSIP answers with its own list (0-16)
    whatever the offer says. Formats are matched by clock rate.
    """
    offered: dict[str, set[int]] = {}
    for pt, rate in _TELEPHONE_EVENT.findall(offer):
        m = re.search(rf"^a=fmtp:{pt} ([^\r\n]*)", offer, re.M)
        offered[rate] = _events(m.group(1)) if m else set(range(16))
    for pt, rate in _TELEPHONE_EVENT.findall(answer):
        m = re.search(rf"^a=fmtp:{pt} ([^\r\n]*)", answer, re.M)
        if m is None or rate not in offered:
            continue
        ours = _events(m.group(1))
        both = ours & offered[rate]
        if both and both != ours:
            answer = answer[:m.start()] + f"a=fmtp:{pt} {_event_list(both)}" + answer[m.end():]
    return answer
