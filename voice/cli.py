"""The `voice` command line: serve, talk, sessions, config, bench."""

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
        if getattr(args, "sip_workers", None) is not None:
            data["sip"]["workers"] = args.sip_workers
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
    from voice.tools.registry import tools_off_reason, unknown_allowed

    settings = settings_from_args(args)
    print(json.dumps(redacted(settings), indent=2))
    why = tools_off_reason(settings)  # one line, beside the JSON (stderr), when tools cannot be used
    if why:
        print(f"voice: {why}", file=sys.stderr)
    elif unknown_allowed(settings):
        print(f"voice: llm.allowed_tools names no such tool: {', '.join(unknown_allowed(settings))}",
              file=sys.stderr)
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

    if args.sip_workers is not None and not args.sip:
        raise UserError("--sip-workers needs --sip")
    settings = settings_from_args(args)
    _configure_logging(settings.log_level)
    if args.sip and settings.sip.workers > 1:  # before the models load: one line if kamailio is missing
        from voice.transports.sip.agent import SIPError
        from voice.transports.sip.front import find_kamailio, template_path

        try:
            find_kamailio(settings.sip)
            template_path(settings.sip)
        except SIPError as e:
            raise UserError(str(e)) from None
    serve(settings, sip=args.sip)
    return 0


def cmd_worker(args) -> int:
    """`voice worker`: a LiveKit agent worker (dispatched to rooms; one pipeline per room)."""
    settings = settings_from_args(args)
    data = settings.model_dump()
    for section in ("llm", "livekit"):
        for key, value in data[section].items():  # keep secrets as plain values for re-validation
            if hasattr(value, "get_secret_value"):
                data[section][key] = value.get_secret_value()
    lk = data["livekit"]
    lk["url"] = args.livekit_url or lk["url"] or os.environ.get("LIVEKIT_URL", "")
    lk["api_key"] = args.api_key or lk["api_key"] or os.environ.get("LIVEKIT_API_KEY", "")
    lk["api_secret"] = args.api_secret or lk["api_secret"] or os.environ.get("LIVEKIT_API_SECRET", "")
    if args.agent_name is not None:
        lk["agent_name"] = args.agent_name
    if args.max_sessions is not None:
        data["max_sessions"] = args.max_sessions
    from voice.settings import Settings

    try:
        settings = Settings.model_validate(data)
    except ValueError as e:
        errors = getattr(e, "errors", lambda: [])()
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "settings"
        raise UserError(f"invalid setting {where}: {errors[0]['msg'] if errors else e}") from None
    _configure_logging(settings.log_level)
    try:
        import livekit.agents  # noqa: F401
        import livekit.api  # noqa: F401
    except ImportError:
        raise UserError("LiveKit mode needs the livekit extra: pip install -e '.[livekit]'") from None
    from voice.transports.livekit import run_worker

    return run_worker(settings, connect_timeout_s=args.connect_timeout, health_port=args.health_port,
                      max_retry=args.max_retry)


def cmd_sessions(args) -> int:
    """`voice sessions list | show ID | export ID --format json|txt`: the session records."""
    from voice.store import Store, StoreError
    from voice.store.export import to_json, to_text, when

    settings = settings_from_args(args)
    try:
        store = Store.from_settings(settings)
    except StoreError as e:
        raise UserError(str(e)) from None
    try:
        if args.action == "list":
            rows = store.list_sessions(args.limit)
            if args.format == "json":
                print(to_json(rows))
                return 0
            if not rows:
                print("no sessions recorded")
            for r in rows:
                print(f"{r['id']}  {when(r['started_at'])}  {r['status']:<6} {r['transport'] or '?':<7} "
                      f"{r['pipeline'] or '?':<9} {r['turns']:>3} turns  {r['errors']:>2} errors")
            return 0
        if not args.id:
            raise UserError(f"sessions {args.action} needs a session id (see: voice sessions list)")
        try:
            session_id = store.find_session_id(args.id)
        except StoreError as e:
            raise UserError(str(e)) from None
        record = store.get_session(session_id) if session_id else None
        if record is None:
            raise UserError(f"no session {args.id!r} in the store")
        fmt = args.format or ("txt" if args.action == "show" else "json")
        out = to_json(record) if fmt == "json" else to_text(record)
        if args.output:
            Path(args.output).write_text(out, encoding="utf-8")
            print(f"wrote {args.output}")
        else:
            sys.stdout.write(out if out.endswith("\n") else out + "\n")
        return 0
    finally:
        store.close()


def cmd_call(args) -> int:
    from voice.runtime import Runtime
    from voice.transports.sip import SIPError, place_call

    settings = settings_from_args(args)
    _configure_logging(settings.log_level if args.verbose else "WARNING")
    if not args.uri.startswith(("sip:", "sips:")):
        raise UserError(f"not a SIP URI: {args.uri!r} (expected sip:user@host[:port])")
    runtime = Runtime.load(settings)
    try:
        call = asyncio.run(place_call(args.uri, runtime, settings))
    except SIPError as e:
        raise UserError(str(e)) from None
    print(f"call to {args.uri} ended: {call.last_status or ''} {call.last_reason or 'hung up'}".strip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voice", description="Streaming voice agent service")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start the service (browser page, API, optional SIP)")
    _add_settings_flags(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--sip", action="store_true", help="also answer SIP calls")
    p.add_argument("--sip-workers", type=int, metavar="N",
                   help="SIP agent processes behind a kamailio front on the SIP address (sip.workers; "
                        "default 1 = this process answers SIP itself; each process holds 4 calls)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="LiveKit agent worker: register with a LiveKit server, serve its rooms")
    _add_settings_flags(p)
    p.add_argument("--livekit-url", help="ws(s)://HOST:7880 of the LiveKit server (also VOICE_LIVEKIT__URL, LIVEKIT_URL)")
    p.add_argument("--api-key", help="LiveKit API key (also VOICE_LIVEKIT__API_KEY, LIVEKIT_API_KEY)")
    p.add_argument("--api-secret", help="LiveKit API secret (prefer VOICE_LIVEKIT__API_SECRET or LIVEKIT_API_SECRET)")
    p.add_argument("--agent-name", help="explicit-dispatch name (default voice-agent; '' = every new room)")
    p.add_argument("--max-sessions", type=int, help="rooms this worker serves at once (default: max_sessions)")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds to wait for the server to accept a TCP connection before giving up (default 10)")
    p.add_argument("--health-port", type=int, default=8081, help="worker health endpoint port (default 8081; 0 = any)")
    p.add_argument("--max-retry", type=int, default=16, help="reconnection attempts after the first registration")
    p.set_defaults(func=cmd_worker)

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

    p = sub.add_parser("sessions", help="list, show or export recorded sessions")
    _add_settings_flags(p)
    p.add_argument("action", choices=["list", "show", "export"])
    p.add_argument("id", nargs="?", help="session id (or a unique prefix of it)")
    p.add_argument("--format", choices=["json", "txt"], help="list/show: txt; export: json")
    p.add_argument("-o", "--output", help="export: write to this file instead of stdout")
    p.add_argument("--limit", type=int, default=50, help="list: at most this many, newest first")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("call", help="dial a SIP URI and run the agent on the call")
    _add_settings_flags(p)
    p.add_argument("uri", help="sip:user@host[:port]")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_call)

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
