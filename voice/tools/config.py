"""The ``[tools]`` settings: HTTP tools, MCP servers and the built-ins' own settings.

Hung under the main settings as ``tools`` (voice/settings.py). A tool is offered to
the LLM only if its name is also in ``llm.allowed_tools``, and only with the
OpenAI-compatible backend (``llm.backend = "openai"``).
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # what the OpenAI tools API accepts as a function name
EMPTY_OBJECT = {"type": "object", "properties": {}}


def _check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type") != "object":
        raise ValueError('parameters must be a JSON schema with type = "object"')
    try:
        from jsonschema import Draft202012Validator
    except ImportError:  # pragma: no cover - jsonschema is a dependency
        return schema
    from jsonschema.exceptions import SchemaError

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise ValueError(f"parameters is not a valid JSON schema: {e.message}") from None
    return schema


class HTTPToolSettings(BaseModel):
    """One HTTP endpoint as a tool. GET: the arguments become query parameters; POST: a JSON body.

    The URL is fixed here: the LLM chooses arguments, never where they go
    (redirects are not followed). ``headers_from_env`` maps a header name to the
    environment variable that holds its value, so secrets stay out of the file.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    description: str = Field(min_length=1, max_length=1024)
    method: Literal["GET", "POST"] = "GET"
    url: str
    parameters: dict[str, Any] = Field(default_factory=lambda: dict(EMPTY_OBJECT))
    timeout_s: float = Field(5.0, gt=0, le=60)
    headers_from_env: dict[str, str] = {}
    # Larger responses are refused (the body is read at most this far).
    max_response_bytes: int = Field(65536, ge=256, le=4_194_304)
    # GET has no side effects: it may run for a speculative reply before the turn end is
    # confirmed. POST waits for the confirmation (a reply the user talks over never runs it).
    side_effects: bool | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("url must be an absolute http:// or https:// URL")
        return v

    @field_validator("parameters")
    @classmethod
    def _schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_schema(v)

    @property
    def has_side_effects(self) -> bool:
        return self.method != "GET" if self.side_effects is None else self.side_effects


class MCPServerSettings(BaseModel):
    """An MCP server whose tools the LLM may call (those named in ``llm.allowed_tools``).

    ``command`` starts it as a subprocess speaking stdio (one per session);
    ``url`` reaches a streamable-HTTP server.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    command: list[str] | None = None
    url: str | None = None
    env: dict[str, str] = {}
    # Per call; the first connection (a subprocess starting) gets connect_timeout_s.
    timeout_s: float = Field(10.0, gt=0, le=120)
    connect_timeout_s: float = Field(20.0, gt=0, le=120)
    max_result_chars: int = Field(8000, ge=100, le=1_000_000)
    # Unknown tools may change things: by default they wait for the confirmed turn end.
    side_effects: bool = True

    @model_validator(mode="after")
    def _one_transport(self) -> MCPServerSettings:
        if bool(self.command) == bool(self.url):
            raise ValueError("an MCP server needs exactly one of command = [...] or url = \"...\"")
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("url must be an absolute http:// or https:// URL")
        return self


class ToolsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    http: list[HTTPToolSettings] = []
    mcp: list[MCPServerSettings] = []
    # transfer_call: the only places a call may be transferred to, by the name the LLM uses,
    # e.g. { desk = "sip:desk@pbx.example.com" }. Empty: transfer_call is not offered.
    transfer_targets: dict[str, str] = {}
    # Said once per reply when a tool has not answered within filler_after_s.
    filler: str = "One moment."
    filler_after_s: float = Field(0.7, ge=0.0, le=10.0)
    # Said after end_call when the LLM said nothing itself.
    goodbye: str = "Goodbye."
    # Tool rounds in one reply (a tool result may lead to another call).
    max_rounds: int = Field(3, ge=1, le=10)
    # What goes back to the LLM from one call, at most (longer results are cut).
    max_result_chars: int = Field(4000, ge=100, le=100_000)
    # get_time: an IANA zone name; None = the host's local time.
    timezone: str | None = None

    @field_validator("transfer_targets")
    @classmethod
    def _sip_targets(cls, v: dict[str, str]) -> dict[str, str]:
        import re

        for name, uri in v.items():
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"transfer target name {name!r} must match {NAME_PATTERN}")
            if not uri.startswith(("sip:", "sips:")):
                raise ValueError(f"transfer target {name!r} must be a sip: or sips: URI")
        return v

    @model_validator(mode="after")
    def _unique(self) -> ToolsSettings:
        names = [t.name for t in self.http]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"tool names must be unique: {', '.join(sorted(dup))}")
        return self
