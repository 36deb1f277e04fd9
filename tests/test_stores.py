"""The conversation stores against real servers: SQLite (a file), PostgreSQL on 127.0.0.1:5432
and Redis on 127.0.0.1:6379. Without a server the test skips saying why, except in CI
(CI=true), where every store must be tested."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import pytest
from store_isolation import postgres_schema, redis_prefix

from bot.conversations.events import (
    STATE_EVENTS,
    action_executed,
    agent_message,
    bot_message,
    new_event,
    resumed,
    slot_set,
    slots_reset,
    user_message,
)
from bot.conversations.state import fold
from bot.conversations.store import ConversationBusy, SQLiteStore, StoreUnavailable

POSTGRES_URL = os.environ.get("BOT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


async def _connect(kind: str, tmp_path, **options):
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "conversations.sqlite3")
    try:
        if kind == "postgresql":
            from bot.conversations.store_postgres import PostgresStore

            return await PostgresStore.connect(POSTGRES_URL)
        from bot.conversations.store_redis import RedisStore

        return await RedisStore.connect(REDIS_URL, **options)
    except StoreUnavailable as e:
        if os.environ.get("CI") == "true":
            raise  # CI must test every store
        pytest.skip(f"{kind} server not available here: {e}")


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
async def store(request, tmp_path):
    store = await _connect(request.param, tmp_path)
    yield store
    await store.close()


def _sender() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


async def test_events_are_appended_in_order_and_read_back(store):
    sender, other = _sender(), _sender()
    stored = [await store.append(sender, user_message(f"message {i}", metadata={"n": i})) for i in range(5)]
    await store.append(other, user_message("someone else"))
    assert [e["seq"] for e in stored] == sorted(e["seq"] for e in stored)
    events = await store.events(sender)
    assert [e["text"] for e in events] == [f"message {i}" for i in range(5)]
    assert events[2]["metadata"] == {"n": 2} and events == stored
    assert [e["text"] for e in await store.events(sender, after=stored[2]["seq"])] == ["message 3", "message 4"]
    assert [e["text"] for e in await store.events(sender, last=2)] == ["message 3", "message 4"]
    assert await store.events(_sender()) == []


async def test_unicode_and_nested_values_survive(store):
    sender = _sender()
    event = action_executed("check_order", {"order_id": "ES-1"}, {"items": ["é", "日本", None, 1.5]})
    await store.append(sender, event)
    (back,) = await store.events(sender)
    assert back["result"] == {"items": ["é", "日本", None, 1.5]} and back["arguments"] == {"order_id": "ES-1"}


async def test_handoffs_are_listed_until_resumed(store):
    a, b = _sender(), _sender()
    await store.append(a, new_event("handoff", reason="asked"))
    await store.append(b, new_event("handoff", reason="angry"))
    await store.append(b, resumed())
    waiting = await store.waiting_for_agent()
    assert a in waiting and b not in waiting


async def test_lock_serialises_one_conversation_not_others(store):
    sender, order = _sender(), []

    async def hold(name: str, key: str, seconds: float):
        async with store.lock(key, timeout=5):
            order.append(f"{name} in")
            await asyncio.sleep(seconds)
            order.append(f"{name} out")

    first = asyncio.create_task(hold("first", sender, 0.3))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await asyncio.gather(hold("second", sender, 0), hold("other", _sender(), 0))
    await first
    assert order.index("first out") < order.index("second in")  # same conversation: waited
    assert order.index("other in") < order.index("first out")  # another conversation: did not
    assert time.monotonic() - started >= 0.2


async def test_lock_gives_up_with_a_clear_error(store):
    sender = _sender()
    async with store.lock(sender, timeout=5):
        with pytest.raises(ConversationBusy, match="still answering"):
            async with store.lock(sender, timeout=0.2):
                pass
    async with store.lock(sender, timeout=0.2):  # free again
        pass


async def test_waiting_for_events_wakes_on_append(store):
    sender = _sender()
    waiter = asyncio.create_task(store.wait_for_events(sender, 0, timeout=5))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await store.append(sender, agent_message("Hi, I'm Alex."))
    events = await waiter
    assert [e["text"] for e in events] == ["Hi, I'm Alex."] and time.monotonic() - started < 0.5
    assert await store.wait_for_events(sender, events[-1]["seq"], timeout=0.2) == []


@pytest.mark.parametrize("kind", ["postgresql", "redis"])
async def test_locks_work_across_store_instances(kind, tmp_path):
    """Two server processes each have their own connection pool: the lock still holds."""
    one, two = await _connect(kind, tmp_path), await _connect(kind, tmp_path)
    sender = _sender()
    try:
        async with one.lock(sender, timeout=5):
            with pytest.raises(ConversationBusy):
                async with two.lock(sender, timeout=0.3):
                    pass
        async with two.lock(sender, timeout=1):
            pass
    finally:
        await one.close()
        await two.close()


async def test_redis_lock_expires_when_its_holder_dies(tmp_path):
    store = await _connect("redis", tmp_path, lock_expiry_s=1)
    sender = _sender()
    try:
        dead = store._redis.lock(f"bot:lock:{sender}", timeout=1)  # taken by a process that then died
        assert await dead.acquire(blocking=False)
        started = time.monotonic()
        async with store.lock(sender, timeout=5):
            waited = time.monotonic() - started
        assert 0.5 < waited < 3
    finally:
        await store.close()


async def test_redis_lock_is_kept_while_a_long_reply_is_written(tmp_path):
    store = await _connect("redis", tmp_path, lock_expiry_s=0.6)
    sender = _sender()
    try:
        async with store.lock(sender, timeout=1):
            await asyncio.sleep(1.5)  # longer than the expiry: the holder extends it
            with pytest.raises(ConversationBusy):
                async with store.lock(sender, timeout=0.2):
                    pass
    finally:
        await store.close()


async def test_postgres_lock_is_freed_when_its_connection_dies(tmp_path):
    import asyncpg

    from bot.conversations.store_postgres import _lock_key

    store = await _connect("postgresql", tmp_path)
    sender = _sender()
    dead = await asyncpg.connect(POSTGRES_URL)
    try:
        await dead.execute("SELECT pg_advisory_lock($1)", _lock_key(sender))
        with pytest.raises(ConversationBusy):
            async with store.lock(sender, timeout=0.3):
                pass
        dead.terminate()  # the holder's process dies
        async with store.lock(sender, timeout=3):
            pass
    finally:
        await store.close()


async def _open_with_lock_server(kind: str, url: str, folder, lock_url: str, prefix: str, lock_expiry_s: float = 60):
    """open_store as a server process would, from endpoints.yml: `kind` at `url` (sqlite: a file
    in `folder`), its locks from the Redis server at `lock_url`."""
    from bot.config import load_settings
    from bot.conversations.backends import open_store

    folder.mkdir(exist_ok=True)
    where = f"url: {url}" if kind != "sqlite" else "path: conversations.sqlite3"
    (folder / "endpoints.yml").write_text(
        f"tracker_store:\n  type: {kind}\n  {where}\n  lock_url: {lock_url}\n"
        f'  key_prefix: "{prefix}"\n  lock_expiry_s: {lock_expiry_s}\n'
    )
    return await open_store(load_settings(folder))


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
async def test_two_stores_share_the_redis_lock_server(kind, tmp_path):
    """tracker_store.lock_url: two store instances (two PostgreSQL pools, or two connections to
    one SQLite file: two server processes) exclude each other through the Redis lock, not the
    store's own, and a holder that died frees it after lock_expiry_s."""
    from store_isolation import REDIS_URL, postgres_schema, redis_prefix

    async with postgres_schema() as (url, _), redis_prefix() as (redis, prefix):
        folder = tmp_path / "project"  # both open the same project (the same SQLite file)
        one = await _open_with_lock_server(kind, url, folder, REDIS_URL, prefix, lock_expiry_s=1)
        two = await _open_with_lock_server(kind, url, folder, REDIS_URL, prefix, lock_expiry_s=1)
        sender = _sender()
        try:
            async with one.lock(sender, timeout=5):
                assert await redis.exists(f"{prefix}lock:{sender}")  # the lock is in Redis, under the prefix
                with pytest.raises(ConversationBusy):
                    async with two.lock(sender, timeout=0.3):
                        pass
                async with one._own_lock(sender, timeout=0.3):  # the store's own lock is not taken
                    pass
            async with two.lock(sender, timeout=1):  # released
                pass
            dead = redis.lock(f"{prefix}lock:{sender}", timeout=1)  # taken by a process that then died
            assert await dead.acquire(blocking=False)
            with pytest.raises(ConversationBusy):
                async with two.lock(sender, timeout=0.3):
                    pass
            async with two.lock(sender, timeout=5):  # free once its expiry has passed
                assert await redis.pttl(f"{prefix}lock:{sender}") > 0
        finally:
            await one.close()
            await two.close()


async def test_an_unreachable_lock_server_is_a_clear_error(tmp_path):
    with pytest.raises(
        StoreUnavailable,
        match=r"can't reach the Redis lock server at redis://127.0.0.1:1/0 \(tracker_store.lock_url\)",
    ):
        await _open_with_lock_server("sqlite", "", tmp_path / "p", "redis://127.0.0.1:1/0", "bot:")


async def test_unreachable_servers_are_a_clear_error():
    from bot.conversations.store_postgres import PostgresStore
    from bot.conversations.store_redis import RedisStore

    with pytest.raises(
        StoreUnavailable, match="can't reach the PostgreSQL tracker store at postgresql://127.0.0.1:1/test"
    ):
        await PostgresStore.connect("postgresql://127.0.0.1:1/test")
    with pytest.raises(StoreUnavailable, match="can't reach the Redis tracker store at redis://127.0.0.1:1/0"):
        await RedisStore.connect("redis://127.0.0.1:1/0")


@pytest.mark.parametrize("kind, url", [("postgresql", POSTGRES_URL), ("redis", REDIS_URL)])
async def test_server_processes_share_conversations_through_the_store(kind, url, tmp_path, cache_dir, tokenizer):
    """Two apps (as two server processes would) configured in endpoints.yml with one store:
    a conversation started on one continues on the other with its history."""
    from aiohttp.test_utils import TestClient, TestServer
    from serve_support import make_project, scripted_model, settings_of

    from bot.serve.app import create_app

    await (await _connect(kind, tmp_path)).close()  # skips (or fails in CI) when the server is absent
    project = make_project(tmp_path / "p", cache_dir, endpoints=f"tracker_store:\n  type: {kind}\n  url: {url}\n")
    settings = settings_of(project)
    clients = []
    for reply in ("first server", "second server"):
        model = scripted_model(settings, tokenizer, lambda prompt, reply=reply: reply)
        client = TestClient(TestServer(create_app(settings, load_model=lambda model=model: model)))
        await client.start_server()
        clients.append(client)
    sender = _sender()
    try:
        await clients[0].post("/webhooks/rest/webhook", json={"sender": sender, "message": "hello"})
        response = await clients[1].post("/webhooks/rest/webhook", json={"sender": sender, "message": "again"})
        assert (await response.json())[0]["text"] == "second server"
        assert (await (await clients[1].get("/health")).json())["store"] == kind
        history = await (await clients[1].get(f"/api/conversations/{sender}")).json()
        assert [e.get("text") for e in history["events"]] == ["hello", "first server", "again", "second server"]
    finally:
        for client in clients:
            await client.close()


async def test_sqlite_store_closes_safely_while_queries_run(tmp_path):
    """Closing the connection under a running query crashes the process; closing waits for it,
    and later calls get a clear error."""
    store = SQLiteStore(tmp_path / "c.sqlite3")
    for _ in range(200):
        await store.append("s", user_message("x" * 2000))
    readers = [asyncio.create_task(store.events("s")) for _ in range(16)]
    await asyncio.sleep(0.001)
    await store.close()
    results = await asyncio.gather(*readers, return_exceptions=True)
    assert all(len(r) == 200 if isinstance(r, list) else isinstance(r, StoreUnavailable) for r in results)
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.events("s")


def _long_conversation() -> list[dict]:
    """Three hundred events; every state change (slots set, changed, reset; a handoff and its
    resume) happens long before the last twenty."""
    events = [slot_set("order_id", "ES-1"), slot_set("email", "a@example.com")]
    for i in range(60):
        events += [user_message(f"question {i}"), bot_message(f"answer {i}")]
    events += [slot_set("order_id", "ES-2"), new_event("handoff", reason="asked for a person")]
    events += [agent_message(f"agent says {i}", name="Alex") for i in range(20)]
    events += [
        resumed(),
        slots_reset(by="cancel_order"),
        slot_set("plan", "gold"),
    ]
    for i in range(60, 136):
        events += [user_message(f"question {i}"), bot_message(f"answer {i}")]
    events.append(action_executed("check_order", {"order_id": "ES-2"}, {"status": "shipped"}))
    assert len(events) == 300 and all(e["type"] not in STATE_EVENTS for e in events[-40:])
    return events


def _state(events: list[dict]) -> tuple:
    state = fold(events)
    return state.slots, state.handed_off, state.handoff_reason


async def test_context_is_the_recent_window_and_every_state_event(store):
    sender, other = _sender(), _sender()
    for i, event in enumerate(_long_conversation()):
        await store.append(sender, event)
        if i % 50 == 0:  # another conversation's events in between, state changes included
            await store.append(other, slot_set("order_id", "OTHER"))
    everything = await store.events(sender)
    state_events = [e for e in everything if e["type"] in STATE_EVENTS]
    recent, state = await store.context(sender, 20)
    assert len(everything) == 300 and recent == everything[-20:]
    assert state == state_events and len(state) == 7
    assert _state(state) == _state(everything) == ({"plan": "gold"}, False, "asked for a person")

    await store.append(sender, new_event("handoff", reason="angry"))
    for i in range(25):
        await store.append(sender, agent_message(f"later {i}", name="Alex"))
    everything = await store.events(sender)
    recent, state = await store.context(sender, 20)
    assert recent == everything[-20:] and state == [e for e in everything if e["type"] in STATE_EVENTS]
    assert _state(state) == _state(everything) == ({"plan": "gold"}, True, "angry")
    assert (await store.context(sender, 1000))[0] == everything  # a window longer than the conversation
    assert await store.context(_sender(), 20) == ([], [])


async def test_existing_databases_get_the_state_index_and_keep_their_events(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)  # a database written before the index existed
    old.executescript(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, sender TEXT NOT NULL, type TEXT NOT NULL, "
        "body TEXT NOT NULL);\n"
        "CREATE INDEX events_by_sender ON events (sender, seq);"
    )
    rows = [(e["type"], json.dumps(e)) for e in _long_conversation()]
    old.executemany("INSERT INTO events (sender, type, body) VALUES ('s', ?, ?)", rows)
    old.commit()
    old.close()
    store = SQLiteStore(path)
    try:
        query = "SELECT seq FROM events WHERE sender = 's' AND type IN ('slot', 'resume')"
        plan = " ".join(row[-1] for row in store._run(f"EXPLAIN QUERY PLAN {query}"))
        assert "events_by_sender_type" in plan
        recent, state = await store.context("s", 20)
        assert [e["seq"] for e in recent] == list(range(281, 301)) and len(state) == 7
        assert _state(state) == ({"plan": "gold"}, False, "asked for a person")
    finally:
        await store.close()


async def test_postgres_gets_the_state_index_at_open():
    from store_isolation import postgres_schema

    from bot.conversations.store_postgres import PostgresStore

    async with postgres_schema() as (url, _):  # a schema of its own: other tests use the shared tables
        store = await PostgresStore.connect(url)
        sender = _sender()
        try:
            await store.append(sender, slot_set("plan", "gold"))
            # As a database from before the index (and before migrations were recorded):
            await store._pool.execute("DROP INDEX bot_events_by_sender_type; DROP TABLE bot_migrations")
        finally:
            await store.close()
        store = await PostgresStore.connect(url)
        try:
            indexes = await store._pool.fetch(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'bot_events_by_sender_type' "
                "AND schemaname = current_schema()"
            )
            assert [row["indexdef"].split(" USING ")[1] for row in indexes] == ["btree (sender, type, seq)"]
            assert _state((await store.context(sender, 5))[1]) == ({"plan": "gold"}, False, None)
        finally:
            await store.close()


async def test_redis_conversation_stored_before_state_lists_gets_its_state(tmp_path):
    """Written in the old layout (only the events list): the state list is built from it once."""
    store = await _connect("redis", tmp_path)
    sender, built = _sender(), []
    build = store._build_state

    async def counted(sender: str) -> None:
        built.append(sender)
        await build(sender)

    store._build_state = counted
    try:
        await store._redis.rpush(f"bot:events:{sender}", *(json.dumps(e) for e in _long_conversation()))
        assert not await store._redis.exists(f"bot:state:{sender}")
        await store.append(sender, slot_set("email", "b@example.com"))  # after the upgrade, before any answer
        everything = await store.events(sender)
        recent, state = await store.context(sender, 20)
        assert recent == everything[-20:] and state == [e for e in everything if e["type"] in STATE_EVENTS]
        assert _state(state) == ({"plan": "gold", "email": "b@example.com"}, False, "asked for a person")
        assert built == [sender]

        await store.append(sender, new_event("handoff", reason="angry"))
        await store.append(sender, user_message("hello?"))
        everything = await store.events(sender)
        recent, state = await store.context(sender, 20)
        assert recent == everything[-20:] and state == [e for e in everything if e["type"] in STATE_EVENTS]
        assert _state(state) == ({"plan": "gold", "email": "b@example.com"}, True, "angry")
        assert built == [sender]  # built once, not on every call

        new = _sender()  # a conversation begun after the upgrade: its (one-event) list is marked once too
        await store.append(new, user_message("hi"))
        for _ in range(3):
            await store.context(new, 20)
        assert built == [sender, new]
    finally:
        await store.close()


async def test_answering_a_message_reads_only_the_context(serve, tmp_path, cache_dir, monkeypatch):
    """Through the server (SQLite): the reply is built from the last `history_events` events and
    the state events, never from a read of the whole conversation."""
    from serve_support import make_project

    from bot.serve.keys import STORE

    client, model = await serve(
        make_project(tmp_path / "p", cache_dir, config="serve:\n  history_events: 6\n"), ["Noted."]
    )
    store = client.app[STORE]
    answered, waiting = _sender(), _sender()
    for event in [
        slot_set("plan", "gold"),
        new_event("handoff", reason="asked"),
        resumed(),
    ]:
        await store.append(answered, event)
    await store.append(waiting, new_event("handoff", reason="asked"))
    for i in range(30):
        for sender in (answered, waiting):
            await store.append(sender, user_message(f"old question #{i}."))
            await store.append(sender, new_event("bot" if sender == answered else "agent", text=f"old answer #{i}."))
    reads, contexts = [], []
    events, context = store.events, store.context

    async def spy_events(sender, **window):
        reads.append((sender, window))
        return await events(sender, **window)

    async def spy_context(sender, last):
        contexts.append((sender, last))
        return await context(sender, last)

    monkeypatch.setattr(store, "events", spy_events)
    monkeypatch.setattr(store, "context", spy_context)

    response = await client.post("/webhooks/rest/webhook", json={"sender": answered, "message": "the latest question"})
    assert [m["text"] for m in await response.json()] == ["Noted."]
    prompt = model.tokenizer.decode(model.engine.prompts[-1])
    assert "the latest question" in prompt and "old question #29." in prompt and "old question #27." not in prompt
    response = await client.post("/webhooks/rest/webhook", json={"sender": waiting, "message": "still there?"})
    assert await response.json() == [] and len(model.engine.prompts) == 1  # the old handoff still holds: no reply
    assert all(window.get("last") is not None or window.get("after") for _, window in reads), reads
    assert contexts == [(answered, 6), (waiting, 6)]


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
async def own_store(request, tmp_path):
    """A store that holds only this test's conversations (a schema or key prefix of its own)."""
    if request.param == "sqlite":
        store = SQLiteStore(tmp_path / "own.sqlite3")
        yield store
        await store.close()
        return
    if request.param == "postgresql":
        from bot.conversations.store_postgres import PostgresStore

        async with postgres_schema() as (url, _):
            store = await PostgresStore.connect(url)
            yield store
            await store.close()
        return
    from bot.conversations.store_redis import RedisStore

    async with redis_prefix() as (_, prefix):
        store = await RedisStore.connect(REDIS_URL, prefix=prefix)
        yield store
        await store.close()


async def _conversation(store, sender: str, *timestamps: float) -> None:
    for i, at in enumerate(timestamps):
        await store.append(sender, dict(user_message(f"message {i}"), timestamp=at))


async def test_conversations_are_listed_most_recently_active_first(own_store):
    assert await own_store.conversations() == []
    await _conversation(own_store, "old", 100.0, 200.0)
    await _conversation(own_store, "new", 150.0, 160.0, 300.0)
    await _conversation(own_store, "middle", 250.0)
    listed = await own_store.conversations()
    assert [(c.sender, c.started, c.last_active, c.events) for c in listed] == [
        ("new", 150.0, 300.0, 3),
        ("middle", 250.0, 250.0, 1),
        ("old", 100.0, 200.0, 2),
    ]


async def test_forgetting_inactive_conversations_deletes_those_and_nothing_else(own_store):
    await _conversation(own_store, "stale", 100.0, 200.0)
    await _conversation(own_store, "stale-handed-off", 100.0)
    await own_store.append("stale-handed-off", dict(new_event("handoff", reason="asked"), timestamp=210.0))
    await _conversation(own_store, "recent", 100.0, 1000.0)  # started long ago, active since: kept
    assert sorted(await own_store.forget_inactive(500.0)) == ["stale", "stale-handed-off"]
    assert [c.sender for c in await own_store.conversations()] == ["recent"]
    assert await own_store.events("stale") == [] and await own_store.waiting_for_agent() == []
    assert [e["text"] for e in await own_store.events("recent")] == ["message 0", "message 1"]
    assert await own_store.forget_inactive(500.0) == [] and await own_store.delete([]) == 0
    await own_store.append("stale", user_message("back again"))  # a deleted id starts afresh
    assert [(e["seq"] > 0, e["text"]) for e in await own_store.events("stale")] == [(True, "back again")]


async def test_forgetting_keeps_a_conversation_that_came_back_or_is_being_answered(own_store, monkeypatch):
    await _conversation(own_store, "came-back", 100.0)
    await _conversation(own_store, "answering", 100.0)
    listed = await own_store.conversations()  # what the pass saw: both inactive since 100

    async def as_listed():
        return listed

    monkeypatch.setattr(own_store, "conversations", as_listed)
    await own_store.append("came-back", user_message("I'm back"))  # after the listing, before the delete
    async with own_store.lock("answering", 5):  # a reply being written
        assert await own_store.forget_inactive(500.0, lock_timeout=0.2) == []
    assert [e["text"] for e in await own_store.events("came-back")] == ["message 0", "I'm back"]
    assert [e["text"] for e in await own_store.events("answering")] == ["message 0"]
    assert await own_store.forget_inactive(500.0) == ["answering"]  # once free, still inactive: deleted


async def test_rewriting_events_keeps_their_place_and_state(own_store):
    sender = "rewritten"
    await own_store.append(sender, user_message("my email is ann@example.com"))
    await own_store.append(sender, slot_set("email", "ann@example.com"))
    await own_store.append(sender, bot_message("thanks"))
    before = await own_store.events(sender)
    changed = [dict(before[0], text="my email is [email]"), dict(before[1], value="[email]")]
    await own_store.rewrite(sender, changed)
    after = await own_store.events(sender)
    assert [e["seq"] for e in after] == [e["seq"] for e in before]
    assert after[:2] == changed and after[2] == before[2]
    recent, state = await own_store.context(sender, 1)
    assert [e.get("value") for e in state] == ["[email]"] and recent == after[2:]
    with pytest.raises(ValueError, match="no event with seq"):
        await own_store.rewrite(sender, [dict(before[2], seq=before[2]["seq"] + 100)])
    with pytest.raises(ValueError, match="is a bot event, not user"):
        await own_store.rewrite(sender, [dict(before[2], type="user")])
    assert await own_store.events(sender) == after


def test_stores_are_chosen_by_a_registry_the_base_module_knows_nothing_of():
    import subprocess
    import sys
    import typing

    from bot.config import TrackerStore
    from bot.conversations.backends import OPENERS

    # every type the config accepts
    assert list(OPENERS) == list(typing.get_args(TrackerStore.model_fields["type"].annotation))
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, bot.conversations.store; "
            "print(sorted(m for m in sys.modules if m.startswith('bot.conversations.store')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert loaded.strip() == "['bot.conversations.store']"  # no backend, so no import cycle


async def test_an_unknown_store_type_is_a_clear_error(tmp_path):
    from types import SimpleNamespace

    from bot.config import load_settings
    from bot.conversations.backends import open_store
    from bot.errors import InvalidFiles

    (tmp_path / "config.yml").write_text("model:\n  base: bundled\n")
    (tmp_path / "endpoints.yml").write_text("tracker_store:\n  type: mongodb\n")
    with pytest.raises(
        InvalidFiles, match="endpoints.yml:2:9: error: 'type' input should be 'sqlite', 'postgresql' or 'redis'"
    ):
        load_settings(tmp_path)  # the config refuses it first

    settings = SimpleNamespace(
        root=tmp_path, endpoints=SimpleNamespace(tracker_store=SimpleNamespace(type="mongodb", url="mongodb://x"))
    )
    with pytest.raises(StoreUnavailable, match="tracker_store.type 'mongodb' is not one of sqlite, postgresql, redis"):
        await open_store(settings)
