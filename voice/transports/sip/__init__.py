"""SIP phone agent: PJSIP (pjsua2) user agent + a pipecat transport per call.

Public API: :class:`SIPSettings`, :class:`SIPAgent`, :class:`SIPCall`,
:class:`SIPCallTransport`, :func:`start_sip` (``voice serve --sip``), :func:`serve_sip`,
:func:`place_call` (``voice call sip:user@host``), :class:`SIPFront` (``sip.workers > 1``: kamailio
in front of N agent processes, see ``front.py``).
Importing this package does not load PJSIP or pipecat; they load on first use.
"""

from __future__ import annotations

from typing import Any

from .config import SIPSettings

__all__ = ["SIPSettings", "SIPAgent", "SIPCall", "SIPError", "SIPCallTransport", "start_sip", "serve_sip",
           "place_call", "SIPFront"]


def __getattr__(name: str) -> Any:
    if name in ("SIPAgent", "SIPCall", "SIPError", "start_sip", "serve_sip", "place_call"):
        from . import agent

        return getattr(agent, name)
    if name == "SIPFront":
        from .front import SIPFront

        return SIPFront
    if name == "SIPCallTransport":
        from .transport import SIPCallTransport

        return SIPCallTransport
    raise AttributeError(name)
