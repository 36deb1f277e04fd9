"""Errors answer through one middleware (bot/serve/errors.py): the table from typed error to
status, walked entry by entry through a real app; the routes that used to answer errors
themselves; and an error in a stream whose headers are out."""

from __future__ import annotations

from contextlib import aclosing

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from serve_support import ADMIN, make_project, sse_events

from bot.conversations.migrations import MigrationError
from bot.conversations.store import ConversationBusy, StoreUnavailable
from bot.engine.protocol import EngineBusy, EngineClosed, EngineError
from bot.engine.remote import ModelServerUnavailable
from bot.errors import BotError, InvalidFiles, Problem
from bot.serve.errors import STATUS_OF, errors_middleware, status_of

# Faults of the server's own making: exactly these answer 5xx, every other entry 4xx.
SERVER_FAULTS = {
    ConversationBusy,
    StoreUnavailable,
    EngineBusy,
    EngineClosed,
    ModelServerUnavailable,
    EngineError,
    MigrationError,
}


def example(kind: type[BotError]) -> BotError:
    if kind is InvalidFiles:
        return InvalidFiles([Problem("config.yml", 3, 5, "what went wrong")])
    return kind("what went wrong")


async def raising(error: BaseException):
    async def handler(request):
        raise error

    app = web.Application(middlewares=[errors_middleware()])
    app.router.add_get("/", handler)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        response = await client.get("/")
        return response.status, await response.json(), response.headers
    finally:
        await client.close()


@pytest.mark.parametrize("kind", list(STATUS_OF), ids=lambda kind: kind.__name__)
async def test_every_typed_error_answers_its_status_with_its_message(kind):
    error = example(kind)
    status, body, _ = await raising(error)
    assert (status, body) == (STATUS_OF[kind], {"error": str(error)})
    assert (status >= 500) == (kind in SERVER_FAULTS), f"{kind.__name__}: {status}"


def test_the_table_lists_every_server_fault_and_shadows_no_entry():
    assert SERVER_FAULTS <= set(STATUS_OF)
    kinds = list(STATUS_OF)
    for i, kind in enumerate(kinds):  # an entry after its base class would never be reached
        assert not [earlier for earlier in kinds[:i] if issubclass(kind, earlier)], kind.__name__
    assert all(400 <= status < 600 for status in STATUS_OF.values())


async def test_other_errors_are_500_and_only_typed_ones_say_why():
    class Unlisted(BotError):
        pass

    assert status_of(Unlisted("x")) == 500
    status, body, _ = await raising(Unlisted("a typed error nobody mapped"))
    assert (status, body) == (500, {"error": "a typed error nobody mapped"})
    status, body, _ = await raising(RuntimeError("secret detail"))
    assert status == 500 and "secret" not in body["error"] and "internal error" in body["error"]


async def test_http_exceptions_keep_their_status_text_and_headers():
    status, body, headers = await raising(web.HTTPTooManyRequests(text="slow down", headers={"Retry-After": "60"}))
    assert (status, body, headers["Retry-After"]) == (429, {"error": "slow down"}, "60")
    status, body, _ = await raising(web.HTTPNotFound())
    assert (status, body) == (404, {"error": "Not Found"})


@pytest.fixture
def project(tmp_path, cache_dir):
    return make_project(tmp_path / "bot", cache_dir)


async def test_routes_raise_and_the_middleware_answers(project, serve):
    client, _ = await serve(project, ["Hello!"])
    response = await client.post("/api/conversations/a-1/resume", headers=ADMIN)
    assert (response.status, await response.json()) == (409, {"error": "conversation 'a-1' is not with an agent"})
    response = await client.post(
        "/api/conversations/a-1/messages", json={"text": "x" * 100_000, "agent": "Alex"}, headers=ADMIN
    )
    assert (response.status, await response.json()) == (413, {"error": "agent message too long"})
    response = await client.get("/api/conversations/a-1/events?after=x")
    assert (response.status, await response.json()) == (
        400,
        {"error": "'after' must be a whole number from 0 to 2**63-1"},
    )


def fail_after_the_first_piece(engine, error: BaseException) -> None:
    """The engine's streams fail after their first piece of text."""
    original = engine.stream

    async def failing(prompt_ids, max_new_tokens, *decoding):
        async with aclosing(original(prompt_ids, max_new_tokens, *decoding)) as items:
            async for item in items:
                yield item
                raise error

    engine.stream = failing


@pytest.mark.parametrize(
    "error", [EngineClosed("the model engine is closed"), RuntimeError("secret detail")], ids=["typed", "untyped"]
)
async def test_an_error_in_an_open_stream_is_written_into_it_in_each_routes_format(project, serve, error):
    client, model = await serve(project, ["Hello there, how are you?"] * 3)
    fail_after_the_first_piece(model.engine, error)
    engine_closed = isinstance(error, EngineClosed)
    status = 503 if engine_closed else 500
    message = "the model engine is closed" if engine_closed else "internal error"

    events = sse_events(await (await client.post("/api/chat/stream", json={"sender": "e-1", "message": "hi"})).text())
    [(name, data)] = [(name, data) for name, data in events if name == "error"]
    assert message in data["error"] and "secret" not in data["error"] and events[-1][0] == "done"

    for path, body in (
        (
            "/v1/chat/completions",
            {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        ),
        ("/v1/completions", {"model": "scripted", "prompt": "Hello", "stream": True}),
    ):
        response = await client.post(path, json=body)
        assert response.status == 200, path  # the headers went out with the first piece
        payloads = [data for _, data in sse_events(await response.text())]
        errors = [data["error"] for data in payloads if isinstance(data, dict) and "error" in data]
        assert len(errors) == 1 and errors[0]["code"] == status and message in errors[0]["message"], (path, errors)
        assert errors[0]["type"] == "InternalServerError"


async def test_time_to_first_token_counts_from_the_request_arriving(project, serve, monkeypatch):
    from bot.serve import timing

    client, _ = await serve(project, ["Hello there!"])
    clock = iter([100.0, 107.5])  # the request arrives at 100, its first text goes out at 107.5
    monkeypatch.setattr(timing, "_now", lambda: next(clock, 300.0))
    await (await client.post("/api/chat/stream", json={"sender": "t-1", "message": "hi"})).text()
    text = await (await client.get("/metrics")).text()
    assert "bot_time_to_first_token_seconds_count 1.0" in text and "bot_time_to_first_token_seconds_sum 7.5" in text
