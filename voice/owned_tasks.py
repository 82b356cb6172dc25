"""Frame processors whose background tasks end with the session."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

from pipecat.processors.frame_processor import FrameProcessor


class OwnedTasksProcessor(FrameProcessor):
    """Tasks started with :meth:`start_owned_task` are cancelled at cleanup.

    A session that ends mid-decode or mid-prediction leaves no task behind
    (pipecat warns about dangling ones); the executor call inside just finishes.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._owned: set[asyncio.Task] = set()

    def start_owned_task(self, coro: Coroutine, name: str) -> asyncio.Task:
        task = self.create_task(coro, name=name)
        self._owned.add(task)
        task.add_done_callback(self._owned.discard)
        return task

    async def cleanup(self):
        await super().cleanup()
        for task in list(self._owned):
            await self.cancel_task(task)
