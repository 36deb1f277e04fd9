"""The model in service, swapped without downtime: a reload (the console's, `bot serve`'s hot
reload) puts a new model in while answers already running finish with the one they started with."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.engine.response_model import ResponseModel


class ModelHolder:
    """The model in service. A reload swaps in a new one: answers already running finish with
    the model they started with, and the old model's engine is closed once the last one ends."""

    def __init__(self, model: ResponseModel):
        self.current = model
        self._users: dict[int, int] = {}  # id(model) -> answers using it
        self._retired: dict[int, asyncio.Event] = {}  # id(model) -> set once it is closed

    @asynccontextmanager
    async def borrow(self) -> AsyncIterator[ResponseModel]:
        model = self.current  # taken and counted with no await in between: a swap can't slip in
        key = id(model)
        self._users[key] = self._users.get(key, 0) + 1
        try:
            yield model
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                if key in self._retired:
                    await model.close()
                    self._retired.pop(key).set()

    async def swap(self, model: ResponseModel) -> ResponseModel:
        """Serve `model` from now on; returns the previous one once it is closed (after the
        answers still using it have finished)."""
        previous, self.current = self.current, model
        key = id(previous)
        if self._users.get(key):
            closed = self._retired[key] = asyncio.Event()
            await closed.wait()
        else:
            await previous.close()
        return previous

    async def close(self) -> None:
        await self.current.close()
