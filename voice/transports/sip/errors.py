"""The SIP package's one exception type (imported by every module that reports a SIP failure)."""

from __future__ import annotations


class SIPError(RuntimeError):
    """A SIP-side failure reported as one line (bind failed, call rejected, ...)."""

