"""Who may start a session over HTTP: a static API key, or short-lived signed tokens minted with it.

Policy (``settings.security``):

* Bound to loopback (the default, 127.0.0.1) the page and API are open: only
  this machine can reach them. Bound anywhere else, ``POST``/``PATCH
  /api/offer`` need a credential; ``security.require_token`` forces it either way.
* A credential is sent as ``Authorization: Bearer CREDENTIAL`` (or
  ``X-Voice-Token: CREDENTIAL``) and is either the static key
  ``security.api_key`` or a token from ``POST /api/token``, which itself needs
  the static key. Tokens are ``v1.EXPIRY.NONCE.SIGNATURE``: HMAC-SHA256 over
  ``v1.EXPIRY.NONCE`` with a key derived from the API key, valid until EXPIRY
  (Unix seconds, ``security.token_ttl_s`` after minting). They are stateless:
  rotating the API key revokes every token.
* Credentials never go in URLs the server reads (the page takes ``?token=``
  once, keeps it in sessionStorage and sends it as a header) and never in logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time

TOKEN_VERSION = "v1"
_DERIVE = b"voice-agent session token v1"
MAX_CREDENTIAL_CHARS = 512


class AuthError(Exception):
    """A request without a valid credential (401); the message never repeats the credential."""


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_required(settings) -> bool:
    """Whether session creation needs a credential under ``settings``."""
    forced = settings.security.require_token
    if forced is not None:
        return forced
    return not is_loopback(settings.host)


def api_key(settings) -> str | None:
    key = settings.security.api_key
    value = key.get_secret_value() if key is not None else ""
    return value or None


def _signing_key(key: str) -> bytes:
    return hmac.new(key.encode("utf-8"), _DERIVE, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _signature(key: str, payload: str) -> str:
    return _b64(hmac.new(_signing_key(key), payload.encode("ascii"), hashlib.sha256).digest())


def mint_token(key: str, ttl_s: float, *, now: float | None = None) -> tuple[str, int]:
    """A token valid for ``ttl_s`` seconds, and its expiry (Unix seconds)."""
    expires = int((time.time() if now is None else now) + ttl_s)
    payload = f"{TOKEN_VERSION}.{expires}.{secrets.token_urlsafe(12)}"
    return f"{payload}.{_signature(key, payload)}", expires


def verify_token(key: str, token: str, *, now: float | None = None, max_ttl_s: float | None = None) -> None:
    """AuthError unless ``token`` was minted with ``key`` and has not expired."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != TOKEN_VERSION:
        raise AuthError("malformed token")
    payload, sig = ".".join(parts[:3]), parts[3]
    if not hmac.compare_digest(_signature(key, payload).encode("ascii"), sig.encode("ascii", "replace")):
        raise AuthError("invalid token")
    try:
        expires = int(parts[1])
    except ValueError:
        raise AuthError("malformed token") from None
    now = time.time() if now is None else now
    if expires <= now:
        raise AuthError("token expired")
    if max_ttl_s is not None and expires - now > max_ttl_s + 5:
        raise AuthError("invalid token")  # signed with this key but for longer than this server mints


def credential(headers) -> str | None:
    """The credential a request carries (Authorization: Bearer, or X-Voice-Token), or None."""
    value = headers.get("authorization")
    if value:
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            return rest.strip()
        raise AuthError("the Authorization header must be 'Bearer <key or token>'")
    value = headers.get("x-voice-token")
    return value.strip() if value and value.strip() else None


def check_key(settings, headers) -> None:
    """AuthError unless the request carries the static API key (for minting tokens)."""
    key = api_key(settings)
    if key is None:
        raise AuthError("no API key is configured (security.api_key)")
    given = credential(headers)
    if given is None:
        raise AuthError("this endpoint needs the API key: send 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), key.encode("utf-8")):
        raise AuthError("invalid API key")


def check_session_request(settings, headers) -> None:
    """AuthError unless the request may start (or touch) a session under ``settings``."""
    if not auth_required(settings):
        return
    key = api_key(settings)
    if key is None:
        raise AuthError("session creation needs a token, and no API key is configured (security.api_key)")
    given = credential(headers)
    if given is None:
        raise AuthError("a token is required: send 'Authorization: Bearer <token>' (open the page with ?token=...)")
    if len(given) > MAX_CREDENTIAL_CHARS:
        raise AuthError("invalid token")
    if hmac.compare_digest(given.encode("utf-8", "replace"), key.encode("utf-8")):
        return
    verify_token(key, given, max_ttl_s=settings.security.token_ttl_s)


def startup_problem(settings) -> str | None:
    """Why ``voice serve`` should not start with these settings, or None."""
    if auth_required(settings) and api_key(settings) is None:
        where = "not bound to loopback" if settings.security.require_token is None else "require_token is on"
        return (f"the service is {where} ({settings.host}), so sessions need a token, but no API key is set: "
                f"set security.api_key (VOICE_SECURITY__API_KEY), or security.require_token = false to run open")
    return None
