"""Conversations in PostgreSQL (asyncpg). Locks are session-level advisory locks, so they work
across server processes and are released by the server if the process holding one dies.

A lock holds its connection for the whole reply, so locks take their connections from a pool of
their own: were they drawn from the pool that reads and writes events, as many conversations at
once as that pool has connections would hold them all and wait forever for one to write with."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from contextlib import asynccontextmanager

from bot.conversations.events import HANDOFF, RESUME, STATE_EVENTS, USER, Event
from bot.conversations.migrations import Migrations
from bot.conversations.store import ConversationBusy, ConversationStore, ConversationSummary, StoreUnavailable, log

POSTGRES_MIGRATIONS = Migrations("postgresql")
# One key for every store's migrations: two processes starting at once apply them one after the other.
MIGRATION_LOCK = int.from_bytes(hashlib.blake2b(b"bot migrations", digest_size=8).digest(), "big", signed=True)


@POSTGRES_MIGRATIONS
async def m001_events(connection) -> None:
    """The schema from before migrations: a database made then already has all of it."""
    await connection.execute("""
        CREATE TABLE IF NOT EXISTS bot_events (
            seq BIGSERIAL PRIMARY KEY,
            sender TEXT NOT NULL,
            type TEXT NOT NULL,
            body JSONB NOT NULL
        );
        CREATE INDEX IF NOT EXISTS bot_events_by_sender ON bot_events (sender, seq);
        CREATE INDEX IF NOT EXISTS bot_events_by_sender_type ON bot_events (sender, type, seq);
    """)


async def migrate_postgres(connection, where: str, migrations: Migrations = POSTGRES_MIGRATIONS) -> list[str]:
    """Apply the pending migrations in one transaction, under an advisory lock; their names.
    The tables are those of the connection's search_path (`?search_path=...` in the URL)."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS bot_migrations "
            "(name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        applied = [row["name"] for row in await connection.fetch("SELECT name FROM bot_migrations")]
        pending = migrations.pending(applied, where)
        for name, step in pending:
            await step(connection)
            await connection.execute("INSERT INTO bot_migrations (name) VALUES ($1)", name)
    return [name for name, _ in pending]


CHANNEL = "bot_events"  # LISTEN/NOTIFY: the conversation id of each event appended


def _lock_key(sender: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock."""
    return int.from_bytes(hashlib.blake2b(sender.encode(), digest_size=8).digest(), "big", signed=True)


class PostgresStore(ConversationStore):
    kind = "postgresql"

    LOCK_CONNECTIONS = 32  # conversations answered at once by one server process; more wait their turn

    def __init__(self, pool, lock_pool=None):
        super().__init__()
        self._pool = pool
        self._lock_pool = lock_pool or pool
        self._listener = None

    async def _listen(self, url: str) -> None:
        """Every append notifies channel CHANNEL with its conversation id (pg_notify, sent at
        commit to every listening session): waiting live feeds wake on any process's write and
        never poll. Should this connection be lost, the feeds poll once a second again."""
        import asyncpg

        self._listener = await asyncpg.connect(url, timeout=10)
        await self._listener.add_listener(CHANNEL, lambda connection, pid, channel, sender: self._notify(sender))

    async def _written_elsewhere(self) -> object:
        if self._listener is not None and not self._listener.is_closed():
            return None  # notifications bring other processes' writes
        return time.monotonic()

    @classmethod
    async def connect(cls, url: str) -> PostgresStore:
        import asyncpg

        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=10, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            raise StoreUnavailable(f"can't reach the PostgreSQL tracker store at {url}: {e}") from None
        store = None
        try:
            async with pool.acquire() as connection:
                applied = await migrate_postgres(connection, f"the PostgreSQL tracker store at {url}")
            lock_pool = await asyncpg.create_pool(url, min_size=0, max_size=cls.LOCK_CONNECTIONS, timeout=10)
            store = cls(pool, lock_pool)
            await store._listen(url)
        except BaseException as e:
            await (store.close() if store else pool.close())
            if isinstance(e, (OSError, asyncpg.PostgresError, TimeoutError)):
                raise StoreUnavailable(f"can't reach the PostgreSQL tracker store at {url}: {e}") from None
            raise
        if applied:
            log.info("PostgreSQL tracker store: applied migrations %s", ", ".join(applied))
        return store

    async def _append(self, sender: str, event: Event) -> int:
        sql = f"""WITH stored AS (INSERT INTO bot_events (sender, type, body) VALUES ($1, $2, $3::jsonb) RETURNING seq)
                  SELECT seq, pg_notify('{CHANNEL}', $1) FROM stored"""
        return await self._pool.fetchval(sql, sender, event["type"], json.dumps(event, ensure_ascii=False))

    async def events(self, sender: str, *, after: int = 0, last: int | None = None) -> list[Event]:
        if last is None:
            rows = await self._pool.fetch(
                "SELECT seq, body FROM bot_events WHERE sender = $1 AND seq > $2 ORDER BY seq", sender, after
            )
        else:
            sql = "SELECT seq, body FROM bot_events WHERE sender = $1 AND seq > $2 ORDER BY seq DESC LIMIT $3"
            rows = list(reversed(await self._pool.fetch(sql, sender, after, last)))
        return [dict(json.loads(row["body"]), seq=row["seq"]) for row in rows]

    async def context(self, sender: str, last: int) -> tuple[list[Event], list[Event]]:
        # One statement, so both parts come from the same snapshot of the conversation.
        types = ", ".join(f"${i}" for i in range(3, 3 + len(STATE_EVENTS)))
        sql = f"""(SELECT true AS in_window, seq, body FROM bot_events WHERE sender = $1 ORDER BY seq DESC LIMIT $2)
                  UNION ALL
                  (SELECT false, seq, body FROM bot_events WHERE sender = $1 AND type IN ({types}))
                  ORDER BY in_window, seq"""
        recent: list[Event] = []
        state: list[Event] = []
        for row in await self._pool.fetch(sql, sender, max(last, 0), *STATE_EVENTS):
            (recent if row["in_window"] else state).append(dict(json.loads(row["body"]), seq=row["seq"]))
        return recent, state

    async def waiting_for_agent(self) -> list[str]:
        sql = """SELECT sender FROM bot_events WHERE seq IN (
                   SELECT max(seq) FROM bot_events WHERE type IN ($1, $2) GROUP BY sender)
                 AND type = $3 ORDER BY seq"""
        return [row["sender"] for row in await self._pool.fetch(sql, HANDOFF, RESUME, HANDOFF)]

    async def unanswered(self) -> list[tuple[str, int]]:
        sql = """SELECT sender, seq FROM bot_events WHERE seq IN (
                   SELECT max(seq) FROM bot_events GROUP BY sender) AND type = $1 ORDER BY seq"""
        return [(row["sender"], row["seq"]) for row in await self._pool.fetch(sql, USER)]

    async def conversations(self) -> list[ConversationSummary]:
        sql = """SELECT s.sender, s.count,
                        (f.body->>'timestamp')::float8 AS started, (l.body->>'timestamp')::float8 AS last_active
                 FROM (SELECT sender, count(*) AS count, min(seq) AS first, max(seq) AS last
                       FROM bot_events GROUP BY sender) AS s
                 JOIN bot_events AS f ON f.seq = s.first JOIN bot_events AS l ON l.seq = s.last
                 ORDER BY last_active DESC"""
        rows = await self._pool.fetch(sql)
        return [ConversationSummary(row["sender"], row["started"], row["last_active"], row["count"]) for row in rows]

    async def delete(self, senders: list[str]) -> int:
        if not senders:
            return 0
        sql = (
            "WITH gone AS (DELETE FROM bot_events WHERE sender = ANY($1::text[]) RETURNING sender) "
            "SELECT count(DISTINCT sender) FROM gone"
        )
        return await self._pool.fetchval(sql, senders)

    async def _rewrite(self, sender: str, events: list[Event]) -> None:
        async with self._pool.acquire() as connection, connection.transaction():
            for event in events:
                body = json.dumps({k: v for k, v in event.items() if k != "seq"}, ensure_ascii=False)
                await connection.execute(
                    "UPDATE bot_events SET body = $1::jsonb WHERE sender = $2 AND seq = $3", body, sender, event["seq"]
                )

    @asynccontextmanager
    async def _own_lock(self, sender: str, timeout: float):
        key = _lock_key(sender)
        deadline = time.monotonic() + timeout
        try:
            connection = await self._lock_pool.acquire(timeout=timeout)
        except TimeoutError:
            raise ConversationBusy(
                f"conversation '{sender}' waited {timeout:.0f} s: the server is answering too many at once"
            ) from None
        try:  # the lock belongs to this connection's session
            while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", key):
                if time.monotonic() > deadline:
                    raise ConversationBusy(f"conversation '{sender}' is still answering its previous message")
                await asyncio.sleep(0.05)
            try:
                yield
            finally:
                await connection.execute("SELECT pg_advisory_unlock($1)", key)
        finally:
            await self._lock_pool.release(connection)

    async def _close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        if self._lock_pool is not self._pool:
            await self._lock_pool.close()
        await self._pool.close()
