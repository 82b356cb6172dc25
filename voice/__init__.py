"""Streaming voice agent service: transports in, turn-taking controller in the middle, engines behind interfaces."""

__version__ = "0.1.0"
