"""Retention (tracker_store.retention_days): the server deletes the conversations inactive for
longer, at start and then periodically, on SQLite, PostgreSQL and Redis (each in a schema or key
prefix of the test's own, see store_isolation.py), and nothing else. Only the count is logged."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiohttp.test_utils import TestServer
from serve_support import NO_ACTION_SERVER, make_project, scripted_model, settings_of
from store_isolation import REDIS_URL, postgres_schema, redis_prefix

from bot.conversations.backends import open_store
from bot.conversations.events import bot_message, new_event, user_message
from bot.conversations.retention import DAY_S, Retention
from bot.conversations.store import SQLiteStore, StoreUnavailable
from bot.serve.app import create_app
from bot.serve.keys import RETENTION, STORE


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
async def tracker(request):
    """The tracker_store settings (endpoints.yml lines) of a store holding only this test's conversations."""
    if request.param == "sqlite":
        yield "  type: sqlite\n  path: conversations.sqlite3\n"
    elif request.param == "postgresql":
        async with postgres_schema() as (url, _):
            yield f"  type: postgresql\n  url: '{url}'\n"
    else:
        async with redis_prefix() as (_, prefix):
            yield f"  type: redis\n  url: {REDIS_URL}\n  key_prefix: '{prefix}'\n"


async def _conversation(store, sender: str, *days_ago: float, now: float, answered: bool = False) -> None:
    """Customer messages sent so many days ago; with `answered`, the bot answers the last one at once."""
    for i, ago in enumerate(days_ago):
        await store.append(sender, dict(user_message(f"secret words {sender} {i}"), timestamp=now - ago * DAY_S))
    if answered:
        await store.append(sender, dict(bot_message("an answer"), timestamp=now - days_ago[-1] * DAY_S))


async def _server(tmp_path, cache_dir, tokenizer, tracker: str, retention: str):
    settings = settings_of(
        make_project(tmp_path / "p", cache_dir, endpoints=f"{NO_ACTION_SERVER}tracker_store:\n{tracker}{retention}")
    )
    return settings, TestServer(create_app(settings, load_model=lambda: scripted_model(settings, tokenizer)), port=0)


async def test_the_server_deletes_what_was_inactive_too_long_at_start_and_on_each_pass(
    tmp_path, cache_dir, tokenizer, tracker, caplog
):
    caplog.set_level(logging.INFO, logger="bot.serve")
    settings, server = await _server(tmp_path, cache_dir, tokenizer, tracker, "  retention_days: 30\n")
    now = time.time()
    store = await open_store(settings)  # what an earlier run of the server left
    await _conversation(store, "stale", 90, 40, now=now)
    await _conversation(store, "stale-handed-off", 35, now=now)
    await store.append("stale-handed-off", dict(new_event("handoff", reason="asked"), timestamp=now - 31 * DAY_S))
    # Kept, and answered, so the crash-recovery pass leaves them alone. The stale ones end with a
    # message nobody answered: recovery would mark them interrupted (active now) if it ran first.
    # started long ago, active within the 30 days
    await _conversation(store, "old-but-active", 400, 29, now=now, answered=True)
    await _conversation(store, "fresh", 0, now=now, answered=True)
    await store.close()

    await server.start_server()
    try:
        retention = server.app[RETENTION]
        await asyncio.wait_for(retention.passed.wait(), 30)  # the pass at start
        assert retention.deleted == 2
        store = server.app[STORE]
        assert sorted(c.sender for c in await store.conversations()) == ["fresh", "old-but-active"]
        assert await store.events("stale") == [] and await store.waiting_for_agent() == []
        assert len(await store.events("old-but-active")) == 3

        # A conversation that has gone quiet since is deleted by the next pass, and only it.
        await _conversation(store, "gone-quiet", 45, now=now)
        retention.passed.clear()
        await retention.run_once()
        assert retention.deleted == 3 and retention.passes == 2
        # still running: the next pass in an hour
        assert [t for t in asyncio.all_tasks() if t.get_name() == "background-passes"]
        assert sorted(c.sender for c in await store.conversations()) == ["fresh", "old-but-active"]
    finally:
        await server.close()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "background-passes"]  # stopped with the server

    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("retention:")]
    assert said == [
        "retention: deleted 2 conversations inactive for more than 30 days",
        "retention: deleted 1 conversations inactive for more than 30 days",
    ]
    # a count, never what
    assert "secret words" not in caplog.text and "stale" not in caplog.text and "gone-quiet" not in caplog.text


async def test_without_retention_days_nothing_is_deleted(tmp_path, cache_dir, tokenizer):
    settings, server = await _server(
        tmp_path, cache_dir, tokenizer, "  type: sqlite\n  path: conversations.sqlite3\n", ""
    )
    assert settings.endpoints.tracker_store.retention_days is None  # the default: kept forever
    store = await open_store(settings)
    await _conversation(store, "ancient", 3650, now=time.time())
    await store.close()
    await server.start_server()
    try:
        assert RETENTION not in server.app
        assert [c.sender for c in await server.app[STORE].conversations()] == ["ancient"]
    finally:
        await server.close()


@pytest.mark.parametrize("days, problem", [("0", "greater than 0"), ("-3", "greater than 0"), ("soon", "number")])
def test_retention_days_must_be_a_positive_number(tmp_path, cache_dir, days, problem):
    from bot.errors import BotError

    project = make_project(tmp_path / "p", cache_dir, endpoints=f"tracker_store:\n  retention_days: {days}\n")
    with pytest.raises(BotError, match=f"endpoints.yml:2:.*retention_days.*{problem}"):
        settings_of(project)


class FlakyStore(SQLiteStore):
    """Fails its first pass, as a store that is down for a moment."""

    failures = 1

    async def forget_inactive(self, before: float) -> list[str]:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the store is down for a moment")
        return await super().forget_inactive(before)


async def test_passes_repeat_and_a_failing_store_is_logged_not_fatal(tmp_path, caplog):
    store = FlakyStore(tmp_path / "flaky.sqlite3")
    await _conversation(store, "stale", 40, now=time.time())
    retention = Retention(store, 30, every_s=0.01)
    task = asyncio.create_task(retention.repeat())
    try:
        while retention.passes < 3:
            retention.passed.clear()
            await asyncio.wait_for(retention.passed.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
    assert task.cancelled() and retention.deleted == 1
    assert "retention: could not delete old conversations: the store is down for a moment" in caplog.text
