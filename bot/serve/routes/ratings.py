"""Customers rate the bot's messages: thumbs up or down on each, from the widget (a customer-side
route, like the other /api/conversations/{sender} chat routes: no admin token).

A vote is stored in the rated conversation as a rating event (bot.conversations.events.rated), under
the conversation's lock, so it lands between two turns, never inside a reply being written. The
latest vote for a message counts: voting again changes it; the same vote again stores nothing."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bot.conversations.events import BOT, rated
from bot.conversations.search import Rating, latest_ratings
from bot.serve.bodies import read_body
from bot.serve.keys import CLIENT_LIMIT, METRICS, SETTINGS, STORE
from bot.serve.openapi import RouteTable
from bot.serve.routes.common import MAX_SEQ, SENDER_PARAM, conversation_id

MAX_COMMENT_CHARS = 1000
routes = RouteTable("chat", path_params=(SENDER_PARAM,))


class RatingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: int = Field(
        ge=1,
        le=MAX_SEQ,
        strict=True,
        description="The seq of the bot message rated (from the conversation's history or stream).",
    )
    rating: Rating = Field(description="up (helpful) or down (not helpful).")
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS, description="What the customer adds, if anything.")


class Rated(BaseModel):
    """The vote that now counts for the message."""

    sender: str
    seq: int
    rating: Rating
    comment: str | None = None


@routes.post("/api/conversations/{sender}/ratings", body=RatingRequest, ok=Rated, errors=(429, 503))
async def rate_message(request: web.Request) -> web.Response:
    """Rate one of the bot's messages: thumbs up or down (the widget's buttons)"""
    sender = conversation_id(request)
    request.app[CLIENT_LIMIT].check(request.remote or "?", "client address")
    body = await read_body(request, RatingRequest)
    comment = (body.comment or "").strip() or None
    store = request.app[STORE]
    async with store.lock(sender, request.app[SETTINGS].build.serve.lock_timeout_s):
        events = await store.events(sender)
        if not any(e["seq"] == body.seq and e["type"] == BOT for e in events):
            raise web.HTTPNotFound(
                text=f"conversation '{sender}' has no bot message with seq {body.seq}: "
                "only the bot's messages can be rated"
            )
        current = latest_ratings(events).get(body.seq)
        if current is None or (current["rating"], current.get("comment")) != (body.rating, comment):
            await store.append(sender, rated(body.seq, body.rating, comment))
            request.app[METRICS].ratings.labels(body.rating).inc()
    answer = Rated(sender=sender, seq=body.seq, rating=body.rating, comment=comment)
    return web.json_response(answer.model_dump(exclude_none=True))
