"""Reading raw SIP text: URIs, addresses and header values (no PJSIP needed)."""

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

