"""One timed run of the batching engine over many prompts, as the engine benchmarks make it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bot.engine.batch_engine import BatchingEngine
from bot.engine.kv import common_prefix
from bot.engine.protocol import EngineStats, Finished


@dataclass(frozen=True)
class EngineRun:
    seconds: float  # the prompts' wall-clock time, after one warm-up reply
    results: list[Finished]  # in the prompts' order
    before: EngineStats  # the engine's counts before the timed prompts, and after them
    after: EngineStats

    def counted(self, name: str) -> int:
        """How much of a count of EngineStats the timed prompts added."""
        return getattr(self.after, name) - getattr(self.before, name)


async def engine_run(
    weights, prompts: list[list[int]], *, batch: int, max_new_tokens: int, constraint=None, speculation: bool = True
) -> EngineRun:
    """Every prompt through a new batching engine, `batch` rows at a time, greedy."""
    engine = BatchingEngine(
        weights.model,
        weights.tokenizer,
        max_length=max(map(len, prompts)) + max_new_tokens,
        max_batch=batch,
        max_queue=len(prompts),
        pinned_prefix=common_prefix(prompts),
        constraint=constraint,
        speculation=speculation,
    )

    async def one(ids: list[int]) -> Finished:
        async for item in engine.stream(ids, max_new_tokens):
            if isinstance(item, Finished):
                return item

    try:
        await one(prompts[0])  # warm up: the first forward passes are slower
        before = engine.stats()
        started = time.monotonic()
        results = await asyncio.gather(*(one(p) for p in prompts))
        seconds = time.monotonic() - started
        after = engine.stats()
    finally:
        await engine.close()
    return EngineRun(seconds, list(results), before, after)
