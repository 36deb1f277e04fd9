"""One fine-tune on a shared engine, as an engine of its own: what a brand's response model
generates with when several brands share one base model (bot.engine.adapters).

Every request it streams goes to the shared engine with its adapter and under its own tool-call
constraint (each brand declares its own actions). Closing it frees its adapter's slot once the
requests using it have finished; the shared engine goes on serving the others.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from bot.engine.constraint import ToolCallConstraint
from bot.engine.protocol import PLAIN, Decoding, Engine, EngineStats, Finished
from bot.engine.requests import ThreadedEngine


class AdapterEngine(Engine):
    """`adapter`: the name the shared engine's AdapterBank knows it by; None: the base model."""

    def __init__(self, shared: ThreadedEngine, adapter: str | None, constraint: ToolCallConstraint | None):
        self.shared, self.adapter, self.constraint = shared, adapter, constraint
        self.name = shared.name
        self._in_flight = 0

    async def stream(
        self, prompt_ids: Sequence[int], max_new_tokens: int, decoding: Decoding = PLAIN
    ) -> AsyncIterator[str | Finished]:
        self._in_flight += 1
        try:
            chosen = replace(decoding, adapter=self.adapter)
            async for item in self.shared.stream(prompt_ids, max_new_tokens, chosen, constraint=self.constraint):
                yield item
        finally:
            self._in_flight -= 1

    async def close(self) -> None:
        if self.adapter is not None:
            await self.shared.unload_adapter(self.adapter)

    def stats(self) -> EngineStats:
        return self.shared.stats()

    def in_flight(self) -> int:
        return self._in_flight
