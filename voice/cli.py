"""The `voice` command line: serve, talk, config, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from loguru import logger


class UserError(Exception):
    """Anything the user can fix; printed as one line, exit status 2."""


def _configure_logging(level: str) -> None:
    logger.remove()
    logger.add(sys.stderr, level=level, format="{time:HH:mm:ss.SSS} {level: <7} {extra} {message}")


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (also VOICE_CONFIG)")
    p.add_argument("--pipeline", choices=["cascaded", "native"], help="engine (default: cascaded)")
    p.add_argument("--native-model", help="native model: moshi | mini-omni (optionally :tiny or :PATH)")
    p.add_argument("--llm-base-url", help="OpenAI-compatible endpoint (switches the LLM backend to it)")
    p.add_argument("--llm-model", help="model name at the endpoint, or a GGUF path for llama.cpp")
    p.add_argument("--llm-api-key", help="API key for the endpoint (prefer VOICE_LLM__API_KEY)")
    p.add_argument("--asr-model", help="faster-whisper model dir/name, or openai-whisper .pt with --asr-engine")
    p.add_argument("--asr-engine", choices=["faster-whisper", "openai-whisper"])
    p.add_argument("--tts-voice", help="Piper voice .onnx file")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def settings_from_args(args: argparse.Namespace):
    from voice.settings import ConfigError, Settings, load_settings

    overrides: dict = {}
    if getattr(args, "pipeline", None):
        overrides["pipeline"] = args.pipeline
    if getattr(args, "log_level", None):
        overrides["log_level"] = args.log_level
    for flag in ("host", "port"):
        if getattr(args, flag, None) is not None:
            overrides[flag] = getattr(args, flag)
    try:
        base = load_settings(getattr(args, "config", None))
        data = base.model_dump()
        data["llm"]["api_key"] = base.llm.api_key.get_secret_value()
        if args.llm_base_url:
            data["llm"].update(backend="openai", base_url=args.llm_base_url)
        if args.llm_model:
            key = "model" if data["llm"]["backend"] == "openai" else "model_path"
            data["llm"][key] = args.llm_model
        if args.llm_api_key:
            data["llm"]["api_key"] = args.llm_api_key
        if args.asr_model:
            data["asr"]["model"] = args.asr_model
        if args.asr_engine:
            data["asr"]["engine"] = args.asr_engine
        if args.tts_voice:
            data["tts"]["voice"] = args.tts_voice
        if getattr(args, "native_model", None):
            data["native"]["model"] = args.native_model
        data.update(overrides)
        return Settings.model_validate(data)
    except ConfigError as e:
        raise UserError(str(e)) from None
    except ValueError as e:  # pydantic ValidationError
        errors = getattr(e, "errors", lambda: [])()
        if errors:
            where = ".".join(str(p) for p in errors[0]["loc"])
            raise UserError(f"invalid setting {where}: {errors[0]['msg']}") from None
        raise UserError(str(e)) from None


def cmd_config(args) -> int:
    from voice.settings import redacted

    print(json.dumps(redacted(settings_from_args(args)), indent=2))
    return 0


def cmd_talk(args) -> int:
    from voice.talk import talk_file

    settings = settings_from_args(args)
    _configure_logging(settings.log_level if args.verbose else "WARNING")
    if not Path(args.input).exists():
        raise UserError(f"input file not found: {args.input}")
    result = asyncio.run(talk_file(args.input, args.output, args.events, settings, echo_guard=args.echo_guard,
                                   simulate_echo_db=args.simulate_echo_db))
    for m in result.turn_metrics():
        v2v = m.get("voice_to_voice")
        print(f"turn {m['turn']}: v2v {v2v:.3f}s  endpoint {m['endpoint_delay']}s  asr {m['asr_time']}s  "
              f"llm_ttft {m['llm_ttft']}s  tts {m['tts_first_audio']}s  \"{m['text']}\"" if v2v is not None
              else f"turn {m['turn']}: {m}")
    replies = " ".join(e["text"].strip() for e in result.events.of("agent_text"))
    print(f"agent said: {replies or '(nothing)'}")
    print(f"wrote {result.output_path} ({result.output_seconds:.2f}s, input {result.input_seconds:.2f}s)")
    return 0


def cmd_serve(args) -> int:
    from voice.service import serve

    settings = settings_from_args(args)
    _configure_logging(settings.log_level)
    serve(settings, sip=args.sip)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voice", description="Streaming voice agent service")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start the service (browser page, API, optional SIP)")
    _add_settings_flags(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--sip", action="store_true", help="also answer SIP calls")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("talk", help="stream a WAV through the agent in real time")
    _add_settings_flags(p)
    p.add_argument("input", help="input audio (any WAV; resampled, mixed to mono)")
    p.add_argument("-o", "--output", required=True, help="output WAV, time-synchronous with the input")
    p.add_argument("--events", help="write the JSONL event log here")
    p.add_argument("-v", "--verbose", action="store_true", help="log pipeline events to stderr")
    p.add_argument("--echo-guard", action="store_true", help="guard against the agent's own voice (no client AEC)")
    p.add_argument("--simulate-echo-db", type=float, default=None, metavar="DB",
                   help="feed the agent's output back into the input at this gain, e.g. -6 (a speakerphone)")
    p.set_defaults(func=cmd_talk)

    p = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    _add_settings_flags(p)
    p.set_defaults(func=cmd_config)

    try:
        from bench.fdb import add_bench_parsers
    except ImportError:
        add_bench_parsers = None
    if add_bench_parsers is not None:
        add_bench_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging("WARNING")
    from models.weights import WeightsNotFound
    from voice.audio import AudioError

    try:
        return int(args.func(args) or 0)
    except (UserError, AudioError, WeightsNotFound, FileNotFoundError, PermissionError) as e:
        print(f"voice: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # parsers at the edge raise ValueError subclasses with one-line messages
        print(f"voice: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
