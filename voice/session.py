"""One conversation: the shared pipeline and turn-taking controller on any pipecat transport."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipecat.frames.frames import EndFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.transports.base_transport import BaseTransport
from pipecat.workers.runner import WorkerRunner

from voice.asr import StreamingASRProcessor
from voice.conversation import Conversation
from voice.gate import ReplyGate
from voice.echo import EchoGuard, PlaybackTap
from voice.events import EventLog, new_session_id
from voice.llm import make_llm_service
from voice.native import NativeDuplexProcessor
from voice.taps import LLMTap, PlayedTextRecorder, TTSTap
from voice.tools import CallActionRunner, session_tools
from voice.tts import ClauseChunker, PiperTTSService
from voice.smart_turn import SmartTurnProcessor
from voice.turn.controller import TurnController
from voice.turn.processor import TurnProcessor
from voice.vad import VADProcessor


@dataclass
class Session:
    events: EventLog
    conversation: Conversation
    turn: TurnProcessor
    worker: PipelineWorker

    @property
    def id(self) -> str:
        return self.events.session_id

    def busy(self) -> bool:
        """The agent owes a reply or is still talking."""
        return self.turn.controller.state.value in ("user_paused", "thinking", "agent_speaking")

    async def end(self) -> None:
        await self.worker.queue_frame(EndFrame())

    async def cancel(self) -> None:
        await self.worker.cancel()


def build_session(transport: BaseTransport, runtime, settings, events: EventLog,
                  pipeline_kind: str = "cascaded", echo_guard: bool = False, audio_recorder=None,
                  probe=None, call_control=None) -> Session:
    """The same front (VAD, ASR, turn controller) and back (gate, output) around either engine.

    ``probe`` (a FrameProcessor, e.g. the load benchmark's input-lag meter) goes
    in just before the turn controller. ``call_control`` (voice.tools.CallControl,
    from the transport) is what the call-control tools act on: hang up, transfer, DTMF.
    """
    conversation = Conversation(system_prompt=settings.llm.system_prompt)
    native = pipeline_kind == "native"
    turn_config = settings.turn.controller_config(speculate=not native)
    turn = TurnProcessor(TurnController(turn_config), conversation, events, apology=settings.apology,
                         engine=pipeline_kind, backchannels=runtime.backchannels if turn_config.backchannels else ())
    if native:
        engine = [NativeDuplexProcessor(runtime.native_model(), events)]
    else:
        tools = session_tools(settings, events, conversation, call_control)  # voice/tools; None: no tools
        engine = [
            make_llm_service(settings, runtime.local_llm, executor=runtime.reply_threads, tools=tools),
            LLMTap(conversation, events),
            ClauseChunker(),
            PiperTTSService(runtime.synth, executor=runtime.reply_threads),
        ]
    guard = EchoGuard(events.clock, ratio=settings.vad.echo_ratio) if echo_guard else None
    pipeline = Pipeline([
        transport.input(),
        *([audio_recorder.mic_tap()] if audio_recorder else []),  # store.record_audio (voice/recording.py)
        VADProcessor(settings.vad, echo_guard=guard),
        # ASR before Smart Turn: both queue on one analysis thread, the transcript first.
        StreamingASRProcessor(runtime.transcriber, executor=runtime.analysis,
                              partial_interval_s=settings.asr.partial_interval_s),
        SmartTurnProcessor(runtime.smart_turn, executor=runtime.analysis,
                           needed=turn.controller.smart_turn_matters),
        *([probe] if probe is not None else []),
        turn,
        *engine,
        TTSTap(conversation, events),
        ReplyGate(),
        transport.output(),
        # Hang up / transfer / DTMF once the speech before them has played (voice/tools/actions.py).
        *([CallActionRunner(call_control, events, conversation)] if call_control is not None else []),
        *([audio_recorder.agent_tap()] if audio_recorder else []),
        *([PlaybackTap(guard)] if guard else []),
        PlayedTextRecorder(conversation, events),
    ])
    # The pipeline's audio rates are the transport's: TTS then renders straight at
    # the output rate and nothing is resampled twice.
    out_params = getattr(transport.output(), "_params", None)
    out_rate = getattr(out_params, "audio_out_sample_rate", None) or 24000
    worker = PipelineWorker(pipeline, params=PipelineParams(enable_metrics=False, audio_in_sample_rate=16000,
                                                            audio_out_sample_rate=out_rate),
                            idle_timeout_secs=None, cancel_on_idle_timeout=False, enable_rtvi=False)
    return Session(events, conversation, turn, worker)


async def run_session(transport: BaseTransport, runtime, settings, *, transport_name: str,
                      session_id: str | None = None, echo_guard: bool = False,
                      events: EventLog | None = None, caller: str | None = None,
                      callee: str | None = None, on_start=None, pipeline: str | None = None,
                      probe=None, call_control=None) -> EventLog:
    """Run one conversation until the transport ends it; returns its event log."""
    events = events or EventLog(session_id or new_session_id())
    pipeline_kind = pipeline or settings.pipeline
    # --- session record (voice/store): every transport gets one, written turn by turn ---
    recorder, audio = _attach_records(settings, events)
    session = build_session(transport, runtime, settings, events, pipeline_kind, echo_guard, audio_recorder=audio,
                            probe=probe, call_control=call_control)
    if on_start is not None:
        on_start(session)
    events.emit("session_start", transport=transport_name, pipeline=pipeline_kind,
                caller=caller, callee=callee, echo_guard=echo_guard)
    try:
        with runtime.sessions.live():
            runner = WorkerRunner(handle_sigint=False, handle_sigterm=False)
            await runner.add_workers(session.worker)
            await runner.run()
    finally:
        events.emit("session_end", turns=len(session.conversation.marks))
        # --- session record: write what is left, finish the audio files ---
        if recorder is not None:
            recorder.close()
        if audio is not None:
            await audio.aclose()
    return events


def _attach_records(settings, events: EventLog):
    """(SessionRecorder, AudioRecorder) for this session per ``settings.store``; (None, None) when off.

    A store that cannot be opened is logged and the session runs unrecorded.
    """
    store = getattr(settings, "store", None)
    if store is None or not store.enabled:
        return None, None
    from loguru import logger

    from voice.store import SessionRecorder, StoreError, shared_writer

    audio = None
    audio_dir = None
    if store.record_audio:
        from voice.recording import AudioRecorder

        audio_dir = Path(settings.data_dir).resolve() / "recordings" / events.session_id
        audio = AudioRecorder(audio_dir, events.clock)
    try:
        writer = shared_writer(settings)
    except (StoreError, OSError) as e:
        logger.error(f"session {events.session_id} is not recorded: {e}")
        return None, audio
    recorder = SessionRecorder(writer, events.session_id, audio_dir=str(audio_dir) if audio_dir else None)
    events.subscribe(recorder)
    return recorder, audio
