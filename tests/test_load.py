"""Load and soak, short versions of benchmarks/load_soak.py: a real server process per store
(the scripted engine, so the server and the store are what is exercised), 100 customers at once,
a short soak whose open files and tasks must come back to their idle level, idle live feeds
beside chat, and the cap on live feeds per client address."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from load_support import POSTGRES_URL, STORES, idle_feeds, load_project, percentile, run_id, run_load, soak
from serve_support import make_project, scripted_model, settings_of
from server_process import ServerProcess

from bot.conversations.events import agent_message
from bot.conversations.store import SQLiteStore
from bot.serve.app import create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reachable(store: str) -> str | None:
    """Why the store's server can't be used here, or None."""
    if store == "sqlite":
        return None
    port = 5432 if store == "postgresql" else 6379
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError as e:
        return f"{store} server not available here: {e}"
    return None


@pytest.fixture(scope="module")
def servers(tmp_path_factory, cache_dir):
    """A server process per store, started side by side (each takes seconds to import)."""
    wanted = {}
    for store in STORES:
        if (why := _reachable(store)) and os.environ.get("CI") != "true":  # CI must test every store
            wanted[store] = why
            continue
        project = load_project(tmp_path_factory.mktemp(f"load-{store}"), cache_dir, store)
        wanted[store] = ServerProcess(project, _free_port(), delay=0.0)
    processes = [p for p in wanted.values() if isinstance(p, ServerProcess)]
    with ThreadPoolExecutor(len(processes)) as pool:
        list(pool.map(lambda p: p.start(), processes))
    yield wanted
    for process in processes:
        process.stop()


def _server(servers, store: str) -> ServerProcess:
    if isinstance(servers[store], str):
        pytest.skip(servers[store])
    return servers[store]


@pytest.mark.parametrize("store", STORES)
async def test_a_hundred_customers_at_once_are_each_answered_and_stored_once_in_order(servers, store):
    server = _server(servers, store)
    # A deadlock (as PostgreSQL's shared pool had: every connection held by a lock) fails, not hangs.
    result = await asyncio.wait_for(run_load(server.url, 100, 3), 60)
    assert result.errors == [] and result.unanswered == [] and result.problems == []
    assert len(result.sent) == 300


async def test_open_files_and_tasks_return_to_their_idle_level_after_a_short_soak(servers):
    server = _server(servers, "sqlite")
    result = await soak(server.process.pid, server.url, seconds=15, rate=10, conversations=10, turns=3, every=1.0)
    assert len(result.sent) >= 140 and not [m for m in result.sent if m.error or not m.answer]
    peak = max(result.samples, key=lambda s: s.tasks)
    assert peak.tasks > result.start.tasks + 10 and max(s.feeds for s in result.samples) > 0  # the load was there
    assert result.end.fds <= result.start.fds and result.end.tasks <= result.start.tasks, (result.start, result.end)


# redis: more commands at once than redis-py's default pool allowed
@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_three_hundred_idle_live_feeds_do_not_slow_chat(servers, store):
    server = _server(servers, store)
    await run_load(server.url, 20, 2)  # warm
    without = await run_load(server.url, 20, 5)
    async with asyncio.timeout(30):  # a server that stops answering fails here, not hangs
        async with idle_feeds(server.url, 300, 100, run_id()) as feeds:  # 3 client addresses at the default cap
            assert len(feeds) == 300
            await asyncio.sleep(2.5)  # every feed has waited through a second or two of polling
            beside = await run_load(server.url, 20, 5)
    assert not (without.errors or beside.errors or without.problems or beside.problems)
    quiet, busy = percentile([s.seconds for s in without.sent], 90), percentile([s.seconds for s in beside.sent], 90)
    assert busy <= 2 * quiet + 0.1, f"p90 {busy:.3f} s beside 300 feeds against {quiet:.3f} s without"


def _counting(store_class):
    class Counting(store_class):
        reads = 0

        async def events(self, sender, *, after=0, last=None):
            self.reads += 1
            return await super().events(sender, after=after, last=last)

    return Counting


async def _two_stores(kind: str, tmp_path):
    """The same store opened twice, as by two server processes; the first counts its reads."""
    if kind == "sqlite":
        path = tmp_path / "conversations.sqlite3"
        return _counting(SQLiteStore)(path), SQLiteStore(path)
    if why := _reachable(kind):
        pytest.skip(why)
    from bot.conversations.store_postgres import PostgresStore

    return await _counting(PostgresStore).connect(POSTGRES_URL), await PostgresStore.connect(POSTGRES_URL)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_idle_feeds_read_their_conversation_only_when_something_was_written(kind, tmp_path):
    """Waiting feeds don't poll their conversation each second (SQLite: one PRAGMA data_version
    a second for all of them; PostgreSQL: LISTEN/NOTIFY); a write by another process (another
    connection) still reaches a waiting feed."""
    store, other = await _two_stores(kind, tmp_path)
    prefix = run_id()
    try:
        waiters = [asyncio.create_task(store.wait_for_events(f"{prefix}-idle-{i}", 0, timeout=2.5)) for i in range(50)]
        assert await asyncio.gather(*waiters) == [[]] * 50
        assert store.reads == 50  # each looked once, when it began

        waiter = asyncio.create_task(store.wait_for_events(f"{prefix}-elsewhere", 0, timeout=5))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await other.append(f"{prefix}-elsewhere", agent_message("Hi, I'm Alex."))
        assert [e["text"] for e in await waiter] == ["Hi, I'm Alex."] and time.monotonic() - started < 2.5
        assert store._changed == {} and store._waiting == {}  # nothing kept for feeds that have gone
    finally:
        await store.close()
        await other.close()


# -- the cap on live feeds per client address ---------------------------------------------------


@pytest.fixture
async def capped(tmp_path, cache_dir, tokenizer):
    """An in-process server allowing 3 live feeds per client address, and a client session per address."""
    project = make_project(tmp_path / "bot", cache_dir, config="serve:\n  max_feeds_per_client: 3\n")
    settings = settings_of(project)
    server = TestServer(create_app(settings, load_model=lambda: scripted_model(settings, tokenizer)), host="127.0.0.1")
    await server.start_server()
    addresses = ("127.0.0.1", "127.0.0.2")
    sessions = {a: aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(a, 0))) for a in addresses}
    yield server, sessions
    for s in sessions.values():
        await s.close()
    await server.close()


async def _metric(session, server, name: str) -> float:
    text = await (await session.get(server.make_url("/metrics"))).text()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_live_feeds_per_client_address_are_capped(capped):
    server, sessions = capped
    here, elsewhere = sessions["127.0.0.1"], sessions["127.0.0.2"]
    feeds = [await here.get(server.make_url(f"/api/conversations/cap-{i}/events")) for i in range(3)]
    assert [f.status for f in feeds] == [200, 200, 200]
    assert await _metric(elsewhere, server, "bot_live_feeds") == 3

    refused = await here.get(server.make_url("/api/conversations/cap-3/events"))
    assert refused.status == 429
    assert "too many live feeds open from this client address: at most 3 at once" in await refused.text()
    # another address has its own count
    other = await elsewhere.get(server.make_url("/api/conversations/cap-3/events"))
    assert other.status == 200

    feeds[0].close()  # a customer closes a tab: its place is free again
    for _ in range(50):
        if await _metric(elsewhere, server, "bot_live_feeds") == 3:
            break
        await asyncio.sleep(0.05)
    again = await here.get(server.make_url("/api/conversations/cap-4/events"))
    assert again.status == 200
    for f in feeds[1:] + [other, again]:
        f.close()


async def test_a_closed_feed_leaves_no_task_behind(capped):
    server, sessions = capped
    session = sessions["127.0.0.2"]
    before = await _metric(session, server, "bot_asyncio_tasks")
    feeds = [await session.get(server.make_url(f"/api/conversations/gone-{i}/events")) for i in range(3)]
    assert await _metric(session, server, "bot_asyncio_tasks") > before
    for f in feeds:
        f.close()
    for _ in range(50):
        tasks_back = await _metric(session, server, "bot_asyncio_tasks") <= before
        if tasks_back and await _metric(session, server, "bot_live_feeds") == 0:
            break
        await asyncio.sleep(0.05)
    assert await _metric(session, server, "bot_asyncio_tasks") <= before  # no waiter left until shutdown
    assert await _metric(session, server, "bot_live_feeds") == 0
    assert await _metric(session, server, "process_open_fds") > 0


def test_the_cap_must_be_positive(tmp_path, cache_dir):
    from bot.errors import InvalidFiles

    project = make_project(tmp_path / "bot", cache_dir, config="serve:\n  max_feeds_per_client: 0\n")
    with pytest.raises(InvalidFiles, match="max_feeds_per_client"):
        settings_of(project)
