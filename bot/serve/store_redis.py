"""Conversations in Redis: one list of events per conversation, a second list of just its state
events (so a message is answered without reading the whole conversation), a set of conversations
waiting for a person, and redis-py's lock, which works across processes and expires if its holder
dies (it is extended while a reply is still being written)."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

from bot.serve.store import HANDOFF, RESUME, STATE_EVENTS, ConversationBusy, ConversationStore, Event, StoreUnavailable

PREFIX = "bot:"
# The first entry of every state list: it holds all the conversation's state events. A list
# without it only has those appended since this store began keeping state lists (see _build_state).
BUILT = "#built"


class RedisStore(ConversationStore):
    kind = "redis"
    MAX_CONNECTIONS = 50

    def __init__(self, client, lock_expiry_s: float):
        super().__init__()
        self._redis = client
        self._expiry = lock_expiry_s

    @classmethod
    async def connect(cls, url: str, *, lock_expiry_s: float = 60) -> RedisStore:
        import redis.asyncio as redis
        from redis.exceptions import RedisError

        # A blocking pool: past MAX_CONNECTIONS commands at once (a thousand live feeds looking for
        # new events), a command waits its turn; redis-py's default pool fails with "Too many connections".
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=cls.MAX_CONNECTIONS, timeout=None, decode_responses=True, socket_connect_timeout=5
        )
        client = redis.Redis.from_pool(pool)
        try:
            await client.ping()
        except (RedisError, OSError) as e:
            await client.aclose()
            raise StoreUnavailable(f"can't reach the Redis tracker store at {url}: {e}") from None
        return cls(client, lock_expiry_s)

    async def _append(self, sender: str, event: Event) -> int:
        events_key, body = f"{PREFIX}events:{sender}", json.dumps(event, ensure_ascii=False)
        if event["type"] not in STATE_EVENTS:
            async with self._redis.pipeline(transaction=True) as pipe:
                (length,) = await pipe.rpush(events_key, body).execute()
            return length  # the list's new length: 1, 2, 3... within the conversation

        async def write(pipe) -> int:
            # A state event goes to the state list too, with its seq, in the same MULTI as the
            # event itself; WATCH on the events list keeps that seq the list's next length.
            seq = await pipe.llen(events_key) + 1
            pipe.multi()
            pipe.rpush(events_key, body)
            pipe.rpush(f"{PREFIX}state:{sender}", json.dumps(dict(event, seq=seq), ensure_ascii=False))
            if event["type"] == HANDOFF:
                pipe.zadd(f"{PREFIX}waiting", {sender: event["timestamp"]})
            elif event["type"] == RESUME:
                pipe.zrem(f"{PREFIX}waiting", sender)
            return seq

        return await self._redis.transaction(write, events_key, value_from_callable=True)

    async def events(self, sender: str, *, after: int = 0, last: int | None = None) -> list[Event]:
        start = after if last is None else max(after, await self._redis.llen(f"{PREFIX}events:{sender}") - last)
        bodies = await self._redis.lrange(f"{PREFIX}events:{sender}", start, -1)
        return [dict(json.loads(body), seq=start + i + 1) for i, body in enumerate(bodies)]

    async def context(self, sender: str, last: int) -> tuple[list[Event], list[Event]]:
        length, state, window = await self._read_context(sender, last)
        if length and state[:1] != [BUILT]:
            await self._build_state(sender)
            length, state, window = await self._read_context(sender, last)
        start = length - len(window)
        return [dict(json.loads(body), seq=start + i + 1) for i, body in enumerate(window)], [json.loads(body) for body in state[1:]]

    async def _read_context(self, sender: str, last: int) -> tuple[int, list[str], list[str]]:
        """The events list's length, the state list and the last `last` events, in one MULTI."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.llen(f"{PREFIX}events:{sender}").lrange(f"{PREFIX}state:{sender}", 0, -1)
            if last > 0:
                pipe.lrange(f"{PREFIX}events:{sender}", -last, -1)
            length, state, *window = await pipe.execute()
        return length, state, window[0] if window else []

    async def _build_state(self, sender: str) -> None:
        """A conversation stored before this store kept state lists has none (or only the state
        events appended since): build its state list, once, from the whole events list."""
        events_key, state_key = f"{PREFIX}events:{sender}", f"{PREFIX}state:{sender}"

        async def build(pipe) -> None:
            events = [json.loads(body) for body in await pipe.lrange(events_key, 0, -1)]
            state = [json.dumps(dict(e, seq=i + 1), ensure_ascii=False) for i, e in enumerate(events) if e["type"] in STATE_EVENTS]
            pipe.multi()
            pipe.delete(state_key)  # any state events already in it are in `events` too
            pipe.rpush(state_key, BUILT, *state)

        await self._redis.transaction(build, events_key)  # redone if an event is appended meanwhile

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
