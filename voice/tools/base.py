"""What every tool is to the rest of the agent: a name, a JSON schema and a coroutine.

:class:`Tool` is the common shape of HTTP tools (http.py), MCP tools (mcp.py) and the
built-ins (builtins.py). :meth:`ToolSet.run` is the one way a call reaches one:
unknown names, arguments that violate the schema, time-outs, exceptions and
oversized results all come back as a short error string the LLM can speak about,
never as an exception into the pipeline.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger


class ToolError(Exception):
    """A tool failed in a way the LLM should hear about (the message is what it reads)."""


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema of type object
    call: Callable[[dict[str, Any]], Awaitable[Any]]
    timeout_s: float = 5.0
    # Run only once the turn end is confirmed (never for a speculative reply that may be dropped).
    side_effects: bool = False
    kind: str = "builtin"  # builtin | http | mcp


@dataclass
class ToolOutcome:
    name: str
    ok: bool
    content: str  # what goes back to the LLM as the tool message
    seconds: float
    error: str | None = None


def _validator(schema: dict[str, Any]):
    try:
        from jsonschema import Draft202012Validator
    except ImportError:  # pragma: no cover - jsonschema is a dependency
        return None
    return Draft202012Validator(schema)


def result_text(result: Any, limit: int) -> str:
    """A tool's result as the text the LLM reads (JSON for data), cut to ``limit`` characters."""
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False, default=str)
    if len(text) > limit:
        text = text[:limit] + " ...(cut)"
    return text


@dataclass
class ToolSet:
    """The tools one session offers its LLM (already filtered by ``llm.allowed_tools``)."""

    tools: dict[str, Tool] = field(default_factory=dict)
    max_result_chars: int = 4000
    _validators: dict[str, Any] = field(default_factory=dict, repr=False)
    _closers: list = field(default_factory=list, repr=False)

    def add(self, tool: Tool) -> None:
        self.tools[tool.name] = tool
        self._validators.pop(tool.name, None)

    def __bool__(self) -> bool:
        return bool(self.tools)

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def names(self) -> list[str]:
        return sorted(self.tools)

    def schemas(self):
        """pipecat's ToolsSchema for the LLM context (standard function schemas)."""
        from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
        from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema

        return ToolsSchema(standard_tools=[
            FunctionSchema(name=t.name, description=t.description,
                           properties=t.parameters.get("properties", {}),
                           required=list(t.parameters.get("required", [])))
            for t in self.tools.values()])

    def check(self, name: str, arguments: Any) -> str | None:
        """Why this call may not run (unknown tool, bad arguments), or None."""
        tool = self.tools.get(name)
        if tool is None:
            return f"there is no tool named {name!r}"
        if not isinstance(arguments, dict):
            return "the arguments must be a JSON object"
        if name not in self._validators:
            self._validators[name] = _validator(tool.parameters)
        validator = self._validators[name]
        if validator is not None:
            errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
            if errors:
                e = errors[0]
                where = ".".join(str(p) for p in e.path) or "arguments"
                return f"invalid arguments for {name}: {where}: {e.message}"[:300]
        return None

    async def run(self, name: str, arguments: Any) -> ToolOutcome:
        """Run one call to the end; any failure is a short error for the LLM and one log line."""
        t0 = time.monotonic()
        refused = self.check(name, arguments)
        if refused is not None:
            logger.warning(f"tool call refused: {refused}")
            return ToolOutcome(name, False, f"error: {refused}", 0.0, refused)
        tool = self.tools[name]
        try:
            result = await asyncio.wait_for(tool.call(dict(arguments)), tool.timeout_s)
        except TimeoutError:
            error = f"{name} did not answer within {tool.timeout_s:g} s"
        except ToolError as e:
            error = f"{name} failed: {e}"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a tool's own bug must not reach the pipeline
            error = f"{name} failed: {type(e).__name__}: {e}"
        else:
            return ToolOutcome(name, True, result_text(result, self.max_result_chars), time.monotonic() - t0)
        error = " ".join(error.split())[:300]
        logger.warning(f"tool error: {error}")
        return ToolOutcome(name, False, f"error: {error}", time.monotonic() - t0, error)

    def on_close(self, closer) -> None:
        """``await closer()`` when the session ends (an MCP connection)."""
        self._closers.append(closer)

    async def aclose(self) -> None:
        for closer in {id(c): c for c in self._closers}.values():
            try:
                await closer()
            except Exception as e:
                logger.debug(f"tool cleanup failed: {e}")
        self._closers.clear()
