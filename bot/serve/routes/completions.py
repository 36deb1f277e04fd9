"""`POST /v1/completions`: the model itself, in vLLM's (OpenAI's legacy) wire format, so one
`bot serve` can be the model server of other `bot serve` processes, or of any OpenAI client.

The prompt is continued as given: text (tokenized with the model's tokenizer, no special tokens
added) or token ids, with no chat template, no persona, no actions and no leak guard; the
caller renders it (the remote backend sends ids rendered by bot/rendering.py, as in training).
Generation is greedy, on the server's own engine, through the model holder, so a reload in the
middle of a request is safe.

Errors here have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, which the
OpenAI and vLLM clients read, instead of the `{"error": "..."}` of the other routes.

With BOT_MODEL_SERVER_KEY set on the server, a request needs `Authorization: Bearer <key>`
(401 otherwise), and a request with the key is not rate limited: it comes from a front-end,
which sends many customers' requests from one address; the engine's queue (serve.max_queue,
then 503) is what bounds them. A request without the key, or on a server with no key set,
counts against serve.rate_per_client like any other client's.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
import uuid
from contextlib import aclosing
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from bot.engine.protocol import LENGTH, Finished
from bot.engine.response_model import ResponseModel
from bot.engine.stop_strings import StopStrings
from bot.serve.bodies import read_body
from bot.serve.errors import error_response, write_stream_error
from bot.serve.keys import CLIENT_LIMIT, HOLDER, METRICS
from bot.serve.openapi import RouteTable, ServerSentEvent
from bot.serve.routes.common import sse_headers
from bot.serve.timing import first_token

KEY_VARIABLE = "BOT_MODEL_SERVER_KEY"
MODEL_SERVER_KEY = web.AppKey("model_server_key", str)  # "" when the route is open
MAX_STOP_STRINGS = 4  # as OpenAI
routes = RouteTable("openai")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = Field(False, description="Send a last chunk with `usage` and no choices before `[DONE]`.")


Prompt = str | list[int] | list[str] | list[list[int]]


class TextCompletionRequest(BaseModel):
    """OpenAI's completions request. Only greedy decoding of one choice is supported: the
    sampling and scoring fields are accepted at their defaults only (400 otherwise)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(
        description="The served model's id, as `GET /v1/models` lists it (`base` when no model is trained)."
    )
    prompt: Prompt = Field(
        description="Text (tokenized with no special tokens added) or token ids, continued as given: "
        "no chat template is applied. A list of one text or one list of ids is the same; "
        "more than one prompt is a 400."
    )
    max_tokens: int | None = Field(
        16,
        ge=1,
        description="Most tokens to generate; null: as many as the context leaves. "
        "Prompt + max_tokens <= model.max_length.",
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(
        None,
        description=f"Up to {MAX_STOP_STRINGS} strings: generation ends at the first to appear, "
        "and the text returned excludes it.",
    )
    temperature: float | None = Field(
        None, description="0 or absent: decoding is greedy, no other value is supported."
    )
    top_p: float | None = Field(None, description="1 or absent.")
    n: int | None = Field(None, description="1 or absent.")
    best_of: int | None = Field(None, description="1 or absent.")
    echo: bool | None = Field(None, description="false or absent.")
    logprobs: int | None = Field(None, description="Absent: log-probabilities are not returned.")
    presence_penalty: float | None = Field(None, description="0 or absent.")
    frequency_penalty: float | None = Field(None, description="0 or absent.")
    logit_bias: dict[str, float] | None = Field(None, description="Empty or absent.")
    suffix: str | None = Field(None, description="Absent.")
    seed: int | None = Field(None, description="Accepted and ignored: greedy decoding needs no seed.")
    user: str | None = Field(None, description="Accepted and ignored.")


# field -> the values that mean "what this server does anyway"
DEFAULTS: dict[str, tuple] = {
    "temperature": (None, 0),
    "top_p": (None, 1),
    "n": (None, 1),
    "best_of": (None, 1),
    "echo": (None, False),
    "logprobs": (None,),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
    "suffix": (None,),
}


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = Field(
        description="stop: end of turn or a stop string; length: max_tokens; null in a chunk before the last."
    )


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TextCompletion(BaseModel):
    """OpenAI's completion object; also each chunk of a stream (with the piece of text)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: CompletionUsage | None = None


class TextCompletionEvent(ServerSentEvent):
    """With `stream: true`: each event's data is a `text_completion` chunk as JSON (the last with
    its finish_reason; with stream_options.include_usage, then one with no choices and the usage),
    or an `{"error": {...}}` object; the last event is `[DONE]`."""

    event: Literal["message"] = Field(
        "message", description="No `event:` line is sent: an EventSource's default name."
    )


class ErrorInfo(BaseModel):
    message: str = Field(description="What is wrong, and where.")
    type: str = Field(
        description="The kind of error, as the OpenAI client names it: BadRequestError, NotFoundError..."
    )
    param: str | None = None
    code: int = Field(description="The HTTP status.")


class OpenAIErrorBody(BaseModel):
    """An error answer of an OpenAI route, in OpenAI's shape."""

    error: ErrorInfo


ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    429: "RateLimitError",
}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status) or ("InternalServerError" if status >= 500 else "BadRequestError")


def openai_error_body(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": error_type(status), "param": None, "code": status}}


def openai_stream_error(status: int, message: str) -> bytes:
    """An error in an OpenAI stream whose headers are out: a data line in OpenAI's error shape."""
    return _data(openai_error_body(status, message))


def openai_error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response(openai_error_body(status, message), status=status, headers=headers)


def _check_key(request: web.Request) -> None:
    """With a key set, only front-ends that send it get in, and they are not rate limited;
    everyone else (a wrong key, or no key set) counts against serve.rate_per_client."""
    key = request.app[MODEL_SERVER_KEY]
    given = request.headers.get("Authorization", "")
    trusted = bool(key) and hmac.compare_digest(given.encode(errors="surrogateescape"), f"Bearer {key}".encode())
    if not trusted:
        request.app[CLIENT_LIMIT].check(request.remote or "?", "client address")
    if key and not trusted:
        raise web.HTTPUnauthorized(
            text=f"this route needs the model server's key: Authorization: Bearer <{KEY_VARIABLE}>"
        )


def _unsupported(body: TextCompletionRequest) -> list[str]:
    """Each option asked for with a value this server does not support, as `name=value`."""
    given = {name: getattr(body, name) for name in DEFAULTS}
    return [f"{name}={json.dumps(value)}" for name, value in given.items() if value not in DEFAULTS[name]]


def _one_prompt(prompt: Prompt) -> str | list[int]:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) > 1:
            raise web.HTTPBadRequest(
                text=f"prompt: {len(prompt)} prompts given; this server takes one prompt per request"
            )
        return prompt[0]
    return prompt


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise web.HTTPBadRequest(text=f"stop: {len(stops)} strings given; at most {MAX_STOP_STRINGS} are accepted")
    if any(not s for s in stops):
        raise web.HTTPBadRequest(text="stop: an empty string would stop before the first token")
    return stops


async def _prompt_ids(model: ResponseModel, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        ids = (await asyncio.to_thread(model.tokenizer, prompt, add_special_tokens=False))["input_ids"]
    else:
        ids = prompt
        vocabulary = len(model.tokenizer)
        if outside := [t for t in ids if not 0 <= t < vocabulary]:
            raise web.HTTPBadRequest(
                text=f"prompt: token id {outside[0]} is outside the vocabulary (0..{vocabulary - 1})"
            )
    if not ids:
        raise web.HTTPBadRequest(text="prompt: the prompt is empty")
    return list(ids)


def _max_tokens(requested: int | None, prompt_tokens: int, max_length: int) -> int:
    room = max_length - prompt_tokens
    if requested is None:
        if room < 1:
            raise web.HTTPBadRequest(
                text=f"prompt: {prompt_tokens:,} tokens leave no room in the model's context of {max_length:,} tokens"
            )
        return room
    if requested > room:
        raise web.HTTPBadRequest(
            text=f"prompt ({prompt_tokens:,} tokens) + max_tokens ({requested:,}) is {prompt_tokens + requested:,}, "
            f"more than the model's context of {max_length:,} tokens (model.max_length)"
        )
    return requested


class _Generation:
    """One prompt continued on the engine: the pieces of text to send, with stop strings cut out;
    then `finish_reason` and the token counts."""

    def __init__(
        self, request: web.Request, model: ResponseModel, prompt_ids: list[int], max_tokens: int, stops: list[str]
    ):
        self.request, self.model, self.prompt_ids, self.max_tokens = request, model, prompt_ids, max_tokens
        self.stops = StopStrings(stops)
        self.finish_reason = "stop"
        self.completion_tokens = 0

    async def pieces(self):
        async with aclosing(self.model.engine.stream(self.prompt_ids, self.max_tokens)) as items:
            async for item in items:
                if isinstance(item, Finished):
                    self.request.app[METRICS].generated(item)
                    self.completion_tokens = item.tokens
                    self.finish_reason = "length" if item.finish_reason == LENGTH else "stop"
                    if rest := self.stops.flush():
                        yield rest
                    return
                first_token(self.request, self.request.app[METRICS])
                text = self.stops.feed(item)
                if text:
                    yield text
                if self.stops.matched is not None:
                    break  # leaving closes the engine's stream: the generation stops here
        # A stop string ended it: the tokens generated up to there, counted from their text.
        self.completion_tokens = len(self.model.tokenizer(self.stops.seen, add_special_tokens=False)["input_ids"])
        self.request.app[METRICS].tokens.inc(self.completion_tokens)

    def usage(self) -> dict:
        prompt = len(self.prompt_ids)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt + self.completion_tokens,
        }


def _completion(completion_id: str, created: int, name: str, choices: list[dict], usage: dict | None = None) -> dict:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": name,
        "choices": choices,
        "usage": usage,
    }


def _data(payload) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


@routes.post(
    "/v1/completions",
    body=TextCompletionRequest,
    ok=TextCompletion,
    events=TextCompletionEvent,
    errors=(401, 404, 429, 503),
    error_body=OpenAIErrorBody,
)
async def completions(request: web.Request) -> web.StreamResponse:
    """OpenAI's (and vLLM's) completions: a prompt, as text or token ids, continued by the model"""
    try:
        return await _completions(request)
    except Exception as e:  # in OpenAI's error shape, as errors_middleware decides the status
        return error_response(request, e, openai_error)


async def _completions(request: web.Request) -> web.StreamResponse:
    _check_key(request)
    body = await read_body(request, TextCompletionRequest)
    if unsupported := _unsupported(body):
        options = ", ".join(unsupported)
        raise web.HTTPBadRequest(
            text=f"not supported: {options}; this server decodes greedily, one choice, without log-probabilities"
        )
    prompt, stops = _one_prompt(body.prompt), _stops(body.stop)
    async with request.app[HOLDER].borrow() as model:  # one model for the whole request, even across a reload
        name = model.model_id or "base"
        if body.model != name:
            raise web.HTTPNotFound(text=f"The model `{body.model}` does not exist. This server serves `{name}`.")
        prompt_ids = await _prompt_ids(model, prompt)
        max_tokens = _max_tokens(body.max_tokens, len(prompt_ids), model.max_length)
        generation = _Generation(request, model, prompt_ids, max_tokens, stops)
        completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        if not body.stream:
            async with aclosing(generation.pieces()) as pieces:
                text = "".join([piece async for piece in pieces])
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": generation.finish_reason}
            return web.json_response(_completion(completion_id, created, name, [choice], generation.usage()))

        def chunk(text: str, finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
            return _data(_completion(completion_id, created, name, [choice]))

        async with aclosing(generation.pieces()) as pieces:
            # The first piece before the headers: a request the engine refuses (queue full,
            # engine closed) gets its status, as a non-streamed one does.
            first = await anext(pieces, None)
            response = web.StreamResponse(headers=sse_headers())
            await response.prepare(request)
            try:
                if first is not None:
                    await response.write(chunk(first))
                    async for piece in pieces:
                        await response.write(chunk(piece))
                await response.write(chunk("", generation.finish_reason))
                if body.stream_options and body.stream_options.include_usage:
                    await response.write(_data(_completion(completion_id, created, name, [], generation.usage())))
            except ConnectionError:  # the client left: leaving closes the generation
                return response
            except Exception as e:
                await write_stream_error(request, response, e, openai_stream_error)
        await response.write(b"data: [DONE]\n\n")
        return response


def read_server_key(app: web.Application) -> None:
    """BOT_MODEL_SERVER_KEY is read when the app is made, as the admin token is."""
    app[MODEL_SERVER_KEY] = os.environ.get(KEY_VARIABLE) or ""
