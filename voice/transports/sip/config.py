"""SIP settings (hung under the main settings as ``sip``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
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

    # --- scaling out: N agent processes behind a kamailio front (voice/transports/sip/front.py) ---
    # 1 = this process is the SIP agent (no proxy). N > 1 = `voice serve --sip` runs N agent
    # processes on loopback ports (each its own PJSIP endpoint, models and max_calls slots) and
    # kamailio on host:port in front of them, dispatching each new call to the least loaded one.
    workers: int = Field(1, ge=1, le=64)
    # First loopback port of the workers (worker i gets base + i - 1); 0 = free ports picked at start.
    worker_port_base: int = Field(0, ge=0, le=65535)
    kamailio: str = "kamailio"  # the kamailio binary (Debian package kamailio)
    # kamailio config template; None = deploy/kamailio/kamailio.cfg of this source tree.
    front_config: str | None = None
    front_log_level: int = Field(1, ge=-5, le=3)  # kamailio's debug= (1 = errors and warnings, 2 = notices)

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
        if self.workers > 1 and self.port == 0:
            raise ValueError("sip.workers > 1 needs a fixed sip.port (the front's address)")
        if self.workers > 1 and self.worker_port_base and self.worker_port_base + self.workers - 1 > 65535:
            raise ValueError("sip.worker_port_base + sip.workers runs past port 65535")
        return self

    @property
    def digest_enabled(self) -> bool:
        return self.auth_user is not None and self.auth_password is not None


@dataclass(frozen=True)
class FrontLink:
    """How one worker agent sits behind the kamailio front (voice/transports/sip/worker.py sets it;
    not a user setting). ``None`` on a SIPAgent = it faces callers itself (``sip.workers = 1``)."""

    proxy_host: str  # the front's address as the worker sees it: X-Voice-Source is believed from here only
    proxy_uri: str  # "sip:HOST:PORT;lr" the worker reaches the front at (outbound proxy of its REGISTER)
    contact_uri: str  # "sip:USER@PUBLIC:PORT": the front as callers reach it (the registration's Contact)
    media_host: str  # RTP bind address: callers send RTP straight to the worker, not through the front
    media_public_address: str | None = None  # address written into the SDP when it differs from media_host
    nonce_key: bytes | None = None  # shared by every worker: a digest answer validates on any of them
    register: bool = False  # this worker registers sip.registrar_uri (worker 1 only)
    proxy_port: int = 0  # ... and from this source port (the front's internal socket; 0 = any)
