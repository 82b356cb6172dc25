"""SIP phone agent: PJSIP (pjsua2) user agent + a pipecat transport per call.

Public API: :class:`SIPSettings`, :class:`SIPAgent` (agent.py: the PJSIP endpoint and accounts),
:class:`SIPCall` (call.py: one call's dialog and media), :class:`SIPCallTransport` (transport.py),
:func:`start_sip` (``voice serve --sip``), :func:`serve_sip`, :func:`place_call` (``voice call
sip:user@host``; serve.py), :class:`SIPFront` (front.py, ``sip.workers > 1``: kamailio in front of N
agent processes).
Importing this package does not load PJSIP or pipecat; they load on first use.
"""

from __future__ import annotations

from typing import Any

from .config import SIPSettings

__all__ = ["SIPSettings", "SIPAgent", "SIPCall", "SIPError", "SIPCallTransport", "start_sip", "serve_sip",
           "place_call", "SIPFront"]


_HOME = {"SIPAgent": "agent", "SIPCall": "call", "SIPError": "errors", "SIPCallTransport": "transport",
         "SIPFront": "front", "start_sip": "serve", "serve_sip": "serve", "place_call": "serve"}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
