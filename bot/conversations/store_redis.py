"""Conversations in Redis: one list of events per conversation, a second list of just its state
events (so a message is answered without reading the whole conversation), a set of conversations
waiting for a person, and the locks of bot.conversations.redis_locks (redis-py's lock, which works across
processes and expires if its holder dies). Every key starts with the store's prefix
(`tracker_store.key_prefix`, default `bot:`)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from bot.conversations.events import HANDOFF, RESUME, STATE_EVENTS, USER, Event
from bot.conversations.migrations import Migrations
from bot.conversations.redis_locks import RedisLocks
from bot.conversations.store import ConversationStore, ConversationSummary, StoreUnavailable, log

PREFIX = "bot:"
# The first entry of every state list: it holds all the conversation's state events. A list
# without it only has those appended since this store began keeping state lists (see _build_state).
BUILT = "#built"


REDIS_MIGRATIONS = Migrations("redis")


@REDIS_MIGRATIONS
async def m001_events(client, prefix: str) -> None:
    """The layout from before migrations (events:SENDER, state:SENDER, waiting, lock:SENDER):
    a database written then is already in it."""


async def migrate_redis(client, prefix: str, where: str, migrations: Migrations = REDIS_MIGRATIONS) -> list[str]:
    """Apply the pending migrations, one process at a time; their names. What has been applied is
    the hash PREFIXmigrations (name: when)."""
    done_key = f"{prefix}migrations"
    async with client.lock(f"{prefix}migrations:lock", timeout=300, blocking_timeout=300):
        pending = migrations.pending(await client.hkeys(done_key), where)
        for name, step in pending:
            await step(client, prefix)
            await client.hset(done_key, name, datetime.now(UTC).isoformat(timespec="seconds"))
    return [name for name, _ in pending]


class RedisStore(ConversationStore):
    kind = "redis"
    MAX_CONNECTIONS = 50

    def __init__(self, client, lock_expiry_s: float, prefix: str = PREFIX):
        super().__init__()
        self._redis = client
        self._prefix = prefix
        self._locks = RedisLocks(client, lock_expiry_s, prefix)

    @classmethod
    async def connect(cls, url: str, *, lock_expiry_s: float = 60, prefix: str = PREFIX) -> RedisStore:
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
            applied = await migrate_redis(client, prefix, f"the Redis tracker store at {url} (keys {prefix}*)")
        except BaseException as e:
            await client.aclose()
            if isinstance(e, (RedisError, OSError)):
                raise StoreUnavailable(f"can't reach the Redis tracker store at {url}: {e}") from None
            raise
        if applied:
            log.info("Redis tracker store: applied migrations %s", ", ".join(applied))
        return cls(client, lock_expiry_s, prefix)

    async def _append(self, sender: str, event: Event) -> int:
        events_key, body = f"{self._prefix}events:{sender}", json.dumps(event, ensure_ascii=False)
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
            pipe.rpush(f"{self._prefix}state:{sender}", json.dumps(dict(event, seq=seq), ensure_ascii=False))
            if event["type"] == HANDOFF:
                pipe.zadd(f"{self._prefix}waiting", {sender: event["timestamp"]})
            elif event["type"] == RESUME:
                pipe.zrem(f"{self._prefix}waiting", sender)
            return seq

        return await self._redis.transaction(write, events_key, value_from_callable=True)

    async def events(self, sender: str, *, after: int = 0, last: int | None = None) -> list[Event]:
        start = after if last is None else max(after, await self._redis.llen(f"{self._prefix}events:{sender}") - last)
        bodies = await self._redis.lrange(f"{self._prefix}events:{sender}", start, -1)
        return [dict(json.loads(body), seq=start + i + 1) for i, body in enumerate(bodies)]

    async def context(self, sender: str, last: int) -> tuple[list[Event], list[Event]]:
        length, state, window = await self._read_context(sender, last)
        if length and state[:1] != [BUILT]:
            await self._build_state(sender)
            length, state, window = await self._read_context(sender, last)
        start = length - len(window)
        recent = [dict(json.loads(body), seq=start + i + 1) for i, body in enumerate(window)]
        state_events = [json.loads(body) for body in state[1:]]  # state[0] is the BUILT marker
        return recent, state_events

    async def _read_context(self, sender: str, last: int) -> tuple[int, list[str], list[str]]:
        """The events list's length, the state list and the last `last` events, in one MULTI."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.llen(f"{self._prefix}events:{sender}").lrange(f"{self._prefix}state:{sender}", 0, -1)
            if last > 0:
                pipe.lrange(f"{self._prefix}events:{sender}", -last, -1)
            length, state, *window = await pipe.execute()
        return length, state, window[0] if window else []

    async def _build_state(self, sender: str) -> None:
        """A conversation stored before this store kept state lists has none (or only the state
        events appended since): build its state list, once, from the whole events list."""
        events_key, state_key = f"{self._prefix}events:{sender}", f"{self._prefix}state:{sender}"

        async def build(pipe) -> None:
            events = [json.loads(body) for body in await pipe.lrange(events_key, 0, -1)]
            numbered = [dict(e, seq=i + 1) for i, e in enumerate(events)]
            state = [json.dumps(e, ensure_ascii=False) for e in numbered if e["type"] in STATE_EVENTS]
            pipe.multi()
            pipe.delete(state_key)  # any state events already in it are in `events` too
            pipe.rpush(state_key, BUILT, *state)

        await self._redis.transaction(build, events_key)  # redone if an event is appended meanwhile

    async def _event_keys(self) -> list[str]:
        """Every conversation's events key (SCAN, so the server is never blocked)."""
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", f"{self._prefix}events:") + "*"
        return [key async for key in self._redis.scan_iter(match=pattern, count=1000)]

    async def _ends(self) -> list[tuple[str, int, str, str]]:
        """(sender, length, first event, last event) of every non-empty conversation, 500 keys a MULTI."""
        keys, events_key, found = await self._event_keys(), f"{self._prefix}events:", []
        for start in range(0, len(keys), 500):
            batch = keys[start : start + 500]
            async with self._redis.pipeline(transaction=True) as pipe:
                for key in batch:
                    pipe.llen(key).lindex(key, 0).lindex(key, -1)
                replies = await pipe.execute()
            for key, length, first, last in zip(batch, replies[::3], replies[1::3], replies[2::3], strict=True):
                if length:
                    found.append((key.removeprefix(events_key), length, first, last))
        return found

    async def unanswered(self) -> list[tuple[str, int]]:
        return sorted(
            (sender, length) for sender, length, _, last in await self._ends() if json.loads(last)["type"] == USER
        )

    async def waiting_for_agent(self) -> list[str]:
        return await self._redis.zrange(f"{self._prefix}waiting", 0, -1)

    async def conversations(self) -> list[ConversationSummary]:
        found = [
            ConversationSummary(sender, json.loads(first)["timestamp"], json.loads(last)["timestamp"], length)
            for sender, length, first, last in await self._ends()
        ]
        return sorted(found, key=lambda c: c.last_active, reverse=True)

    async def delete(self, senders: list[str]) -> int:
        if not senders:
            return 0
        async with self._redis.pipeline(transaction=True) as pipe:
            for sender in senders:
                pipe.exists(f"{self._prefix}events:{sender}")
            pipe.delete(*(f"{self._prefix}{kind}:{sender}" for sender in senders for kind in ("events", "state")))
            pipe.zrem(f"{self._prefix}waiting", *senders)
            *existed, _, _ = await pipe.execute()
        return sum(existed)

    async def _rewrite(self, sender: str, events: list[Event]) -> None:
        events_key = f"{self._prefix}events:{sender}"
        async with self._redis.pipeline(transaction=True) as pipe:
            for event in events:
                without_seq = {k: v for k, v in event.items() if k != "seq"}  # the position in the list is the seq
                pipe.lset(events_key, event["seq"] - 1, json.dumps(without_seq, ensure_ascii=False))
            # the state list is built again from the events when next read (see _build_state)
            pipe.delete(f"{self._prefix}state:{sender}")
            await pipe.execute()

    def _own_lock(self, sender: str, timeout: float):
        return self._locks.hold(sender, timeout)

    async def _close(self) -> None:
        await self._redis.aclose()
