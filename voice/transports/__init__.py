"""Pipecat transports for the voice agent (SIP lives in voice.transports.sip)."""
