"""Conversations as append-only event logs, and a lock per conversation.

An event is a JSON object with a `type` and a `timestamp` (bot/conversations/events.py has every type and
its fields); the store adds `seq`, which grows within a conversation. Events are only appended
(the one exception: `rewrite`, for a customer's data-protection request): the state of a
conversation (its slots, whether a person has it) is folded from its events, so a crash can lose
at most the event being written.

Three stores share this interface: SQLite (the default, one server process), PostgreSQL and
Redis (several server processes: their locks work across processes). Any of them may take its
locks from a Redis server instead (`tracker_store.lock_url`, bot.conversations.redis_locks).
bot/conversations/backends.py opens the one endpoints.yml names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.conversations.events import HANDOFF, RESUME, STATE_EVENTS, USER, Event
from bot.conversations.migrations import Migrations
from bot.errors import BotError

log = logging.getLogger("bot.serve")


class StoreUnavailable(BotError):
    """The conversation store can't be reached or opened."""


class ConversationBusy(BotError):
    """The conversation's previous message is still being answered after the lock timeout."""


@dataclass(frozen=True)
class ConversationSummary:
    """One stored conversation, as listed (for operators, exports and retention)."""

    sender: str
    started: float  # its first event's timestamp
    last_active: float  # its last event's timestamp
    events: int


class ConversationStore(ABC):
    """Where conversations live. Subclasses implement the storage and their own lock."""

    kind = "?"

    def __init__(self) -> None:
        self._changed: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, int] = {}  # feeds waiting per conversation: its entry in _changed goes with the last
        self.lock_server: Any = None  # set by take_locks_from: e.g. bot.conversations.redis_locks.RedisLocks

    @abstractmethod
    async def _append(self, sender: str, event: Event) -> int:
        """Store one event, return its seq."""

    @abstractmethod
    async def events(self, sender: str, *, after: int = 0, last: int | None = None) -> list[Event]:
        """The conversation's events with seq > `after`, oldest first (only the `last` N if given)."""

    @abstractmethod
    async def context(self, sender: str, last: int) -> tuple[list[Event], list[Event]]:
        """What answering a message needs, read in one go without the whole conversation:
        (its `last` events, and every event of a STATE_EVENTS type), each oldest first."""

    @abstractmethod
    async def waiting_for_agent(self) -> list[str]:
        """Conversations handed off to a person and not yet resumed."""

    @abstractmethod
    async def unanswered(self) -> list[tuple[str, int]]:
        """(sender, seq) of each conversation whose last event is a customer message."""

    @abstractmethod
    def _own_lock(self, sender: str, timeout: float) -> Any:
        """The store's own lock (see `lock`)."""

    @abstractmethod
    async def _close(self) -> None:
        """Release the store's connections (`close` calls it)."""

    def lock(self, sender: str, timeout: float) -> Any:
        """Async context manager: one holder per conversation; ConversationBusy after `timeout`.
        The lock server's lock when the store has one (take_locks_from), else its own."""
        if self.lock_server is not None:
            return self.lock_server.hold(sender, timeout)
        return self._own_lock(sender, timeout)

    def take_locks_from(self, locks: Any) -> None:
        """Lock conversations with `locks` (`hold(sender, timeout)`, `close()`) from now on; it
        is closed with the store."""
        self.lock_server = locks

    @abstractmethod
    async def conversations(self) -> list[ConversationSummary]:
        """Every stored conversation, the most recently active first."""

    @abstractmethod
    async def delete(self, senders: list[str]) -> int:
        """Delete these conversations with all their events; how many existed."""

    @abstractmethod
    async def _rewrite(self, sender: str, events: list[Event]) -> None:
        """Replace each of these events (found by its `seq`) with the new one; the only change
        ever made to a stored event (a customer's data-protection request)."""

    async def rewrite(self, sender: str, events: list[Event]) -> None:
        """Replace stored events in place, keeping their seq and type (hold the conversation's
        lock). ValueError if one is not in the conversation or would change its type."""
        stored = {e["seq"]: e for e in await self.events(sender)}
        for event in events:
            if event.get("seq") not in stored:
                raise ValueError(f"conversation '{sender}' has no event with seq {event.get('seq')}")
            stored_type = stored[event["seq"]]["type"]
            if event["type"] != stored_type:
                raise ValueError(f"event {event['seq']} of '{sender}' is a {stored_type} event, not {event['type']}")
        await self._rewrite(sender, [e for e in events if e != stored[e["seq"]]])

    async def forget_inactive(self, before: float, lock_timeout: float = 1.0) -> list[str]:
        """Delete every conversation whose last event is older than `before` (a timestamp); their ids.
        Each is checked again under its lock, so a message that arrives meanwhile keeps its
        conversation; one being answered (its lock not free within `lock_timeout`) is active: kept."""
        forgotten = []
        for summary in await self.conversations():
            if summary.last_active >= before:
                continue
            try:
                async with self.lock(summary.sender, lock_timeout):
                    last = await self.events(summary.sender, last=1)
                    if last and last[0]["timestamp"] < before:
                        await self.delete([summary.sender])
                        forgotten.append(summary.sender)
            except ConversationBusy:
                continue
        return forgotten

    async def close(self) -> None:
        try:
            await self._close()
        finally:
            if self.lock_server is not None:
                await self.lock_server.close()

    async def append(self, sender: str, event: Event) -> Event:
        stored = dict(event, seq=await self._append(sender, event))
        self._notify(sender)
        return stored

    # -- waiting for new events (the widget's live feed) ------------------------------------
    def _notify(self, sender: str) -> None:
        if changed := self._changed.pop(sender, None):
            changed.set()

    async def wait_for_events(self, sender: str, after: int, timeout: float) -> list[Event]:
        """Events after `after`, waiting up to `timeout` seconds for one. Events written by this
        process wake the waiter at once; other processes' within a second (`_written_elsewhere`
        says whether the conversation needs reading again)."""
        self._waiting[sender] = self._waiting.get(sender, 0) + 1
        try:
            return await self._wait_for_events(sender, after, timeout)
        finally:
            self._waiting[sender] -= 1
            if not self._waiting[sender]:
                del self._waiting[sender]
                self._changed.pop(sender, None)  # memory stays bounded by the feeds open now

    async def _wait_for_events(self, sender: str, after: int, timeout: float) -> list[Event]:
        deadline, look, seen = time.monotonic() + timeout, True, None
        while True:
            changed = self._changed.setdefault(sender, asyncio.Event())
            outside = await self._written_elsewhere()
            if look or outside != seen:
                found, seen = await self.events(sender, after=after), outside
                if found:
                    return found
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            try:
                await asyncio.wait_for(changed.wait(), min(left, 1.0))
                look = True
            except TimeoutError:
                look = False

    async def _written_elsewhere(self) -> object:
        """A value that changes when another process may have written (checked once a second by
        every waiting feed, which reads its conversation again only then): here, every time."""
        return time.monotonic()


class LocalLocks:
    """In-process locks per conversation, dropped when nobody holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, sender: str, timeout: float) -> AsyncIterator[None]:
        lock, users = self._locks.get(sender, (asyncio.Lock(), 0))
        self._locks[sender] = (lock, users + 1)
        try:
            try:
                await asyncio.wait_for(lock.acquire(), timeout)
            except TimeoutError:
                raise ConversationBusy(f"conversation '{sender}' is still answering its previous message") from None
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[sender]
            if users == 1:
                del self._locks[sender]
            else:
                self._locks[sender] = (lock, users - 1)


SQLITE_MIGRATIONS = Migrations("sqlite")


@SQLITE_MIGRATIONS
def m001_events(db: sqlite3.Connection) -> None:
    """The schema from before migrations: a database made then already has all of it."""
    db.execute("""CREATE TABLE IF NOT EXISTS events (
                      seq INTEGER PRIMARY KEY AUTOINCREMENT,
                      sender TEXT NOT NULL,
                      type TEXT NOT NULL,
                      body TEXT NOT NULL)""")
    db.execute("CREATE INDEX IF NOT EXISTS events_by_sender ON events (sender, seq)")
    db.execute("CREATE INDEX IF NOT EXISTS events_by_sender_type ON events (sender, type, seq)")


def migrate_sqlite(db: sqlite3.Connection, where: str, migrations: Migrations = SQLITE_MIGRATIONS) -> list[str]:
    """Apply the pending migrations in one transaction (BEGIN IMMEDIATE: a second process
    opening the file at the same moment waits, then finds them applied); their names."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = [name for (name,) in db.execute("SELECT name FROM _migrations")]
        pending = migrations.pending(done, where)
        for name, step in pending:
            step(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, datetime('now'))", (name,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return [name for name, _ in pending]


SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}


class SQLiteStore(ConversationStore):
    """One file, no set-up; for one server process (its locks are in-process)."""

    kind = "sqlite"

    def __init__(self, path: Path, *, synchronous: str = "full"):
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL: a commit is one append to the log. FULL syncs the log to the disk at every
            # commit, so a stored event survives a power cut too; NORMAL survives a crash of the
            # server (the OS has the write) but may lose the last commits to a power cut.
            self._db.execute(f"PRAGMA synchronous={SYNCHRONOUS[synchronous]}")
            if applied := migrate_sqlite(self._db, f"the conversation database {path}"):
                log.info("conversation database %s: applied migrations %s", path, ", ".join(applied))
        except sqlite3.Error as e:
            raise StoreUnavailable(f"can't open the conversation database {path}: {e}") from None
        self._guard = threading.Lock()  # one statement at a time, and never while closing
        self._closed = False
        self._locks = LocalLocks()
        self._outside, self._outside_at = None, 0.0

    @contextmanager
    def _open_db(self) -> Iterator[sqlite3.Connection]:
        """The connection, to itself until the block ends; StoreUnavailable once it is closed."""
        with self._guard:
            if self._closed:
                raise StoreUnavailable("the conversation store is closed (the server is shutting down)")
            yield self._db

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._open_db() as db:
            cursor = db.execute(sql, args)
            return cursor.fetchall() if cursor.description else [(cursor.lastrowid,)]

    async def _append(self, sender: str, event: Event) -> int:
        body = json.dumps(event, ensure_ascii=False)
        rows = await asyncio.to_thread(
            self._run, "INSERT INTO events (sender, type, body) VALUES (?, ?, ?)", (sender, event["type"], body)
        )
        return rows[0][0]

    async def events(self, sender: str, *, after: int = 0, last: int | None = None) -> list[Event]:
        if last is None:
            sql, args = "SELECT seq, body FROM events WHERE sender = ? AND seq > ? ORDER BY seq", (sender, after)
        else:
            sql = (
                "SELECT * FROM (SELECT seq, body FROM events WHERE sender = ? AND seq > ? ORDER BY seq DESC LIMIT ?) "
                "ORDER BY seq"
            )
            args = (sender, after, last)
        rows = await asyncio.to_thread(self._run, sql, args)
        return [dict(json.loads(body), seq=seq) for seq, body in rows]

    async def context(self, sender: str, last: int) -> tuple[list[Event], list[Event]]:
        # One statement, so both parts come from the same moment of the conversation.
        state_types = ", ".join("?" * len(STATE_EVENTS))
        sql = f"""SELECT 1 AS in_window, seq, body
                  FROM (SELECT seq, body FROM events WHERE sender = ? ORDER BY seq DESC LIMIT ?)
                  UNION ALL
                  SELECT 0, seq, body FROM events WHERE sender = ? AND type IN ({state_types})
                  ORDER BY in_window, seq"""
        rows = await asyncio.to_thread(self._run, sql, (sender, max(last, 0), sender, *STATE_EVENTS))
        recent: list[Event] = []
        state: list[Event] = []
        for in_window, seq, body in rows:
            (recent if in_window else state).append(dict(json.loads(body), seq=seq))
        return recent, state

    async def waiting_for_agent(self) -> list[str]:
        sql = """SELECT sender FROM events WHERE seq IN (
                   SELECT max(seq) FROM events WHERE type IN (?, ?) GROUP BY sender) AND type = ? ORDER BY seq"""
        return [row[0] for row in await asyncio.to_thread(self._run, sql, (HANDOFF, RESUME, HANDOFF))]

    async def unanswered(self) -> list[tuple[str, int]]:
        sql = (
            "SELECT sender, seq FROM events WHERE seq IN (SELECT max(seq) FROM events GROUP BY sender) "
            "AND type = ? ORDER BY seq"
        )
        return [(sender, seq) for sender, seq in await asyncio.to_thread(self._run, sql, (USER,))]

    def _own_lock(self, sender: str, timeout: float):
        return self._locks.hold(sender, timeout)

    async def conversations(self) -> list[ConversationSummary]:
        sql = """SELECT s.sender, s.count,
                        json_extract(f.body, '$.timestamp') AS started,
                        json_extract(l.body, '$.timestamp') AS last_active
                 FROM (SELECT sender, count(*) AS count, min(seq) AS first, max(seq) AS last
                       FROM events GROUP BY sender) AS s
                 JOIN events AS f ON f.seq = s.first JOIN events AS l ON l.seq = s.last
                 ORDER BY last_active DESC"""
        rows = await asyncio.to_thread(self._run, sql)
        return [ConversationSummary(sender, first, last, count) for sender, count, first, last in rows]

    async def delete(self, senders: list[str]) -> int:
        if not senders:
            return 0
        marks = ", ".join("?" * len(senders))
        found = await asyncio.to_thread(
            self._run, f"SELECT count(DISTINCT sender) FROM events WHERE sender IN ({marks})", tuple(senders)
        )
        await asyncio.to_thread(self._run, f"DELETE FROM events WHERE sender IN ({marks})", tuple(senders))
        return found[0][0]

    async def _rewrite(self, sender: str, events: list[Event]) -> None:
        def write() -> None:
            with self._open_db() as db, db:  # one transaction: all the events or none
                db.execute("BEGIN")
                for event in events:
                    body = json.dumps({k: v for k, v in event.items() if k != "seq"}, ensure_ascii=False)
                    db.execute("UPDATE events SET body = ? WHERE sender = ? AND seq = ?", (body, sender, event["seq"]))

        await asyncio.to_thread(write)

    async def _written_elsewhere(self) -> object:
        # SQLite's data_version changes only when another connection commits, so a thousand idle
        # feeds cost one query a second, not one each.
        if time.monotonic() - self._outside_at >= 1.0:  # one look, shared by every feed asking meanwhile
            self._outside_at = time.monotonic()
            self._outside = asyncio.ensure_future(asyncio.to_thread(self._run, "PRAGMA data_version"))
        return (await asyncio.shield(self._outside))[0][0]

    def _close_db(self) -> None:
        with self._guard:
            self._closed = True
            self._db.close()

    async def _close(self) -> None:
        await asyncio.to_thread(self._close_db)
