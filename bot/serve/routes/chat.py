"""Customer-facing chat routes: Rasa's REST channel, the streaming endpoint the widget uses, the
conversation history and its live feed (agent messages reach the widget through it)."""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import aclosing
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, RootModel

from bot.conversations.events import USER, VISIBLE
from bot.conversations.store import StoreUnavailable
from bot.policy.reply import Piece, Status
from bot.runtime.processor import Waiting, visible
from bot.serve.bodies import read_body
from bot.serve.errors import write_stream_error
from bot.serve.keys import CLIENT_LIMIT, CLOSING, CONVERSATION_LIMIT, CONVERSATIONS, FEED_CAP, METRICS, SETTINGS, STORE
from bot.serve.openapi import Param, RouteTable, ServerSentEvent
from bot.serve.routes.common import (
    MAX_SEQ,
    SENDER,
    SENDER_PARAM,
    SHOWN_TO_CUSTOMER,
    Event,
    conversation_id,
    sse_headers,
)
from bot.serve.timing import first_token, first_visible

FEED_WAIT_S = 15.0


class ChatRequest(BaseModel):
    sender: str = Field(pattern=f"^{SENDER}$", description="The conversation id (Rasa: sender).")
    message: str = Field(min_length=1)
    metadata: dict | None = None


class RasaMessage(BaseModel):
    """A bot message in Rasa's REST channel format (keys without a value are left out)."""

    recipient_id: str
    text: str | None = None
    buttons: list[dict[str, Any]] | None = None
    image: str | None = None
    custom: dict[str, Any] | None = None


class RasaReply(RootModel[list[RasaMessage]]):
    """The bot's messages in answer to one customer message."""


class History(BaseModel):
    sender: str
    events: list[Event]


class ChatStreamEvent(ServerSentEvent):
    """An event of the reply stream (see chat_stream)."""

    event: Literal["received", "token", "status", "message", "waiting", "error", "done"]


class FeedEvent(ServerSentEvent):
    """A stored event (an `Event`, as JSON in `data`); `id` is its seq."""

    event: Literal["event"]
    id: str


AFTER = {"type": "integer", "minimum": 0, "maximum": MAX_SEQ}
FEED_PARAMS = (
    Param("after", "query", AFTER, "Send the events after this seq (default 0: all)."),
    Param("Last-Event-ID", "header", AFTER, "Set by the browser's EventSource when it reconnects; wins over `after`."),
)
routes = RouteTable("chat", path_params=(SENDER_PARAM,))


async def chat_request(request: web.Request) -> ChatRequest:
    """The body checked: JSON (400), message size (413), rate per client and conversation (429)."""
    request.app[CLIENT_LIMIT].check(request.remote or "?", "client address")
    body = await read_body(request, ChatRequest)
    limit = request.app[SETTINGS].build.serve.max_message_chars
    if len(body.message) > limit:
        raise web.HTTPRequestEntityTooLarge(
            max_size=limit,
            actual_size=len(body.message),
            text=f"message is {len(body.message):,} characters; at most {limit:,} are accepted",
        )
    request.app[CONVERSATION_LIMIT].check(body.sender, "conversation")
    request.app[METRICS].seen(body.sender)
    return body


def rasa_message(sender: str, event: dict) -> dict:
    """A bot event in Rasa's REST channel format: keys whose value is null are dropped."""
    message = {
        "recipient_id": sender,
        "text": event.get("text"),
        "buttons": event.get("buttons"),
        "image": event.get("image"),
        "custom": event.get("custom"),
    }
    return {k: v for k, v in message.items() if v is not None}


@routes.post("/webhooks/rest/webhook", body=ChatRequest, ok=RasaReply, errors=(429, 503))
async def rest_webhook(request: web.Request) -> web.Response:
    """Rasa's REST channel: a message in, the bot's messages out"""
    body = await chat_request(request)
    messages = []
    async with aclosing(request.app[CONVERSATIONS].handle(body.sender, body.message, body.metadata)) as items:
        async for item in items:
            if isinstance(item, dict) and item["type"] in SHOWN_TO_CUSTOMER:
                messages.append(rasa_message(body.sender, item))
    return web.json_response(messages)


def sse_event(event: str, data) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def send_event(response: web.StreamResponse, event: str, data) -> None:
    await response.write(sse_event(event, data))


def error_event(status: int, message: str) -> bytes:
    """An error in the reply stream (its status is not sent: the widget shows the message)."""
    return sse_event("error", {"error": message})


@routes.post("/api/chat/stream", body=ChatRequest, events=ChatStreamEvent, errors=(429, 503))
async def chat_stream(request: web.Request) -> web.StreamResponse:
    """A message in, the reply as server-sent events (the widget's endpoint)

    The reply as server-sent events: `received` (the customer's message is stored, with its
    seq), `token` (text as it is written), `status` (`{"text", "action"}`: the bot is calling an
    action; show the text until the next token or message, never keep it), `message` (each whole
    message: bot or handoff), `waiting` (a person has the conversation), `error`, then `done`."""
    body = await chat_request(request)
    response = web.StreamResponse(headers=sse_headers())
    await response.prepare(request)
    try:
        async with aclosing(request.app[CONVERSATIONS].handle(body.sender, body.message, body.metadata)) as items:
            async for item in items:
                if isinstance(item, dict) and item["type"] == USER:
                    await send_event(response, "received", {"seq": item["seq"]})
                elif isinstance(item, Piece):
                    first_token(request, request.app[METRICS])
                    await send_event(response, "token", {"text": item.text})
                elif isinstance(item, Status):
                    first_visible(request, request.app[METRICS])
                    await send_event(response, "status", {"text": item.text, "action": item.action})
                elif isinstance(item, Waiting):
                    await send_event(response, "waiting", {"reason": item.reason})
                elif item["type"] in SHOWN_TO_CUSTOMER:
                    message = dict(rasa_message(body.sender, item), type=item["type"], seq=item["seq"])
                    await send_event(response, "message", message)
    except ConnectionError:
        return response  # the client went away; closing the answer above stopped the generation
    except Exception as e:  # headers are sent: report in the stream, never as a traceback
        await write_stream_error(request, response, e, error_event)
    await send_event(response, "done", {})
    return response


@routes.get("/api/conversations/{sender}", ok=History, errors=(503,))
async def history(request: web.Request) -> web.Response:
    """The conversation as the widget shows it"""
    sender = conversation_id(request)
    events = await request.app[CONVERSATIONS].history(sender)
    return web.json_response({"sender": sender, "events": events})


@routes.get("/api/conversations/{sender}/events", events=FeedEvent, errors=(429, 503), params=FEED_PARAMS)
async def live_feed(request: web.Request) -> web.StreamResponse:
    """The live feed: server-sent events as they are stored

    Server-sent `event` messages for every visible event after `?after=SEQ` as it is stored
    (by this process at once, by other processes within a second); a comment every 15 s keeps
    proxies from closing the stream. The browser's EventSource reconnects by itself. One client
    address holds at most `serve.max_feeds_per_client` feeds at once (then 429)."""
    sender = conversation_id(request)
    after = 0
    positions = (("after", request.query.get("after")), ("Last-Event-ID", request.headers.get("Last-Event-ID")))
    for name, value in positions:
        if value is not None:  # Last-Event-ID, read second, wins: a reconnect resumes where it stopped
            if not re.fullmatch("[0-9]{1,19}", value) or int(value) > MAX_SEQ:
                raise web.HTTPBadRequest(text=f"'{name}' must be a whole number from 0 to 2**63-1")
            after = int(value)
    with (
        request.app[FEED_CAP].hold(request.remote or "?", "live feeds"),
        request.app[METRICS].live_feeds.track_inprogress(),
    ):
        return await _feed(request, sender, after)


async def _feed(request: web.Request, sender: str, after: int) -> web.StreamResponse:
    response = web.StreamResponse(headers=sse_headers())
    await response.prepare(request)
    store, closing = request.app[STORE], request.app[CLOSING]
    closer = asyncio.ensure_future(closing.wait())  # the server is shutting down: end the stream
    waiter = None
    try:
        while not closer.done():
            waiter = asyncio.ensure_future(store.wait_for_events(sender, after, FEED_WAIT_S))
            await asyncio.wait({waiter, closer}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                break
            events = waiter.result()
            if not events:
                await response.write(b": keep-alive\n\n")
            for event in events:
                after = event["seq"]
                if event["type"] in VISIBLE:
                    data = json.dumps(visible(event), ensure_ascii=False)
                    await response.write(f"id: {after}\nevent: event\ndata: {data}\n\n".encode())
    except (ConnectionError, StoreUnavailable):  # the client left, or the server is stopping
        pass
    finally:  # also when the handler is cancelled (the client went away): leave no task behind
        closer.cancel()
        if waiter is not None:
            waiter.cancel()
    return response
