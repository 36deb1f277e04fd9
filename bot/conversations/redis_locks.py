"""Conversation locks in Redis: redis-py's lock, which works across processes and expires if its
holder dies (it is extended while a reply is still being written). The Redis store takes its
locks from here; so does any store when `tracker_store.lock_url` names a Redis server (several
front-ends on one PostgreSQL or SQLite database then share the locks there). The keys are
PREFIXlock:SENDER (`tracker_store.key_prefix`, default `bot:`)."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from bot.conversations.store import ConversationBusy, StoreUnavailable


class RedisLocks:
    """One lock per conversation: a holder at a time, ConversationBusy after the timeout."""

    def __init__(self, client, expiry_s: float, prefix: str, *, owns_client: bool = False):
        self._redis = client
        self._expiry = expiry_s
        self._prefix = prefix
        self._owns_client = owns_client  # a client of its own (lock_url) is closed with the locks

    @classmethod
    async def connect(cls, url: str, *, expiry_s: float, prefix: str) -> RedisLocks:
        """The locks of the Redis server at `url` (tracker_store.lock_url), checked reachable."""
        import redis.asyncio as redis
        from redis.exceptions import RedisError

        client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5)
        try:
            await client.ping()
        except BaseException as e:
            await client.aclose()
            if isinstance(e, (RedisError, OSError)):
                raise StoreUnavailable(
                    f"can't reach the Redis lock server at {url} (tracker_store.lock_url): {e}"
                ) from None
            raise
        return cls(client, expiry_s, prefix, owns_client=True)

    @asynccontextmanager
    async def hold(self, sender: str, timeout: float):
        from redis.exceptions import LockError

        lock = self._redis.lock(f"{self._prefix}lock:{sender}", timeout=self._expiry, blocking_timeout=timeout)
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
        if self._owns_client:
            await self._redis.aclose()
