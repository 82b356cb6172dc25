"""What the command line starts: ``voice serve --sip`` (:func:`start_sip`, one agent or the kamailio
front with its workers), :func:`serve_sip` and ``voice call sip:user@host`` (:func:`place_call`)."""

from __future__ import annotations

import asyncio
from typing import Any

from .agent import END_GRACE_S, SessionFn, SIPAgent
from .call import SIPCall
from .config import SIPSettings


async def start_sip(app_state: Any) -> SIPAgent:
    """What ``voice serve --sip`` calls (voice.service): start the phone agent on the service's
    models, settings (``settings.sip``) and session registry; returns the agent (``await agent.stop()``).

    With ``sip.workers > 1`` it starts the kamailio front and its worker processes instead
    (:class:`voice.transports.sip.front.SIPFront`, also stopped with ``await handle.stop()``).
    """
    app_settings = app_state.settings
    sip = getattr(app_settings, "sip", None) or SIPSettings()
    if sip.workers > 1:
        from .front import start_front

        return await start_front(app_state)
    agent = SIPAgent(sip, runtime=app_state.runtime, app_settings=app_settings,
                     registry=getattr(app_state, "registry", None), app_state=app_state)
    await agent.start()
    return agent


async def serve_sip(runtime: Any, app_settings: Any, sip_settings: SIPSettings | None = None, *,
                    session: SessionFn | None = None, stop_event: asyncio.Event | None = None) -> None:
    """Run the phone agent until ``stop_event`` is set (or the task is cancelled).

    What ``voice serve --sip`` starts: each answered call runs
    ``voice.session.run_session`` on its own SIPCallTransport.
    """
    sip = sip_settings or getattr(app_settings, "sip", None) or SIPSettings()
    agent = SIPAgent(sip, session, runtime=runtime, app_settings=app_settings)
    await agent.start()
    try:
        if stop_event is None:
            await asyncio.Event().wait()
        else:
            await stop_event.wait()
    finally:
        await agent.stop()


async def place_call(uri: str, runtime: Any = None, app_settings: Any = None, *,
                     sip_settings: SIPSettings | None = None, session: SessionFn | None = None,
                     answer_timeout: float = 60.0) -> SIPCall:
    """Call ``uri`` and talk until either side hangs up (what ``voice call sip:user@host`` runs).

    Uses a private agent on a free port (so it works next to a running
    ``voice serve --sip``), with the SIP settings' registrar if one is
    configured. Returns the ended call (``call.stats()`` has the numbers).
    """
    sip = sip_settings or getattr(app_settings, "sip", None) or SIPSettings()
    sip = sip.model_copy(update={"port": 0})
    agent = SIPAgent(sip, session, runtime=runtime, app_settings=app_settings)
    await agent.start()
    try:
        if sip.registrar_uri:
            for _ in range(100):  # up to 10 s for the REGISTER round trip
                if agent.registered or (agent.reg_status or 0) >= 300:
                    break
                await asyncio.sleep(0.1)
        call = await agent.place_call(uri, timeout=answer_timeout)
        await call.wait_ended()
        task = agent._tasks.get(call.session_id)
        if task is not None:
            await asyncio.wait({task}, timeout=END_GRACE_S + 1)
        return call
    finally:
        await agent.stop()
