"""Human agents (admin token): see the conversations waiting for a person, write to a customer
(which takes the conversation over from the bot), and give it back to the bot. Everything is
stored with the conversation; the customer's widget gets agent messages through its live feed."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from bot.conversations.events import HANDOFF, USER
from bot.runtime.processor import NotWithAgent
from bot.serve.bodies import read_body
from bot.serve.keys import CONVERSATIONS, SETTINGS, STORE
from bot.serve.openapi import RouteTable
from bot.serve.routes.common import SENDER_PARAM, Event, conversation_id

routes = RouteTable("agents", admin=True, path_params=(SENDER_PARAM,))


class AgentMessage(BaseModel):
    text: str = Field(min_length=1)
    agent: str | None = Field(None, max_length=80, description="The agent's name, shown to the customer.")


class WaitingConversation(BaseModel):
    sender: str
    reason: str | None
    since: float | None
    last_customer_message: str | None


class Handoffs(BaseModel):
    waiting: list[WaitingConversation]


class AgentReply(BaseModel):
    event: Event
    took_over: bool = Field(description="The bot had the conversation until this message.")


class Resumed(BaseModel):
    event: Event


@routes.get("/api/handoffs", ok=Handoffs, errors=(503,))
async def waiting(request: web.Request) -> web.Response:
    """Conversations waiting for a person"""
    store = request.app[STORE]
    listed = []
    for sender in await store.waiting_for_agent():
        events = await store.events(sender, last=50)
        handoff = next((e for e in reversed(events) if e["type"] == HANDOFF), {})
        last_customer = next((e["text"] for e in reversed(events) if e["type"] == USER), None)
        listed.append(
            {
                "sender": sender,
                "reason": handoff.get("reason"),
                "since": handoff.get("timestamp"),
                "last_customer_message": last_customer,
            }
        )
    return web.json_response({"waiting": listed})


@routes.post("/api/conversations/{sender}/messages", body=AgentMessage, ok=AgentReply, errors=(503,))
async def write_as_agent(request: web.Request) -> web.Response:
    """An agent writes to the customer (and takes the conversation over)"""
    sender = conversation_id(request)
    body = await read_body(request, AgentMessage)
    if len(body.text) > (limit := request.app[SETTINGS].build.serve.max_message_chars * 4):
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body.text), text="agent message too long")
    event, taken = await request.app[CONVERSATIONS].write_as_agent(sender, body.text, body.agent)
    return web.json_response({"event": event, "took_over": taken is not None})


@routes.post("/api/conversations/{sender}/resume", ok=Resumed, errors=(409, 503))
async def give_back(request: web.Request) -> web.Response:
    """Give the conversation back to the bot"""
    sender = conversation_id(request)
    try:
        event = await request.app[CONVERSATIONS].give_back(sender)
    except NotWithAgent as e:
        raise web.HTTPConflict(text=str(e)) from None
    return web.json_response({"event": event})
