"""Conversations in Redis: one list per conversation, a set of conversations waiting for a
person, and redis-py's lock, which works across processes and expires if its holder dies
(it is extended while a reply is still being written)."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

from bot.serve.store import HANDOFF, RESUME, ConversationBusy, ConversationStore, Event, StoreUnavailable

PREFIX = "bot:"


class RedisStore(ConversationStore):
    kind = "redis"

    def __init__(self, client, lock_expiry_s: float):
        super().__init__()
        self._redis = client
        self._expiry = lock_expiry_s

    @classmethod
    async def connect(cls, url: str, *, lock_expiry_s: float = 60) -> RedisStore:
        import redis.asyncio as redis
        from redis.exceptions import RedisError

        client = redis.from_url(url, decode_responses=True, socket_connect_timeout=5)
        try:
            await client.ping()
        except (RedisError, OSError) as e:
            await client.aclose()
            raise StoreUnavailable(f"can't reach the Redis tracker store at {url}: {e}") from None
        return cls(client, lock_expiry_s)

    async def _append(self, sender: str, event: Event) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(f"{PREFIX}events:{sender}", json.dumps(event, ensure_ascii=False))
            if event["type"] == HANDOFF:
                pipe.zadd(f"{PREFIX}waiting", {sender: event["timestamp"]})
            elif event["type"] == RESUME:
                pipe.zrem(f"{PREFIX}waiting", sender)
            length, *_ = await pipe.execute()
        return length  # the list's new length: 1, 2, 3... within the conversation

    async def events(self, sender: str, *, after: int = 0, last: int | None = None) -> list[Event]:
        start = after if last is None else max(after, await self._redis.llen(f"{PREFIX}events:{sender}") - last)
        bodies = await self._redis.lrange(f"{PREFIX}events:{sender}", start, -1)
        return [dict(json.loads(body), seq=start + i + 1) for i, body in enumerate(bodies)]

    async def waiting_for_agent(self) -> list[str]:
        return await self._redis.zrange(f"{PREFIX}waiting", 0, -1)

    @asynccontextmanager
    async def lock(self, sender: str, timeout: float):
        from redis.exceptions import LockError

        lock = self._redis.lock(f"{PREFIX}lock:{sender}", timeout=self._expiry, blocking_timeout=timeout)
        if not await lock.acquire():
            raise ConversationBusy(f"conversation '{sender}' is still answering its previous message")

        async def keep_alive() -> None:
            while True:
                await asyncio.sleep(self._expiry / 3)
                await lock.reacquire()

        keeper = asyncio.create_task(keep_alive())
        try:
            yield
        finally:
            keeper.cancel()
            try:
                await lock.release()
            except LockError:  # expired meanwhile (the process stalled): nothing left to release
                pass

    async def close(self) -> None:
        await self._redis.aclose()
