"""Crash safety. A real server process is killed with SIGKILL while several customers are
mid-reply, then started again, on each store: every message whose `received` event reached its
customer is still stored, each cut reply is marked `interrupted` (by the startup pass), and the
conversations go on. Also the startup pass and the next-message check on their own."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
import uuid
from contextlib import AsyncExitStack

import aiohttp
import pytest
from serve_support import NO_ACTION_SERVER, make_project
from server_process import ServerProcess
from store_isolation import REDIS_URL, postgres_schema, redis_prefix

from bot.conversations.events import INTERRUPTED, bot_message, new_event, user_message
from bot.conversations.recovery import mark_interrupted
from bot.conversations.store import SQLiteStore

REPLY = "Thanks for waiting, I am looking into that for you right now, one moment please."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _isolated_store(kind: str, stack: AsyncExitStack, tmp_path, **options):
    """(open, endpoints.yml's tracker_store block) of a store only this test uses; `open()`
    connects to it (as each server process would), and the connection is closed at the end."""
    if kind == "sqlite":
        path = tmp_path / "conversations.sqlite3"
        connect, tracker = (lambda: _ready(SQLiteStore(path))), f"tracker_store:\n  type: sqlite\n  path: {path}\n"
    elif kind == "postgresql":
        from bot.conversations.store_postgres import PostgresStore

        url, _ = await stack.enter_async_context(postgres_schema())
        connect, tracker = (lambda: PostgresStore.connect(url)), f"tracker_store:\n  type: postgresql\n  url: {url}\n"
    else:
        from bot.conversations.store_redis import RedisStore

        _, prefix = await stack.enter_async_context(redis_prefix())
        connect = lambda: RedisStore.connect(REDIS_URL, prefix=prefix, **options)  # noqa: E731
        tracker = f"tracker_store:\n  type: redis\n  url: {REDIS_URL}\n  key_prefix: '{prefix}'\n  lock_expiry_s: 1\n"

    async def open_():
        store = await connect()
        stack.push_async_callback(store.close)
        return store

    return open_, tracker


async def _ready(value):
    return value


@pytest.fixture(params=["sqlite", "postgresql", "redis"])
async def isolated(request, tmp_path):
    async with AsyncExitStack() as stack:
        open_, endpoints = await _isolated_store(request.param, stack, tmp_path)
        yield await open_(), endpoints


def _sender() -> str:
    return f"crash-{uuid.uuid4().hex[:10]}"


async def test_startup_pass_marks_only_unanswered_replies(isolated):
    store, _ = isolated
    answered, cut, with_person, moved_on = (_sender() for _ in range(4))
    await store.append(answered, user_message("hi"))
    await store.append(answered, bot_message("hello"))
    await store.append(cut, user_message("hi"))
    await store.append(cut, bot_message("hello"))
    question = await store.append(cut, user_message("where is my order?"))
    await store.append(with_person, new_event("handoff", reason="asked"))
    await store.append(with_person, user_message("hello? anyone?"))  # a person answers these, not the bot
    await store.append(moved_on, user_message("first"))
    await store.append(moved_on, new_event(INTERRUPTED, of=1))

    marked = await mark_interrupted(store, retry_s=0)
    assert [(e["type"], e["of"]) for e in marked] == [(INTERRUPTED, question["seq"])]
    assert (await store.events(cut))[-1] == marked[0]
    assert [e["type"] for e in await store.events(with_person)] == ["handoff", "user"]
    assert await mark_interrupted(store, retry_s=0) == []  # once


@pytest.mark.parametrize("kind", ["postgresql", "redis"])
async def test_a_reply_being_written_by_another_process_is_not_marked(kind, tmp_path):
    """The startup pass of one server process while another is answering a message."""
    async with AsyncExitStack() as stack:
        open_, _ = await _isolated_store(kind, stack, tmp_path, lock_expiry_s=5)
        writing, restarted = await open_(), await open_()  # two server processes' connections
        busy, freed = _sender(), _sender()
        await writing.append(busy, user_message("hello"))

        async def answer(sender: str, reply: bool) -> None:
            async with writing.lock(sender, timeout=1):
                started.set()
                await asyncio.sleep(1.2)
                if reply:
                    await writing.append(sender, bot_message("Hi!"))

        started = asyncio.Event()
        one = asyncio.create_task(answer(busy, reply=True))
        await started.wait()
        assert await mark_interrupted(restarted, retry_s=0) == []  # busy: left alone
        await one
        assert [e["type"] for e in await restarted.events(busy)] == ["user", "bot"]

        question = await writing.append(freed, user_message("hello"))
        started.clear()
        two = asyncio.create_task(answer(freed, reply=False))  # its holder stops without a reply (as if it died)
        await started.wait()
        began = time.monotonic()
        marked = await mark_interrupted(restarted, retry_s=5)  # tried again until the lock is free
        await two
        assert [(e["type"], e["of"]) for e in marked] == [(INTERRUPTED, question["seq"])]
        assert 0.5 < time.monotonic() - began < 4


async def test_next_message_marks_a_reply_the_startup_pass_missed(serve, tmp_path, cache_dir):
    from bot.serve.keys import STORE

    client, _ = await serve(make_project(tmp_path / "p", cache_dir), ["Sorted."])
    sender = _sender()
    first = await client.app[STORE].append(sender, user_message("cancel my plan"))  # its reply was cut
    response = await client.post("/webhooks/rest/webhook", json={"sender": sender, "message": "cancel my plan"})
    assert [m["text"] for m in await response.json()] == ["Sorted."]
    history = (await (await client.get(f"/api/conversations/{sender}")).json())["events"]
    assert [(e["type"], e.get("text"), e.get("of")) for e in history] == [
        ("user", "cancel my plan", None),
        (INTERRUPTED, None, first["seq"]),
        ("user", "cancel my plan", None),
        ("bot", "Sorted.", None),
    ]


async def _read_until(response: aiohttp.ClientResponse, names: set[str]) -> dict[str, dict]:
    """Server-sent events of a chat stream until one of each name in `names` has come."""
    seen: dict[str, dict] = {}
    name = None
    async for line in response.content:
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name:
            seen.setdefault(name, json.loads(line[6:]))
            if names <= seen.keys():
                return seen
    raise AssertionError(f"the stream ended after {sorted(seen)}")


async def _history(http: aiohttp.ClientSession, url: str, sender: str) -> list[dict]:
    async with http.get(f"{url}/api/conversations/{sender}") as response:
        return (await response.json())["events"]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "redis"])
async def test_sigkill_mid_reply_loses_no_message_and_marks_the_cut_replies(kind, tmp_path, cache_dir):
    async with AsyncExitStack() as stack:
        # the server processes use it; the test reads through the API
        _, tracker = await _isolated_store(kind, stack, tmp_path)
        project = make_project(tmp_path / "p", cache_dir, endpoints=NO_ACTION_SERVER + tracker)
        server = ServerProcess(project, _free_port(), delay=0.1, reply=REPLY)
        stack.callback(server.stop)
        server.start()
        url = server.url
        http = await stack.enter_async_context(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)))

        answered = _sender()
        async with http.post(f"{url}/api/chat/stream", json={"sender": answered, "message": "hello"}) as response:
            assert "done" in await _read_until(response, {"message", "done"})

        cut = [_sender() for _ in range(4)]
        streams = []
        for s in cut:
            request = http.post(f"{url}/api/chat/stream", json={"sender": s, "message": f"question from {s}"})
            streams.append(await stack.enter_async_context(request))
        # every reply has begun
        received = [await _read_until(response, {"received", "token"}) for response in streams]
        server.signal(signal.SIGKILL)
        assert server.wait(10) == -signal.SIGKILL
        for response in streams:  # the customers' streams break off
            with pytest.raises((aiohttp.ClientPayloadError, AssertionError)):
                await _read_until(response, {"done"})

        server.start()
        for sender, seen in zip(cut, received, strict=True):
            deadline = time.monotonic() + 10
            history = await _history(http, url, sender)
            while history[-1]["type"] != INTERRUPTED and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                history = await _history(http, url, sender)
            seq = seen["received"]["seq"]
            assert [(e["type"], e.get("text"), e["seq"] if e["type"] == "user" else e.get("of")) for e in history] == [
                ("user", f"question from {sender}", seq),
                (INTERRUPTED, None, seq),
            ]
        assert [e["type"] for e in await _history(http, url, answered)] == ["user", "bot"]  # nothing else marked

        # The live feed shows the mark too (what the widget listens to after a crash).
        seq = received[0]["received"]["seq"]
        async with http.get(f"{url}/api/conversations/{cut[0]}/events?after={seq}") as feed:
            assert (await _read_until(feed, {"event"}))["event"]["type"] == INTERRUPTED

        # The conversations go on.
        async def again(sender: str) -> list[str]:
            async with http.post(
                f"{url}/api/chat/stream", json={"sender": sender, "message": "try again"}
            ) as response:
                seen = await _read_until(response, {"message", "done"})
            assert seen["message"]["text"] == REPLY
            return [e["type"] for e in await _history(http, url, sender)]

        assert await asyncio.gather(*(again(s) for s in cut)) == [["user", INTERRUPTED, "user", "bot"]] * len(cut)
