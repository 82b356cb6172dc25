"""Inbound call policy: which INVITEs the agent lets in (before it spends a call on them)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections import deque

from .config import SIPSettings
from .sipmsg import header

NONCE_TTL_S = 300.0


def digest_params(value: str) -> dict[str, str]:
    if not value.lower().startswith("digest "):
        return {}
    out = {}
    for m in re.finditer(r'(\w+)\s*=\s*("([^"]*)"|[^,\s]*)', value[7:]):
        out[m.group(1).lower()] = m.group(3) if m.group(3) is not None else m.group(2)
    return out


def content_length_ok(msg: str) -> bool:
    """Whether a request's Content-Length matches its body (PJSIP accepts a too-long one over UDP)."""
    head, sep, body = msg.partition("\r\n\r\n")
    value = header(msg, "Content-Length") or header(msg, "l")
    if value is None:
        return True  # over UDP the body is the rest of the datagram
    try:
        declared = int(value)
    except ValueError:
        return False
    return declared == len(body.encode("utf-8", "surrogateescape"))


def md5(s: str) -> str:
    return hashlib.md5(s.encode()).hexdigest()  # noqa: S324 - RFC 2617 digest is MD5


class RateLimiter:
    """Sliding one-minute window of INVITEs per source IP."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._hits: dict[str, deque[float]] = {}

    def allow(self, ip: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        q = self._hits.setdefault(ip, deque())
        while q and now - q[0] > 60.0:
            q.popleft()
        if len(q) >= self.per_minute:
            return False
        q.append(now)
        if len(self._hits) > 10000:  # forget idle sources
            for k in [k for k, v in self._hits.items() if not v or now - v[-1] > 60.0]:
                del self._hits[k]
        return True

class InboundPolicy:
    """Who may call: the Content-Length check, the per-source INVITE rate limit, the allowlist
    (and the registrar's addresses when trusted) and inbound digest authentication.

    Used on the pjsip thread only. ``trusted_ips`` is filled in by the agent once it has resolved
    the registrar; ``nonce_key`` signs digest nonces (shared by the workers behind the front).
    """

    def __init__(self, settings: SIPSettings, nonce_key: bytes | None = None) -> None:
        self.settings = settings
        self._limiter = RateLimiter(settings.invites_per_minute_per_source)
        self._allow_nets = [ipaddress.ip_network(n, strict=False) for n in settings.allowlist]
        self.trusted_ips: set[str] = set()
        self._nonce_key = nonce_key or secrets.token_bytes(32)

    def check(self, ip: str, msg: str) -> tuple[int, str, list[tuple[str, str]]]:
        """(0, '', []) to let the INVITE in, else (status code, reason, extra headers) to reject with."""
        s = self.settings
        if not content_length_ok(msg):
            return 400, "Bad Request (Content-Length)", []
        if not self._limiter.allow(ip):
            return 503, "Service Unavailable", [("Retry-After", "60")]
        if not self.source_trusted(ip):
            if not s.digest_enabled:
                return 403, "Forbidden", []
            verdict = self.digest_check(msg)
            if verdict == "missing":
                return 401, "Unauthorized", [("WWW-Authenticate", self.digest_challenge())]
            if verdict == "stale":
                return 401, "Unauthorized", [("WWW-Authenticate", self.digest_challenge(stale=True))]
            if verdict != "ok":
                return 403, "Forbidden", []
        return 0, "", []

    def source_trusted(self, ip: str) -> bool:
        if ip in self.trusted_ips:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self._allow_nets)

    def digest_challenge(self, stale: bool = False) -> str:
        ts = f"{int(time.time()):x}"
        sig = hmac.new(self._nonce_key, ts.encode(), hashlib.sha256).hexdigest()[:24]
        out = f'Digest realm="{self.settings.auth_realm}", nonce="{ts}.{sig}", algorithm=MD5, qop="auth"'
        return out + (", stale=true" if stale else "")

    def digest_check(self, msg: str) -> str:
        s = self.settings
        value = header(msg, "Authorization")
        if not value:
            return "missing"
        p = digest_params(value)
        nonce = p.get("nonce", "")
        ts, _, sig = nonce.partition(".")
        good = hmac.new(self._nonce_key, ts.encode(), hashlib.sha256).hexdigest()[:24]
        if not sig or not hmac.compare_digest(sig, good):
            return "missing"  # not our nonce: challenge afresh
        try:
            if time.time() - int(ts, 16) > NONCE_TTL_S:
                return "stale"
        except ValueError:
            return "missing"
        if p.get("algorithm", "MD5").upper() != "MD5" or p.get("realm") != s.auth_realm:
            return "bad"
        if not hmac.compare_digest(p.get("username", ""), s.auth_user or ""):
            return "bad"
        method = msg.split(" ", 1)[0]
        ha1 = md5(f"{s.auth_user}:{s.auth_realm}:{s.auth_password.get_secret_value()}")  # type: ignore[union-attr]
        ha2 = md5(f"{method}:{p.get('uri', '')}")
        if p.get("qop"):
            expect = md5(f"{ha1}:{nonce}:{p.get('nc', '')}:{p.get('cnonce', '')}:{p['qop']}:{ha2}")
        else:
            expect = md5(f"{ha1}:{nonce}:{ha2}")
        return "ok" if hmac.compare_digest(expect, p.get("response", "")) else "bad"
