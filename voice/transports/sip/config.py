"""SIP settings (hung under the main settings as ``sip``)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

LOOPBACK_NETS = ["127.0.0.0/8", "::1/128"]


class SIPSettings(BaseModel):
    """Everything the SIP phone agent needs; secrets are SecretStr (masked in logs/dumps).

    Inbound policy for calls that arrive directly (not via the registrar):
    a source address in ``allowlist`` is accepted; otherwise, when
    ``auth_user``/``auth_password`` are set, the caller must answer a digest
    challenge (401); everything else gets 403 Forbidden.
    """

    model_config = ConfigDict(extra="forbid")  # a misspelt security setting must not pass silently

    # --- transport ---
    host: str = "127.0.0.1"  # bind address; anything other than loopback needs public_bind = true
    port: int = Field(5080, ge=0, le=65535)  # 0 = any free port (outbound-only use)
    public_bind: bool = False
    transports: list[Literal["udp", "tcp"]] = ["udp", "tcp"]
    # Address written into Contact/SDP when it differs from the bind address (NAT, 0.0.0.0 bind).
    public_address: str | None = None
    user: str = "agent"  # our user part (Contact/From for calls we place)
    user_agent: str = "voice-agent"

    # --- inbound policy ---
    allowlist: list[str] = Field(default_factory=lambda: list(LOOPBACK_NETS))
    auth_user: str | None = None
    auth_password: SecretStr | None = None
    auth_realm: str = "voice-agent"
    # Concurrent calls; more get 486 Busy Here. The pjsua2-python 2.15.1 wheel holds at most 4 call
    # slots per process (compile-time PJSUA_MAX_CALLS; measured), so values above 4 act as 4.
    max_calls: int = Field(4, ge=1, le=30)
    invites_per_minute_per_source: int = Field(30, ge=1)  # more get 503 (Retry-After: 60)
    # How long a rejected INVITE holds its call slot before the 4xx/5xx goes out (flood brake, see agent.py).
    reject_delay_s: float = Field(0.25, ge=0.05, le=5.0)
    # Time between 180 Ringing and 200 OK (a CANCEL in this window ends the call cleanly).
    answer_delay_s: float = Field(0.0, ge=0.0, le=60.0)
    max_call_duration_s: float = Field(1800.0, gt=0)

    # --- registration to a PBX / trunk ---
    registrar_uri: str | None = None  # e.g. "sip:pbx.example.com"
    registrar_user: str | None = None
    registrar_password: SecretStr | None = None
    registrar_realm: str = "*"
    register_refresh_s: int = Field(300, ge=30, le=86400)
    # Accept calls whose source is the registrar's host (the trunk delivers calls from there).
    trust_registrar: bool = True

    # --- call features ---
    transfer_uri: str | None = None  # where DTMF "0" transfers the caller (REFER); None = log only
    transfer_digit: str = "0"

    # --- media ---
    # Enabled codecs, most preferred first (what we offer on outbound calls; as answerer PJSIP
    # follows the caller's order among these). Everything else the build has is disabled. The
    # pjsua2-python 2.15.1 wheel has PCMU, PCMA, G722, GSM, iLBC and speex but no Opus.
    codecs: list[str] = ["PCMU/8000", "PCMA/8000", "G722/16000", "opus/48000"]
    # First RTP port to try (PJSIP walks up in steps of 2 when a port is taken); 0 = a random even port in 20000-40000.
    rtp_port: int = Field(0, ge=0, le=65000)
    jitter_min_ms: int = Field(-1, ge=-1)  # -1 = PJSIP default
    jitter_max_ms: int = Field(-1, ge=-1)

    log_level: int = Field(1, ge=0, le=6)  # PJSIP's own log verbosity (console)

    @field_validator("host")
    @classmethod
    def _host_ip(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"sip.host must be an IP address, got {v!r}") from None
        return v

    @field_validator("allowlist")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        for n in v:
            try:
                ipaddress.ip_network(n, strict=False)
            except ValueError:
                raise ValueError(f"sip.allowlist entry {n!r} is not an IP address or network") from None
        return v

    @field_validator("transfer_uri", "registrar_uri")
    @classmethod
    def _sip_uri(cls, v: str | None) -> str | None:
        if v is not None and not v.lower().startswith(("sip:", "sips:")):
            raise ValueError(f"{v!r} is not a SIP URI (sip:user@host)")
        return v

    @model_validator(mode="after")
    def _check(self) -> "SIPSettings":
        if not ipaddress.ip_address(self.host).is_loopback and not self.public_bind:
            raise ValueError(f"sip.host {self.host} is not loopback: set sip.public_bind = true to expose SIP")
        if (self.auth_user is None) != (self.auth_password is None):
            raise ValueError("sip.auth_user and sip.auth_password go together")
        if self.registrar_uri and not (self.registrar_user and self.registrar_password):
            raise ValueError("sip.registrar_uri needs sip.registrar_user and sip.registrar_password")
        if not self.transports:
            raise ValueError("sip.transports must name at least one of udp, tcp")
        return self

    @property
    def digest_enabled(self) -> bool:
        return self.auth_user is not None and self.auth_password is not None
