"""An OpenAI-compatible chat endpoint, so any OpenAI client can talk to the bot. Stateless: the
conversation comes with each request. The bot's own persona is always the system prompt (a
client's system messages are ignored), and the reply goes through the same reply policy (bot.policy.reply) as the
widget's, actions included."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import aclosing
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bot.conversations.events import GUARD, MODEL_UNAVAILABLE, user_message
from bot.conversations.state import ConversationState
from bot.engine.remote import RemoteEngine
from bot.policy.reply import Piece, Status
from bot.serve.bodies import read_body
from bot.serve.errors import write_stream_error
from bot.serve.keys import BRAND_APPS, CLIENT_LIMIT, CONVERSATIONS, HOLDER, METRICS, SETTINGS
from bot.serve.openapi import RouteTable, ServerSentEvent
from bot.serve.routes.common import SHOWN_TO_CUSTOMER, sse_headers
from bot.serve.routes.completions import openai_stream_error
from bot.serve.timing import first_token

routes = RouteTable("openai")


class ContentPart(BaseModel):
    """A part of a message's content: only `text` parts are read."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class CompletionRequest(BaseModel):
    """At most serve.max_messages messages, each at most serve.max_message_chars characters of text (413 beyond)."""

    model_config = ConfigDict(extra="allow")
    model: str = "bot"
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    user: str | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop"]


class ChatCompletion(BaseModel):
    """OpenAI's chat completion object (without `stream`)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]


class ModelEntry(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str | None = None  # with a remote model server: the model name it serves this under


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelEntry]


class CompletionChunkEvent(ServerSentEvent):
    """With `stream: true`: each event's data is a `chat.completion.chunk` object as JSON, or an
    `{"error": {...}}` object, and the last one is `[DONE]`."""

    event: Literal["message"] = Field(
        "message", description="No `event:` line is sent: an EventSource's default name."
    )


def _text(content: str | list[ContentPart] | None) -> str:
    if isinstance(content, list):
        return "".join(part.text or "" for part in content if part.type == "text")
    return content or ""


def check_size(body: CompletionRequest, max_messages: int, max_chars: int) -> None:
    """413 when the request carries more than `max_messages` messages, or a message whose text
    is longer than `max_chars`: the work a request can ask for is bounded before any of it starts."""
    if len(body.messages) > max_messages:
        raise web.HTTPRequestEntityTooLarge(
            max_size=max_messages,
            actual_size=len(body.messages),
            text=f"{len(body.messages):,} messages; at most {max_messages:,} are accepted (serve.max_messages)",
        )
    for i, message in enumerate(body.messages):
        if len(text := _text(message.content)) > max_chars:
            raise web.HTTPRequestEntityTooLarge(
                max_size=max_chars,
                actual_size=len(text),
                text=f"messages[{i}] is {len(text):,} characters; "
                f"at most {max_chars:,} are accepted (serve.max_message_chars)",
            )


def _context(body: CompletionRequest, system_prompt: str, limit: int) -> list[dict]:
    messages = [{"role": "system", "content": system_prompt}]
    for m in body.messages:
        if m.role in ("user", "assistant") and (text := _text(m.content)):
            messages.append({"role": m.role, "content": text})
    if messages[-1]["role"] != "user":
        raise web.HTTPBadRequest(text="the last message must be from the user")
    if len(messages[-1]["content"]) > limit:
        raise web.HTTPRequestEntityTooLarge(
            max_size=limit,
            actual_size=len(messages[-1]["content"]),
            text=f"the last message is longer than {limit:,} characters",
        )
    return messages


def _chunk(completion_id: str, created: int, model: str, delta: dict, finish: str | None = None) -> bytes:
    chunk = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()


@routes.post(
    "/v1/chat/completions", body=CompletionRequest, ok=ChatCompletion, events=CompletionChunkEvent, errors=(429, 503)
)
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI's chat completions: the conversation in, the bot's reply out. On a server with
    several brands, `model` may name one (as vLLM picks a LoRA adapter by it); any other value
    gets this route's own bot."""
    request.app[CLIENT_LIMIT].check(request.remote or "?", "client address")
    body = await read_body(request, CompletionRequest)
    app = request.app.get(BRAND_APPS, {}).get(body.model, request.app)
    serve = app[SETTINGS].build.serve
    check_size(body, serve.max_messages, serve.max_message_chars)
    async with app[HOLDER].borrow() as model:  # one model for the whole reply, even across a reload
        messages = _context(body, model.profile.system_prompt, serve.max_message_chars)
        sender = body.user or f"openai-{uuid.uuid4().hex[:12]}"
        latest = user_message(messages[-1]["content"])
        answer = app[CONVERSATIONS].policy.answer(
            model, messages, sender=sender, state=ConversationState(), latest=latest
        )
        completion_id, created, name = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model.model_id or "base"

        if not body.stream:
            texts = []
            async with aclosing(answer) as items:
                async for item in items:
                    if isinstance(item, dict) and item["type"] in SHOWN_TO_CUSTOMER and item.get("text"):
                        texts.append(item["text"])  # an action's buttons alone have no text to add
            content = "\n\n".join(texts)
            return web.json_response(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": name,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                    ],
                }
            )

        response = web.StreamResponse(headers=sse_headers())
        await response.prepare(request)
        await response.write(_chunk(completion_id, created, name, {"role": "assistant", "content": ""}))
        in_message, written = False, False  # in_message: the current message is going out piece by piece

        async def write(text: str) -> None:
            nonlocal written
            await response.write(_chunk(completion_id, created, name, {"content": ("\n\n" if written else "") + text}))
            written = True

        try:
            async with aclosing(answer) as items:
                async for item in items:
                    if isinstance(item, Status):
                        continue  # OpenAI's stream has no place for it
                    if isinstance(item, Piece):
                        first_token(request, app[METRICS])
                        if in_message:
                            await response.write(_chunk(completion_id, created, name, {"content": item.text}))
                        else:
                            await write(item.text)
                            in_message = True
                    elif item["type"] in SHOWN_TO_CUSTOMER:
                        # A message that was not generated token by token (an action's, a handoff), or the
                        # refusal after the leak guard stopped a streamed one (what went out before was checked),
                        # or the apology after a model server broke off a streamed one.
                        if (not in_message or item.get("by") in (GUARD, MODEL_UNAVAILABLE)) and item.get("text"):
                            await write(item["text"])
                        in_message = False
        except ConnectionError:
            return response
        except Exception as e:
            await write_stream_error(request, response, e, openai_stream_error)
        await response.write(_chunk(completion_id, created, name, {}, "stop"))
        await response.write(b"data: [DONE]\n\n")
        return response


@routes.get("/v1/models", ok=ModelList)
async def list_models(request: web.Request) -> web.Response:
    """OpenAI's model list: the model in service (on a server with several brands, then each
    brand by name, which `model` in a chat completion may name)"""
    model = request.app[HOLDER].current
    entries = [_model_entry(model.model_id or "base", model)]
    for name, app in request.app.get(BRAND_APPS, {}).items():
        entries.append(_model_entry(name, app[HOLDER].current))
    return web.json_response({"object": "list", "data": entries})


def _model_entry(name: str, model) -> dict:
    entry = {"id": name, "object": "model", "created": int(model.loaded_at), "owned_by": "bot"}
    if isinstance(model.engine, RemoteEngine):  # the model server's name for it
        entry["root"] = model.engine.model
    return entry
