"""The HTTP front door: the browser page, health, and WebRTC signalling.

``create_app(settings, runtime)`` builds the FastAPI app; ``serve(settings)``
loads the models once and runs it under uvicorn (``voice serve``).

Endpoints
  GET  /             the browser client (web/index.html, app.js, style.css)
  GET  /health       {"status": "ok", "ready": true, "sessions": N, "max_sessions": M}
                     (+ "native": slots used, recent tick times, when the native batch runs)
  GET  /api/config   what the page needs: ICE servers (TURN credentials only with a valid token
                     where one is required), pipelines, limits
  POST /api/offer    {"sdp", "type": "offer", "pc_id"?, "pipeline"?} -> {"sdp", "type": "answer", "pc_id", "session"}
  PATCH /api/offer   trickle ICE: {"pc_id", "candidates": [{"candidate", "sdp_mid", "sdp_mline_index"}]}
  POST /api/token    (Authorization: Bearer API_KEY) -> {"token", "expires_at", "ttl_s"}
  GET  /api/livekit/token?room=R[&name=N]   LiveKit mode: {"url", "room", "identity", "token", "ttl_s", "agent_name"}

Every error is JSON ``{"error": "..."}`` with a 4xx status (503 ``busy`` at
``settings.max_sessions`` live sessions), never a traceback.

Security (voice/security.py): bound to anything but loopback (or with
``security.require_token``), the offer endpoints need ``Authorization: Bearer``
with the API key or a token from ``/api/token`` (401 otherwise); CORS only for
``security.cors_origins``. Shutdown (SIGTERM to ``voice serve``): new offers get
503 ``shutting down``, live turns get up to ``security.shutdown_grace_s`` to
finish, then sessions end and their records are closed.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import re
import sys
import threading
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from loguru import logger
from starlette.exceptions import HTTPException as StarletteHTTPException

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
MAX_BODY_BYTES = 64 * 1024
MAX_CANDIDATES = 64
PIPELINES = ("cascaded", "native")
_ENDED_REMEMBERED = 1024
_ROOM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ApiError(Exception):
    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


# ----------------------------------------------------------------------- sessions


class SessionRegistry:
    """Live sessions of every transport in this process (browser and phone) against one limit.

    ``try_reserve`` is synchronous (no await between the check and the
    reservation), so concurrent offers can never overshoot ``max_sessions``.
    """

    def __init__(self, max_sessions: int):
        self.max_sessions = max_sessions
        self.draining = False  # shutting down: no new sessions of any transport
        self._live: dict[str, str] = {}
        self._lock = threading.Lock()  # SIP may reserve from its own thread

    def try_reserve(self, kind: str, key: str | None = None) -> str | None:
        """A slot key, or None when the service is full."""
        with self._lock:
            if self.draining or len(self._live) >= self.max_sessions:
                return None
            key = key or uuid.uuid4().hex
            self._live[key] = kind
            return key

    def release(self, key: str) -> None:
        with self._lock:
            self._live.pop(key, None)

    @property
    def live(self) -> int:
        return len(self._live)

    def count(self, kind: str) -> int:
        return sum(1 for k in self._live.values() if k == kind)


@dataclass
class ServiceState:
    """What the app shares: settings, models, the session registry and the live WebRTC peers.

    This is the ``app_state`` that ``voice.transports.sip.start_sip`` receives.
    """

    settings: Any
    runtime: Any
    registry: SessionRegistry
    webrtc: dict[str, Any] = field(default_factory=dict)  # pc_id -> WebRTCSession
    ended: OrderedDict = field(default_factory=OrderedDict)  # pc_ids of finished sessions
    tasks: set = field(default_factory=set)
    sessions_started: int = 0
    pipeline_errors: dict = field(default_factory=dict)  # pipeline -> why it cannot run here
    draining: bool = False  # SIGTERM received: refusing new sessions

    def pipelines(self) -> list[str]:
        """The engines this process can run now (the page offers only these)."""
        out = []
        for name in PIPELINES:
            if name in self.pipeline_errors:
                continue
            if name == "cascaded" and not _cascaded_ready(self.settings, self.runtime):
                continue
            out.append(name)
        return out

    async def ensure_pipeline(self, name: str) -> None:
        """ApiError 503 unless ``name`` can run; loads the native model on first use (off the event loop)."""
        if name in self.pipeline_errors:
            raise ApiError(503, "pipeline unavailable", detail=self.pipeline_errors[name])
        if name == "cascaded":
            if not _cascaded_ready(self.settings, self.runtime):
                raise ApiError(503, "pipeline unavailable",
                               detail="this server runs the native engine only (start it with --pipeline cascaded)")
            return
        loader = getattr(self.runtime, "native_model", None)
        if loader is None:
            self.pipeline_errors[name] = "this build has no native engine"
        else:
            try:
                await asyncio.to_thread(loader)
                return
            except Exception as e:
                self.pipeline_errors[name] = f"the native model cannot be loaded: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                logger.warning(self.pipeline_errors[name])
        raise ApiError(503, "pipeline unavailable", detail=self.pipeline_errors[name])

    def turn_live(self) -> list[str]:
        """Ids of the WebRTC sessions in the middle of a turn (the user talking, or a reply owed or playing)."""
        out = []
        for ws in self.webrtc.values():
            session = getattr(ws, "session", None)
            if session is not None and ws.end_reason is None and \
                    session.turn.controller.state.value != "listening":
                out.append(ws.id)
        return out

    async def drain(self, grace_s: float) -> None:
        """Refuse new sessions, let live turns finish (up to ``grace_s``), then end every session."""
        import time

        self.draining = True
        self.registry.draining = True
        deadline = time.monotonic() + grace_s
        logger.info(f"shutting down: no new sessions; {len(self.webrtc)} live, "
                    f"waiting up to {grace_s:.0f}s for turns in progress")
        while time.monotonic() < deadline:
            live = self.turn_live()
            if not live:
                break
            await asyncio.sleep(0.1)
        else:
            logger.warning(f"shutdown grace period over with turns still in progress: {', '.join(self.turn_live())}")
        for ws in list(self.webrtc.values()):
            await ws.stop("server shutting down")
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=max(5.0, deadline - time.monotonic()))

    def remember_ended(self, pc_id: str) -> None:
        self.ended[pc_id] = True
        while len(self.ended) > _ENDED_REMEMBERED:
            self.ended.popitem(last=False)


# ------------------------------------------------------------------------ helpers


def _cascaded_ready(settings, runtime) -> bool:
    """The cascaded engine needs an LLM: an OpenAI-compatible endpoint or the local model loaded."""
    return settings.llm.backend == "openai" or getattr(runtime, "local_llm", None) is not None


async def read_json_body(request: Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request's JSON object; ApiError 415/413/400 before anything is parsed when it can't be."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "content type must be application/json")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(413, f"request body too large (limit {limit} bytes)")
        except ValueError:
            raise ApiError(400, "invalid Content-Length") from None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body too large (limit {limit} bytes)")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object")
    return data


def check_offer_sdp(sdp: str) -> None:
    """ApiError 400 unless ``sdp`` is a parseable offer with a live audio m-line."""
    from aiortc.sdp import SessionDescription

    if not sdp.lstrip().startswith("v=0"):
        raise ApiError(400, "malformed SDP: must start with v=0")
    try:
        desc = SessionDescription.parse(sdp)
    except Exception as e:
        raise ApiError(400, f"malformed SDP: {type(e).__name__}: {e}".rstrip(": ")) from None
    if not any(m.kind == "audio" and m.port != 0 for m in desc.media):
        raise ApiError(400, "the offer has no audio m-line: the page must send a microphone track")
    for m in desc.media:
        if m.kind == "audio" and (m.ice.usernameFragment is None or m.dtls is None or not m.dtls.fingerprints):
            raise ApiError(400, "malformed SDP: the audio m-line lacks ICE credentials or a DTLS fingerprint")


def _optional_str(data: dict, key: str) -> str | None:
    v = data.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v or len(v) > 200:
        raise ApiError(400, f"'{key}' must be a non-empty string")
    return v


# ---------------------------------------------------------------------------- app


def create_app(settings, runtime, *, web_dir: str | Path | None = None, sip_starter=None) -> FastAPI:
    """The service's ASGI app; ``runtime`` holds the models every session shares."""
    from voice.transports.webrtc import allow_loopback_candidates

    from voice import security

    allow_loopback_candidates()
    state = ServiceState(settings, runtime, SessionRegistry(settings.max_sessions))
    web = Path(web_dir) if web_dir is not None else WEB_DIR

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store_writer = None
        if settings.store.enabled:  # open (and migrate) the session store before the first session
            from voice.store import StoreError, shared_writer

            try:
                store_writer = await asyncio.to_thread(shared_writer, settings)
            except (StoreError, OSError) as e:
                logger.error(f"sessions will not be recorded: {e}")
        sip_handle = None
        if sip_starter is not None:
            sip_handle = sip_starter(state)
            if inspect.isawaitable(sip_handle):
                sip_handle = await sip_handle
        try:
            yield
        finally:
            await _shutdown(state, sip_handle)
            if store_writer is not None:  # every ended session's record is on disk
                await asyncio.to_thread(store_writer.flush, 30.0)

    app = FastAPI(title="voice agent", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.voice = state
    if settings.security.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.security.cors_origins),
                           allow_methods=["GET", "POST", "PATCH"],
                           allow_headers=["Authorization", "Content-Type", "X-Voice-Token"], max_age=600)

    @app.exception_handler(security.AuthError)
    async def _auth_error(request: Request, exc: security.AuthError):
        return JSONResponse({"error": "unauthorized", "detail": str(exc)}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = "not found"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": "invalid request"}, status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception(f"{request.method} {request.url.path} failed: {exc}")
        return JSONResponse({"error": "internal server error"}, status_code=500)

    @app.get("/health")
    async def health():
        out = {"status": "draining" if state.draining else "ok", "ready": runtime is not None,
               "sessions": state.registry.live,
               "webrtc_sessions": len(state.webrtc), "max_sessions": state.registry.max_sessions,
               "sessions_started": state.sessions_started}
        sip_status = getattr(state, "sip_status", None)  # set by the SIP front (sip.workers > 1)
        if callable(sip_status):
            out["sip"] = sip_status()
        native_status = getattr(runtime, "native_status", None)  # the native batch: slots, tick times
        native = native_status() if callable(native_status) else None
        if native is not None:
            out["native"] = native
        return out

    @app.get("/api/config")
    async def config(request: Request):
        from voice.transports.webrtc import page_ice_servers

        ice = page_ice_servers(settings)
        try:
            security.check_session_request(settings, request.headers)
        except security.AuthError:
            # Open to all (the page learns here that it needs a token), but TURN credentials
            # only go to whoever may start a session: they let anyone relay through the server.
            ice = [server for server in ice if "credential" not in server]
        lk = getattr(settings, "livekit", None)
        return JSONResponse({"ice_servers": ice, "pipelines": state.pipelines(),
                             "pipeline": settings.pipeline, "max_sessions": settings.max_sessions,
                             "auth_required": security.auth_required(settings),
                             # the page may join a LiveKit room instead (GET /api/livekit/token)
                             "livekit": bool(lk is not None and lk.enabled)},
                            headers={"Cache-Control": "no-store"})

    @app.post("/api/token")
    async def token(request: Request):
        security.check_key(settings, request.headers)
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > 1024):
            raise ApiError(413, "request body too large (limit 1024 bytes)")
        ttl = settings.security.token_ttl_s
        value, expires = security.mint_token(security.api_key(settings), ttl)
        return JSONResponse({"token": value, "expires_at": expires, "ttl_s": ttl},
                            headers={"Cache-Control": "no-store"})

    @app.get("/api/livekit/token")
    async def livekit_token(request: Request, room: str | None = None, name: str | None = None):
        """LiveKit mode: a room token for the page (join ROOM; the agent is dispatched to it)."""
        security.check_session_request(settings, request.headers)
        lk = getattr(settings, "livekit", None)
        if lk is None or not lk.enabled:
            raise ApiError(404, "LiveKit mode is off",
                           detail="set livekit.url, livekit.api_key and livekit.api_secret to turn it on")
        if state.draining:
            raise ApiError(503, "shutting down", detail="the server is shutting down; try again shortly")
        room = room or f"call-{uuid.uuid4().hex[:12]}"
        if not _ROOM_NAME.fullmatch(room):
            raise ApiError(400, "'room' must be 1-64 characters: letters, digits, '-', '_' or '.'")
        if name is not None and (not name.strip() or len(name) > 64):
            raise ApiError(400, "'name' must be 1-64 characters")
        from voice.transports.livekit import mint_room_token

        identity = f"user-{uuid.uuid4().hex[:10]}"
        value = mint_room_token(lk, room=room, identity=identity, name=name)
        return JSONResponse({"url": lk.url, "room": room, "identity": identity, "token": value,
                             "ttl_s": lk.token_ttl_s, "agent_name": lk.agent_name or None},
                            headers={"Cache-Control": "no-store"})

    @app.post("/api/offer")
    async def offer(request: Request):
        security.check_session_request(settings, request.headers)
        if state.draining:
            raise ApiError(503, "shutting down", detail="the server is shutting down; try again shortly")
        data = await read_json_body(request)
        return await _handle_offer(state, data)

    @app.patch("/api/offer")
    async def patch_offer(request: Request):
        security.check_session_request(settings, request.headers)
        data = await read_json_body(request)
        await _handle_patch(state, data)
        return {"ok": True}

    @app.get("/")
    async def index():
        page = web / "index.html"
        if not page.is_file():
            raise ApiError(404, "web client not found")
        return FileResponse(page, headers={"Cache-Control": "no-cache"})

    if web.is_dir():
        app.mount("/", StaticFiles(directory=web), name="web")
    return app


async def _handle_offer(state: ServiceState, data: dict[str, Any]) -> dict[str, Any]:
    from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection

    from voice.events import EventLog, SessionClock, new_session_id
    from voice.transports.webrtc import WebRTCSession, ice_servers

    sdp = data.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise ApiError(400, "'sdp' must be a non-empty string")
    if data.get("type") != "offer":
        raise ApiError(400, "'type' must be \"offer\"")
    pc_id = _optional_str(data, "pc_id")
    pipeline = data.get("pipeline", state.settings.pipeline)
    if pipeline not in PIPELINES:
        raise ApiError(400, f"'pipeline' must be one of {', '.join(PIPELINES)}")
    check_offer_sdp(sdp)

    if pc_id is not None:  # renegotiation of a live peer connection
        live = state.webrtc.get(pc_id)
        if live is None:
            if pc_id in state.ended:
                raise ApiError(410, "that session has ended; start a new one without pc_id")
            raise ApiError(404, "unknown pc_id; start a new session without pc_id")
        try:
            await live.connection.renegotiate(sdp=sdp, type="offer", restart_pc=False)
        except Exception as e:
            raise ApiError(400, f"could not renegotiate: {e}") from None
        answer = live.connection.get_answer()
        return {**answer, "session": live.id}

    if state.draining:
        raise ApiError(503, "shutting down", detail="the server is shutting down; try again shortly")
    slot = state.registry.try_reserve("webrtc")
    if slot is None:
        raise ApiError(503, "busy", detail=f"all {state.registry.max_sessions} sessions are in use")
    try:
        await state.ensure_pipeline(pipeline)
        refusal = getattr(state.runtime, "native_refusal", None)  # admission: a free batch slot, a margin
        why = refusal() if pipeline == "native" and callable(refusal) else None
        if why:
            raise ApiError(503, "busy", detail=why)
    except ApiError:
        state.registry.release(slot)
        raise
    settings = state.settings if pipeline == state.settings.pipeline else \
        state.settings.model_copy(update={"pipeline": pipeline})
    connection = None
    try:
        connection = SmallWebRTCConnection(ice_servers=ice_servers(state.settings), connection_timeout_secs=30)
        await connection.initialize(sdp=sdp, type="offer")
        answer = connection.get_answer()
        if answer is None:
            raise RuntimeError("no SDP answer")
        session = WebRTCSession(connection, state.runtime, settings, EventLog(new_session_id(), SessionClock()))
    except Exception as e:
        state.registry.release(slot)
        if connection is not None:
            try:
                await connection.pc.close()
            except Exception:
                pass
        raise ApiError(400, f"could not negotiate the offer: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    state.webrtc[connection.pc_id] = session
    state.sessions_started += 1

    async def run():
        try:
            await session.run()
        finally:
            state.webrtc.pop(connection.pc_id, None)
            state.remember_ended(connection.pc_id)
            state.registry.release(slot)

    task = asyncio.create_task(run(), name=f"webrtc-session-{session.id}")
    state.tasks.add(task)
    task.add_done_callback(state.tasks.discard)
    logger.info(f"webrtc session {session.id} started (pc {connection.pc_id}, pipeline {pipeline}, "
                f"{state.registry.live}/{state.registry.max_sessions} live)")
    return {**answer, "session": session.id}


async def _handle_patch(state: ServiceState, data: dict[str, Any]) -> None:
    from aiortc.sdp import candidate_from_sdp

    pc_id = _optional_str(data, "pc_id")
    if pc_id is None:
        raise ApiError(400, "'pc_id' is required")
    live = state.webrtc.get(pc_id)
    if live is None:
        if pc_id in state.ended:
            raise ApiError(410, "that session has ended")
        raise ApiError(404, "unknown pc_id")
    candidates = data.get("candidates")
    if not isinstance(candidates, list) or len(candidates) > MAX_CANDIDATES:
        raise ApiError(400, f"'candidates' must be a list of at most {MAX_CANDIDATES} candidates")
    parsed = []
    for c in candidates:
        if not isinstance(c, dict):
            raise ApiError(400, "each candidate must be an object")
        text = c.get("candidate")
        mid = c.get("sdp_mid", c.get("sdpMid"))
        index = c.get("sdp_mline_index", c.get("sdpMLineIndex"))
        if text in (None, ""):
            parsed.append(None)  # end-of-candidates
            continue
        if not isinstance(text, str) or (mid is None and index is None):
            raise ApiError(400, "a candidate needs 'candidate' and 'sdp_mid' or 'sdp_mline_index'")
        try:
            cand = candidate_from_sdp(text.removeprefix("a=").removeprefix("candidate:"))
        except Exception:
            raise ApiError(400, f"malformed ICE candidate: {text[:80]!r}") from None
        cand.sdpMid = mid if isinstance(mid, str) else None
        cand.sdpMLineIndex = index if isinstance(index, int) else None
        parsed.append(cand)
    for cand in parsed:
        try:
            await live.connection.add_ice_candidate(cand)
        except Exception as e:
            raise ApiError(400, f"could not add ICE candidate: {e}") from None


async def _shutdown(state: ServiceState, sip_handle: Any) -> None:
    for session in list(state.webrtc.values()):
        await session.stop("server shutting down")
    if state.tasks:
        await asyncio.wait(list(state.tasks), timeout=10)
    if sip_handle is not None:
        stop = getattr(sip_handle, "stop", None)
        if isinstance(sip_handle, asyncio.Task):
            sip_handle.cancel()
        elif callable(stop):
            result = stop()
            if inspect.isawaitable(result):
                await result


# -------------------------------------------------------------------------- serve


class BackgroundServer:
    """The app under uvicorn in a thread of its own, on a free 127.0.0.1 port (tests, tools).

    ``with BackgroundServer(app) as url: ...``; the sessions run on the
    server thread's event loop, as they would in ``voice serve``.
    """

    def __init__(self, app, host: str = "127.0.0.1"):
        import socket

        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._server = None
        self._thread = None

    def __enter__(self) -> str:
        import threading
        import time

        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on",
                                                     access_log=False))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self.sock]},
                                        name="voice-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)
        self.sock.close()


def _sip_starter():
    """``voice.transports.sip.start_sip`` if this build has it, else None."""
    if importlib.util.find_spec("voice.transports.sip") is None:
        return None
    module = importlib.import_module("voice.transports.sip")
    return getattr(module, "start_sip", None)


def serve(settings, sip: bool = False) -> None:
    """Load the models once and serve the page, the API and (with ``sip``) the phone agent."""
    import uvicorn

    from voice.runtime import Runtime

    starter = None
    if sip:
        starter = _sip_starter()
        if starter is None:
            print("voice: error: SIP is not available in this build "
                  "(voice.transports.sip.start_sip is missing); run without --sip", file=sys.stderr)
            raise SystemExit(2)
    from voice import security

    problem = security.startup_problem(settings)
    if problem is not None:
        print(f"voice: error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    if settings.store.enabled:  # a bad store URL is a one-line error before the models load
        from voice.store import StoreError, shared_writer

        try:
            shared_writer(settings)
        except (StoreError, OSError) as e:
            print(f"voice: error: {e}", file=sys.stderr)
            raise SystemExit(2)
    runtime = Runtime.load(settings)
    app = create_app(settings, runtime, sip_starter=starter)
    shown = "localhost" if settings.host in ("0.0.0.0", "::", "127.0.0.1") else settings.host
    print(f"voice agent ready (models loaded in {runtime.load_seconds:.1f}s): "
          f"open http://{shown}:{settings.port}/ in a browser", flush=True)
    if shown != "localhost":
        print("note: browsers only allow the microphone on https:// or localhost pages; "
              "put a TLS proxy in front for other hosts", flush=True)
    # loop="auto" runs on uvloop (a dependency): next to four streaming WebRTC sessions
    # the agent used 38 % of a core against 41 % on asyncio's own loop (docs/scaling.md).
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                            access_log=False, lifespan="on", loop="auto")
    graceful_server(config, app.state.voice, settings.security.shutdown_grace_s).run()
    from voice.store import close_writers

    close_writers()


def graceful_server(config, state: ServiceState, grace_s: float):
    """uvicorn's Server with a graceful first SIGTERM/SIGINT (``voice serve``).

    The first signal drains (:meth:`ServiceState.drain`: new offers get 503,
    live turns finish within the grace period, sessions end, records close),
    then the server stops as usual and the process exits 0. A second signal
    stops at once (uvicorn's own handling).
    """
    import signal

    import uvicorn

    class GracefulServer(uvicorn.Server):
        def __init__(self):
            super().__init__(config)
            self._loop = None
            self._draining = False

        async def startup(self, sockets=None):
            self._loop = asyncio.get_running_loop()
            await super().startup(sockets=sockets)

        def handle_exit(self, sig, frame):
            if self._draining or self._loop is None:
                return super().handle_exit(sig, frame)
            self._draining = True
            print(f"voice: {signal.Signals(sig).name} received, draining (up to {grace_s:.0f}s)",
                  file=sys.stderr, flush=True)
            self._loop.call_soon_threadsafe(self._start_drain)

        def _start_drain(self):
            self._drain_task = asyncio.ensure_future(self._drain())  # held: not garbage-collected mid-drain

        async def _drain(self):
            try:
                await state.drain(grace_s)
            except Exception as e:
                logger.exception(f"drain failed: {e}")
            finally:
                self.should_exit = True

    return GracefulServer()
