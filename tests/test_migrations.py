"""Schema migrations: a store written before migrations existed (the fixtures in
tests/data/stores_v1/, made by that code, and a PostgreSQL database built from the first
migration and the SQLite fixture's rows) opens with today's code with every event in order,
its seq carrying on and its locks working, and records what was applied; steps run once, in
order; a store migrated by a newer version is refused with a clear error."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from store_isolation import postgres_schema, redis_prefix

from bot.conversations.events import bot_message
from bot.conversations.migrations import MigrationError, Migrations
from bot.conversations.state import fold
from bot.conversations.store import SQLITE_MIGRATIONS, ConversationBusy, SQLiteStore, migrate_sqlite

FIXTURES = Path(__file__).parent / "data" / "stores_v1"
SENDERS = ("alice", "bob", "carol")
OLD_EVENTS = 13  # in all three fixtures


def fixture_rows() -> list[tuple[int, str, str, str]]:
    """(seq, sender, type, body) of every event the old code stored, read from the SQLite
    fixture without the store."""
    db = sqlite3.connect(FIXTURES / "sqlite.sqlite3")
    try:
        rows = db.execute("SELECT seq, sender, type, body FROM events ORDER BY seq").fetchall()
    finally:
        db.close()
    assert len(rows) == OLD_EVENTS
    return rows


def fixture_events() -> dict[str, list[dict]]:
    """What the old code stored, by conversation."""
    events: dict[str, list[dict]] = {s: [] for s in SENDERS}
    for _seq, sender, _type, body in fixture_rows():
        events[sender].append(json.loads(body))
    return events


async def check_upgraded(store, seq_of) -> None:
    """The old conversations as they were, then new events and locks on top. `seq_of(sender,
    i)` is the seq the store gives the i-th event of a conversation."""
    expected = fixture_events()
    for sender in SENDERS:
        events = await store.events(sender)
        assert [{k: v for k, v in e.items() if k != "seq"} for e in events] == expected[sender]
        assert [e["seq"] for e in events] == [seq_of(sender, i) for i in range(len(expected[sender]))]
    assert await store.waiting_for_agent() == ["bob"]
    assert [sender for sender, _ in await store.unanswered()] == ["carol"]
    _, state = await store.context("alice", 2)
    assert fold(state).slots == {"order_id": "ES-1001"}
    _, state = await store.context("bob", 2)
    assert fold(state).handed_off

    previous = (await store.events("carol"))[-1]["seq"]
    stored = await store.append("carol", bot_message("Done: the gold plan is cancelled."))
    assert stored["seq"] > previous and stored["seq"] == seq_of("carol", 3)
    assert [e["text"] for e in await store.events("carol", last=2)] == [
        "The gold one.",
        "Done: the gold plan is cancelled.",
    ]
    async with store.lock("carol", timeout=2):
        with pytest.raises(ConversationBusy):
            async with store.lock("carol", timeout=0.2):
                pass


def sqlite_seq(sender: str, i: int) -> int:
    """The fixture interleaves the conversations: seq 1 alice, 2 bob, 3 carol, 4 alice..."""
    lengths = {"alice": 6, "bob": 4, "carol": 3}
    order = [s for n in range(6) for s in SENDERS if n < lengths[s]]
    return [n + 1 for n, s in enumerate(order) if s == sender][i] if i < lengths[sender] else OLD_EVENTS + 1


async def test_sqlite_database_from_before_migrations_is_upgraded_in_place(tmp_path):
    path = tmp_path / "sqlite.sqlite3"
    shutil.copy(FIXTURES / "sqlite.sqlite3", path)
    store = SQLiteStore(path)
    try:
        await check_upgraded(store, sqlite_seq)
        applied = store._run("SELECT name, applied_at FROM _migrations")
        assert [name for name, _ in applied] == ["m001_events"] == SQLITE_MIGRATIONS.names
        assert store._run("PRAGMA journal_mode") == [("wal",)]
        assert store._run("PRAGMA synchronous") == [(2,)]  # 2: FULL
    finally:
        await store.close()
    again = SQLiteStore(path)  # opened again: nothing re-applied
    try:
        assert again._run("SELECT name, applied_at FROM _migrations") == applied
        assert len(await again.events("carol")) == 4
    finally:
        await again.close()


async def old_postgres_database(connection) -> None:
    """A database as PostgresStore wrote it before migrations: the first migration's DDL (the
    schema of that time, never edited since) run on its own, so there is no bot_migrations
    table, then the rows that code wrote, which are the SQLite fixture's: the same seqs, senders,
    types and bodies."""
    from bot.conversations.store_postgres import POSTGRES_MIGRATIONS

    name, schema_of_then = POSTGRES_MIGRATIONS.steps[0]
    assert name == "m001_events"
    await schema_of_then(connection)
    await connection.executemany(
        "INSERT INTO bot_events (seq, sender, type, body) VALUES ($1, $2, $3, $4::jsonb)", fixture_rows()
    )
    await connection.execute(
        "SELECT setval(pg_get_serial_sequence('bot_events', 'seq'), (SELECT max(seq) FROM bot_events))"
    )


async def test_postgres_database_from_before_migrations_is_upgraded_in_place():
    import asyncpg

    from bot.conversations.store_postgres import PostgresStore

    async with postgres_schema() as (url, schema):
        old = await asyncpg.connect(url)
        await old_postgres_database(old)
        await old.close()
        store = await PostgresStore.connect(url)
        try:
            await check_upgraded(store, sqlite_seq)  # the same interleaving, the same seqs
            rows = await store._pool.fetch("SELECT name FROM bot_migrations")
            assert [r["name"] for r in rows] == ["m001_events"]
            tables = await store._pool.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", schema
            )
            assert [r["tablename"] for r in tables] == ["bot_events", "bot_migrations"]  # all in the test's schema
        finally:
            await store.close()


async def test_redis_keys_from_before_migrations_are_upgraded_in_place():
    from store_isolation import REDIS_URL

    from bot.conversations.store_redis import RedisStore

    async with redis_prefix() as (client, prefix):
        old_keys = json.loads((FIXTURES / "redis.json").read_text(encoding="utf-8"))  # the old keys, raw
        for key, entry in old_keys.items():
            if entry["type"] == "list":
                await client.rpush(prefix + key, *entry["value"])
            else:
                await client.zadd(prefix + key, {member: score for member, score in entry["value"]})
        store = await RedisStore.connect(REDIS_URL, prefix=prefix)
        try:
            await check_upgraded(store, lambda sender, i: i + 1)  # Redis numbers each conversation from 1
            assert list(await client.hgetall(prefix + "migrations")) == ["m001_events"]
            # bob's state list was built on first use
            assert (await client.lrange(f"{prefix}state:bob", 0, 0)) == ["#built"]
        finally:
            await store.close()


def the_sqlite_migrations() -> Migrations:
    """A copy of the SQLite store's migrations, for a test to add its own to."""
    migrations = Migrations("sqlite")
    for _name, step in SQLITE_MIGRATIONS.steps:
        migrations(step)
    return migrations


def test_migrations_run_once_in_order_and_are_recorded(tmp_path):
    ran: list[str] = []
    migrations = the_sqlite_migrations()

    @migrations
    def m002_customer_index(db):
        ran.append("m002")
        db.execute("CREATE INDEX events_by_type ON events (type, seq)")

    @migrations
    def m003_backfill(db):
        ran.append("m003")
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'events_by_type'").fetchone()  # m002 came first

    path = tmp_path / "c.sqlite3"
    shutil.copy(FIXTURES / "sqlite.sqlite3", path)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        assert migrate_sqlite(db, "test", migrations) == ["m001_events", "m002_customer_index", "m003_backfill"]
        assert migrate_sqlite(db, "test", migrations) == []  # once
        assert ran == ["m002", "m003"]
        assert [name for (name,) in db.execute("SELECT name FROM _migrations ORDER BY rowid")] == migrations.names
        assert db.execute("SELECT count(*) FROM events").fetchone() == (OLD_EVENTS,)
    finally:
        db.close()
    with pytest.raises(ValueError, match="two migrations are named m002_customer_index"):
        migrations(m002_customer_index)


def test_a_failing_migration_changes_nothing(tmp_path):
    migrations = the_sqlite_migrations()

    @migrations
    def m002_broken(db):
        db.execute("DROP TABLE events")
        raise sqlite3.OperationalError("disk I/O error")

    path = tmp_path / "c.sqlite3"
    shutil.copy(FIXTURES / "sqlite.sqlite3", path)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError):
            migrate_sqlite(db, "test", migrations)
        assert db.execute("SELECT count(*) FROM events").fetchone() == (OLD_EVENTS,)  # rolled back, m001 included
        assert not db.execute("SELECT name FROM sqlite_master WHERE name = '_migrations'").fetchone()
    finally:
        db.close()


async def test_a_store_migrated_by_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "c.sqlite3"
    await SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO _migrations VALUES ('m099_future', datetime('now'))")
    db.commit()
    db.close()
    with pytest.raises(
        MigrationError,
        match=r"c\.sqlite3 has been migrated by a newer version of bot \(unknown migration m099_future\)",
    ):
        SQLiteStore(path)

    from store_isolation import REDIS_URL

    from bot.conversations.store_redis import RedisStore

    async with redis_prefix() as (client, prefix):
        await client.hset(prefix + "migrations", mapping={"m001_events": "x", "m099_future": "x"})
        with pytest.raises(MigrationError, match="unknown migration m099_future"):
            await RedisStore.connect(REDIS_URL, prefix=prefix)


async def test_two_processes_opening_a_new_postgres_store_at_once_apply_it_once():
    from bot.conversations.store_postgres import PostgresStore

    async with postgres_schema() as (url, _):
        stores = await asyncio.gather(*(PostgresStore.connect(url) for _ in range(4)))
        try:
            rows = await stores[0]._pool.fetch("SELECT name FROM bot_migrations")
            assert [r["name"] for r in rows] == ["m001_events"]
        finally:
            for store in stores:
                await store.close()
