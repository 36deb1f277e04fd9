"""Bounded work per request, on a real server process (tests/server_process.py): a request whose
client has gone stops costing CPU within a second, prompt building included, and SIGTERM stops
the server within serve.shutdown_timeout_s, mid-reply, with nothing stored lost."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import aiohttp
from serve_support import make_project, settings_of
from server_process import ServerProcess

from bot.config import ServeConfig
from bot.conversations.backends import open_store
from bot.serve.shutdown import aiohttp_timeout, drain_seconds, reserve_seconds

IDLE_CPU_S = 0.1  # CPU seconds a server that does nothing may use in the 1.5 s window (it uses ~0)


def test_the_shutdown_timeout_is_split_into_drain_and_closing():
    assert ServeConfig().shutdown_timeout_s == 10
    assert (drain_seconds(10), reserve_seconds(10)) == (8, 2)  # 2 s to cancel, close and exit
    assert (drain_seconds(3), reserve_seconds(3)) == (1.5, 1.5)  # a short timeout keeps half for closing
    for timeout in (0.5, 3, 10, 60):  # cancelling, then aiohttp's backstop (waited twice): within the reserve
        assert drain_seconds(timeout) + reserve_seconds(timeout) / 4 + 2 * aiohttp_timeout(timeout) < timeout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def long_conversation(n: int) -> list[dict]:
    """A denial of service: thousands of short messages in one OpenAI request."""
    roles = ["user" if i % 2 == 0 else "assistant" for i in range(n)]
    messages = [{"role": role, "content": f"message number {i}, about my bill"} for i, role in enumerate(roles)]
    return messages + [{"role": "user", "content": "and what about now?"}]


def cpu_after_leaving(server: ServerProcess, left_at: float) -> float:
    """CPU seconds the server uses from 1.0 to 2.5 s after its client left."""
    time.sleep(max(0.0, left_at + 1.0 - time.monotonic()))
    before = server.cpu_seconds()
    time.sleep(1.5)
    return server.cpu_seconds() - before


async def stored(project, sender: str) -> list[str]:
    store = await open_store(settings_of(project))
    try:
        return [e["type"] for e in await store.events(sender)]
    finally:
        await store.close()


async def test_an_abandoned_request_of_5000_messages_stops_costing_cpu_within_a_second(tmp_path, cache_dir):
    """Before: fitting 5,000 messages into the context re-rendered the history for every start
    and kept a core busy for more than 30 s after the client had gone."""
    # serve.max_messages (200 by default) would refuse this request at once (413): lifted here, so
    # that what is measured is the work a long conversation costs.
    project = make_project(tmp_path / "bot", cache_dir, config="serve:\n  max_messages: 100000\n")
    body = json.dumps({"messages": long_conversation(5000)}).encode()
    assert len(body) > 175_000
    with ServerProcess(project, free_port(), delay=0.05, reply="word " * 400) as server:
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            client.sendall(head.encode() + body)
            time.sleep(0.5)  # the server reads it, builds the prompt, starts the reply
        left = time.monotonic()
        idle = cpu_after_leaving(server, left)
        print(f"\n5,000-message request abandoned: {idle:.2f} CPU s from 1.0 to 2.5 s after the client left")
        assert idle < IDLE_CPU_S
        async with aiohttp.ClientSession() as session:  # and it still answers
            async with session.get(server.url + "/health") as response:
                assert response.status == 200


async def read_stream(response: aiohttp.ClientResponse, on_event=None) -> list[tuple[str, dict]]:
    """Server-sent events until the stream ends (or the server drops it)."""
    events: list[tuple[str, dict]] = []
    name = "message"
    try:
        async for line in response.content:
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if on_event:
                    await on_event(events)
    except aiohttp.ClientPayloadError:  # the server closed the connection mid-stream
        pass
    return events


async def test_sigterm_lets_a_nearly_done_reply_finish_cuts_a_long_one_and_loses_no_message(tmp_path, cache_dir):
    timeout = 4.0  # the drain is 2 s of it
    project = make_project(tmp_path / "bot", cache_dir, config=f"serve:\n  shutdown_timeout_s: {timeout}\n")
    reply = "word " * 100  # 100 tokens, 5 s at 0.05 s a token
    with ServerProcess(project, free_port(), delay=0.05, reply=reply) as server:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            feed = await session.get(server.url + "/api/conversations/c3/events")

            async def read_feed():
                body = await feed.read()  # raises if the stream was cut rather than ended
                return body, time.monotonic()

            feed_read = asyncio.ensure_future(read_feed())
            second: asyncio.Future = asyncio.get_running_loop().create_future()
            signalled: asyncio.Future = asyncio.get_running_loop().create_future()

            async def first_progress(events):
                tokens = sum(name == "token" for name, _ in events)
                if tokens == 70 and not second.done():
                    second.set_result(asyncio.ensure_future(chat("c2")))
                if tokens == 85 and not signalled.done():  # about 0.75 s left: within the drain
                    signalled.set_result(time.monotonic())
                    server.signal(signal.SIGTERM)

            async def chat(sender: str, on_event=None):
                async with session.post(
                    server.url + "/api/chat/stream", json={"sender": sender, "message": f"hello from {sender}"}
                ) as response:
                    return await read_stream(response, on_event)

            first = await chat("c1", on_event=first_progress)
            first_done = time.monotonic()
            cut = await (await second)
            code = await asyncio.to_thread(server.wait, timeout + 5)
            exited = time.monotonic()
            _, feed_ended = await asyncio.wait_for(feed_read, 1)
        assert code == 0, server.output()
        print(
            f"\nscripted engine: exited {exited - signalled.result():.2f} s after SIGTERM "
            f"(shutdown_timeout_s {timeout})"
        )
        assert exited - signalled.result() < timeout
        # The live feed ended when the shutdown began, while the first reply was still draining:
        # not left open until the process went.
        assert signalled.result() <= feed_ended < first_done
    names = [name for name, _ in first]
    assert names[-2:] == ["message", "done"] and first[-2][1]["text"] == reply.strip()  # finished during the drain
    cut_names = [name for name, _ in cut]
    assert cut_names[:1] == ["received"] and "message" not in cut_names  # cut at the deadline
    assert await stored(project, "c1") == ["user", "bot"]
    assert await stored(project, "c2") == ["user"]  # the customer's message stays; no half reply is stored


async def test_the_real_batching_engine_stops_when_its_client_goes_and_on_sigterm(tmp_path, cache_dir, tiny_base):
    """The tiny random-weight model through the real loader and batching engine: a long reply
    that would run for many seconds."""
    timeout = 3.0
    project = make_project(tmp_path / "bot", cache_dir, base=tiny_base)
    (project / "config.yml").write_text(
        f"model:\n  base: {tiny_base}\n  max_length: 4096\n  cache_dir: {cache_dir}\n"
        f"serve:\n  engine: batching\n  max_new_tokens: 3000\n"
        f"  shutdown_timeout_s: {timeout}\n  max_messages: 100000\n"
    )
    with ServerProcess(project, free_port(), real_model=True) as server:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            # 1. A heavy OpenAI request, streamed; the client leaves once the reply is under way.
            response = await session.post(
                server.url + "/v1/chat/completions", json={"messages": long_conversation(5000), "stream": True}
            )
            pieces = 0
            async for line in response.content:
                if line.startswith(b"data: ") and b'"content": "' in line and b'"content": ""' not in line:
                    pieces += 1
                    if pieces == 5:
                        break
            before = server.cpu_seconds()
            await asyncio.sleep(1.0)
            busy = server.cpu_seconds() - before  # generating
            response.close()
            left = time.monotonic()
            idle = await asyncio.to_thread(cpu_after_leaving, server, left)
            print(
                f"\ntiny model, batching: {busy:.2f} CPU s in the second before the client left, "
                f"{idle:.2f} from 1.0 to 2.5 s after"
            )
            assert idle < IDLE_CPU_S and busy > 2 * idle, (busy, idle)

            # 2. SIGTERM mid-reply: the server exits within its timeout, the message is kept.
            response = await session.post(
                server.url + "/api/chat/stream", json={"sender": "t1", "message": "hello, where is my parcel?"}
            )
            async for line in response.content:
                if line.startswith(b"event: token"):
                    break
            signalled = time.monotonic()
            server.signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.wait, timeout + 5)
            exited = time.monotonic()
            response.close()
        assert code == 0, server.output()
        print(f"tiny model, batching: exited {exited - signalled:.2f} s after SIGTERM (shutdown_timeout_s {timeout})")
        assert exited - signalled < timeout
    assert await stored(project, "t1") == ["user"]
