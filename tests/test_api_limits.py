"""Bounded input: body size and JSON nesting depth, malformed HTTP (answered 400, logged as one
line with no traceback), and the OpenAI route's message count and message size."""

from __future__ import annotations

import asyncio
import logging

import pytest
from serve_support import make_project

from bot.serve.bodies import nesting_depth


@pytest.fixture
def project(tmp_path, cache_dir):
    return make_project(
        tmp_path / "bot",
        cache_dir,
        config="serve:\n  max_messages: 5\n  max_message_chars: 50\n  max_body_bytes: 150000\n",
    )


def test_nesting_depth_counts_brackets_outside_strings():
    assert nesting_depth('{"a": [1, {"b": [2, 3]}], "c": "]]]"}') == 4
    assert nesting_depth('{"a": "[[[[{{{{", "b": "\\"[[["}') == 1
    assert nesting_depth("[]" * 1000) == 1
    assert nesting_depth("[" * 50_000) == 50_000
    assert nesting_depth('"unclosed [[[[') == 0  # the decoder reads it as a string too: no recursion
    assert nesting_depth("42") == 0


@pytest.mark.parametrize("path", ["/webhooks/rest/webhook", "/v1/chat/completions"])
async def test_deeply_nested_json_is_a_400_not_a_recursion_error(project, serve, path):
    client, _ = await serve(project)
    response = await client.post(path, data="[" * 50_000 + "]" * 50_000, headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert "nested too deeply: 50,000 levels" in (await response.json())["error"]
    within = {"sender": "deep-ok", "message": "hi", "metadata": {"a": [[[[{"b": 1}]]]]}}  # 7 levels: fine
    assert (await client.post("/webhooks/rest/webhook", json=within)).status == 200


async def test_bodies_over_the_size_limit_get_413_and_bad_bytes_400(project, serve):
    client, _ = await serve(project)
    response = await client.post("/webhooks/rest/webhook", json={"sender": "big", "message": "x" * 150_000})
    assert response.status == 413
    assert "150000" in (await response.json())["error"]
    response = await client.post(
        "/webhooks/rest/webhook",
        data=b'{"sender": "s", "message": "\xff\xfe"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 400 and "not UTF-8" in (await response.json())["error"]


async def test_openai_request_size_is_bounded(project, serve):
    client, _ = await serve(project, ["fine"] * 3)
    six = [{"role": "user", "content": "hi"}] * 6
    response = await client.post("/v1/chat/completions", json={"messages": six})
    assert response.status == 413
    assert (await response.json())["error"] == "6 messages; at most 5 are accepted (serve.max_messages)"

    long_assistant = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "y" * 51},
        {"role": "user", "content": "ok"},
    ]
    response = await client.post("/v1/chat/completions", json={"messages": long_assistant})
    assert response.status == 413
    assert (await response.json())[
        "error"
    ] == "messages[1] is 51 characters; at most 50 are accepted (serve.max_message_chars)"

    parts = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a" * 30}, {"type": "text", "text": "b" * 30}]},
    ]
    response = await client.post("/v1/chat/completions", json={"messages": parts})
    assert response.status == 413 and "messages[1] is 60 characters" in (await response.json())["error"]

    five = [{"role": "user", "content": "u" * 50}, {"role": "assistant", "content": "a" * 50}] * 2 + [
        {"role": "user", "content": "last"}
    ]
    response = await client.post("/v1/chat/completions", json={"messages": five})
    assert response.status == 200 and (await response.json())["choices"][0]["message"]["content"] == "fine"

    bad_part = {"messages": [{"role": "user", "content": [{"type": "text", "text": 123}]}]}
    response = await client.post("/v1/chat/completions", json=bad_part)
    assert response.status == 400 and "messages.0.content" in (await response.json())["error"]


async def raw_exchange(client, request: bytes, then: bytes = b"", pause: float = 0.0) -> bytes:
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(request)
    await writer.drain()
    if then:
        await asyncio.sleep(pause)
        writer.write(then)
        await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


MALFORMED = {
    "8 KB authorization header": b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + b"a" * 8200
    + b"\r\n\r\n",
    "oversized request line": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "too many headers": b"GET /health HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
    + b"\r\n",
    "bad chunk size": (
        b"POST /webhooks/rest/webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    ),
    "length and chunked both": (
        b"POST /webhooks/rest/webhook HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bad content length": b"POST /webhooks/rest/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    "bad HTTP version": b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("name", MALFORMED)
async def test_malformed_http_is_a_400_logged_as_one_line(project, serve, caplog, name):
    client, _ = await serve(project)
    caplog.set_level(logging.DEBUG, logger="aiohttp.server")
    answer = await raw_exchange(client, MALFORMED[name])
    assert answer.split(b"\r\n", 1)[0] in (b"HTTP/1.0 400 Bad Request", b"HTTP/1.1 400 Bad Request")
    assert b"Traceback" not in answer
    logged = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(logged) == 1
    assert logged[0].exc_info is None and "\n" not in logged[0].getMessage()
    assert logged[0].getMessage().startswith("bad HTTP request from 127.0.0.1 answered 400")
    assert "aaaa" not in logged[0].getMessage()  # what was sent is not copied into the log
    assert "Traceback" not in caplog.text
    assert (await client.get("/health")).status == 200


@pytest.mark.parametrize(
    "sent",
    [
        b'Content-Length: 100\r\n\r\n{"sen',  # the client leaves halfway through its body
        b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"sen\r\n',  # the same, chunked
        # broken chunking once the body is being read
        b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"sen\r\nzz\r\nnot a chunk\r\n',
    ],
)
async def test_a_body_cut_short_or_broken_midway_logs_no_traceback(project, serve, caplog, sent):
    """The handler is already reading the body when the client leaves or the framing breaks.
    (aiohttp's C parser does not fail a body whose chunking breaks midway: the handler waits
    until the client closes the connection, as for any slow client.)"""
    client, _ = await serve(project)
    caplog.set_level(logging.DEBUG)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"POST /webhooks/rest/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + sent)
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler is waiting for the rest of the body
    writer.close()
    await asyncio.sleep(0.3)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text
    assert (await client.get("/health")).status == 200
