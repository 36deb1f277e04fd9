"""What several route modules share: the conversation id in a path, stored events as the API
shows them, and server-sent events' headers."""

from __future__ import annotations

import re
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bot.conversations.events import BOT, HANDOFF
from bot.serve.openapi import Param

SENDER = r"[A-Za-z0-9_.:@-]{1,128}"
SENDER_PARAM = Param("sender", "path", {"type": "string", "pattern": f"^{SENDER}$"}, "The conversation id.")
MAX_SEQ = 2**63 - 1  # the stores keep seq in a signed 64-bit integer
SHOWN_TO_CUSTOMER = (BOT, HANDOFF)


class Event(BaseModel):
    """A stored event as the widget shows it."""

    model_config = ConfigDict(extra="allow")
    seq: int = Field(description="Its place in the conversation.")
    type: str = Field(description="user, bot, agent, handoff, resume...")
    timestamp: float
    text: str | None = None
    buttons: list[dict[str, Any]] | None = None
    agent: str | None = None
    rating: Literal["up", "down"] | None = Field(
        None, description="bot messages in the history: the customer's vote, if they rated it."
    )


def conversation_id(request: web.Request) -> str:
    sender = request.match_info["sender"]
    if not re.fullmatch(SENDER, sender):
        raise web.HTTPBadRequest(text="invalid conversation id")
    return sender


def sse_headers() -> dict[str, str]:
    return {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
