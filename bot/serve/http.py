"""What every route shares: JSON errors (never a traceback), request bodies checked against a
model, CORS for the origins in endpoints.yml, rate limits, the admin token, request metrics.

Handlers raise aiohttp's HTTP exceptions with a plain message, or the library's typed errors;
`errors_middleware` alone turns both into `{"error": message}` with the status of `status_of`
(a route with another error shape gives `error_response` its own `respond`). An error met once a
stream's headers are out is written into the stream by `write_stream_error`, with the same
status and message in the stream's own format."""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import time
from collections import defaultdict, deque
from itertools import accumulate

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel, ValidationError

from bot.conversations.migrations import MigrationError
from bot.conversations.store import ConversationBusy, StoreUnavailable
from bot.engine.protocol import EngineBusy, EngineClosed, EngineError, PromptTooLong
from bot.engine.remote import ModelServerUnavailable
from bot.errors import BaseModelUnavailable, BotError, InvalidFiles, RenderError
from bot.models import UnknownModel
from bot.serve.throttle import ADMIN_FAILURES

log = logging.getLogger("bot.serve")

# The typed errors a request can meet -> HTTP status; the first entry the error is an instance of
# wins, so a subclass comes before its base. Faults of the request answer 4xx, faults of the
# server's own making (its store, its engine, the model server it relies on) 5xx. Any other
# error is a 500: a typed one with its message, anything else with no details (it is logged).
# tests/test_http_errors.py walks the table.
STATUS_OF: dict[type[BotError], int] = {
    # the request's
    PromptTooLong: 413,  # the prompt and the reply's room don't fit in the model's context
    RenderError: 413,  # the conversation doesn't fit (RenderCancelled too: its client has gone)
    UnknownModel: 400,  # these three: an admin's reload found the active model unusable; the one in service stays
    BaseModelUnavailable: 400,
    InvalidFiles: 400,
    # the server's own
    ConversationBusy: 503,  # the conversation's previous message is still being answered
    StoreUnavailable: 503,
    EngineBusy: 503,  # the engine's queue is full
    EngineClosed: 503,  # the server is stopping, or a reload retired the engine
    ModelServerUnavailable: 502,  # the remote model server failed
    EngineError: 500,  # generation failed
    MigrationError: 500,
}


def public_message(error: Exception, doing: str) -> str:
    """What a client may be told about an error: a typed error's message, else nothing (logged)."""
    if isinstance(error, BotError):
        return str(error)
    log.error("error while %s", doing, exc_info=error)
    return "internal error; the server log has the details"


def json_error(status: int, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


JSON_DEPTH = web.AppKey("json_depth", int)  # serve.max_json_depth; the body size limit is the app's client_max_size

# a string, or the rest of the text after an unclosed quote: never backtracks
_STRING = re.compile(r'"[^"\\]*(?:\\[\s\S]?[^"\\]*)*"?')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in a JSON text, found without decoding it (strings
    dropped, then a running count of brackets), so a hostile body never reaches the recursive
    decoder. Linear in the text, with every step done by C code."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


async def read_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    """The request's JSON body as `model`: 413 over the app's client_max_size (serve.max_body_bytes),
    400 when it is not JSON, nests deeper than serve.max_json_depth, or does not match `model`."""
    try:
        raw = await request.read()  # raises 413 past client_max_size
    except HttpProcessingError as e:  # broken framing of the body (chunk sizes, length)
        first_line = (e.message or "bad framing").splitlines()[0]
        raise web.HTTPBadRequest(text=f"request body is malformed: {first_line}") from None
    except ConnectionError:  # the client left before its body was complete: nobody to answer, nothing to log
        raise web.HTTPBadRequest(text="request body is incomplete: the connection closed") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise web.HTTPBadRequest(text=f"request body is not UTF-8: {e.reason} at byte {e.start}") from None
    limit = request.app[JSON_DEPTH]
    if (depth := nesting_depth(text)) > limit:
        raise web.HTTPBadRequest(
            text=f"request body is nested too deeply: {depth:,} levels of arrays or objects, "
            f"at most {limit} are accepted"
        )
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        raise web.HTTPBadRequest(text=f"request body is not valid JSON: {e}") from None
    try:
        return model.model_validate(parsed)
    except ValidationError as e:
        problems = [f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in e.errors()]
        raise web.HTTPBadRequest(text="invalid request: " + "; ".join(problems)) from None


class BadRequestLog(logging.LoggerAdapter):
    """aiohttp's server logger (the `logger` of its request handler, see create_app's
    handler_args) with one change: a request that is not valid HTTP (oversized request line or
    header, bad framing or chunking), which aiohttp answers 400 itself, is logged as one line
    with no traceback. Every other error keeps its traceback: that one is a bug."""

    def __init__(self, logger: logging.Logger | None = None):
        super().__init__(logger or logging.getLogger("aiohttp.server"), {})

    def _one_line(self, level: int, msg, args, kwargs) -> bool:
        error = kwargs.get("exc_info")
        if not isinstance(error, HttpProcessingError):
            return False
        remote = args[0] if args else "?"
        # what went wrong, without what was sent (aiohttp quotes the offending bytes after a colon or in quotes)
        first = next(iter(str(error.message or "").strip().splitlines()), "")
        what = re.split(r"[:'\"]", first, maxsplit=1)[0].strip()[:100] or "malformed"
        # 400: aiohttp's status for them all
        self.log(level, "bad HTTP request from %s answered 400 (%s): %s", remote, type(error).__name__, what)
        return True

    def exception(self, msg, *args, **kwargs):
        if not self._one_line(logging.WARNING, msg, args, kwargs):
            super().exception(msg, *args, **kwargs)

    def debug(self, msg, *args, **kwargs):
        if not self._one_line(logging.DEBUG, msg, args, kwargs):
            super().debug(msg, *args, **kwargs)


class RateLimiter:
    """At most `limit` hits per key in any 60-second window. Keys with no recent hit are swept
    out now and then, so memory stays bounded by the keys active in the last window."""

    SWEEP_EVERY = 1000

    def __init__(self, limit: int, window_s: float = 60.0):
        self.limit, self.window = limit, window_s
        self._hits: dict[str, deque[float]] = defaultdict(deque)
        self._calls = 0

    def _sweep(self, now: float) -> None:
        oldest_kept = now - self.window
        recent = {k: hits for k, hits in self._hits.items() if hits and hits[-1] > oldest_kept}
        self._hits = defaultdict(deque, recent)

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        self._calls += 1
        if self._calls % self.SWEEP_EVERY == 0:
            self._sweep(now)
        hits = self._hits[key]
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            return False
        hits.append(now)
        return True

    def check(self, key: str, what: str) -> None:
        if not self.allow(key):
            raise web.HTTPTooManyRequests(
                text=f"too many requests from this {what}: at most {self.limit} a minute",
                headers={"Retry-After": str(int(self.window))},
            )


def check_admin(request: web.Request, token: str | None) -> None:
    """Admin routes need `Authorization: Bearer <BOT_ADMIN_TOKEN>`; with no token set they are closed.
    Repeated wrong tokens from one client address make it wait (429), see bot/serve/throttle.py."""
    if not token:
        raise web.HTTPForbidden(text="admin routes are closed: set BOT_ADMIN_TOKEN on the server")
    failures, address = request.app[ADMIN_FAILURES], request.remote or "?"
    if wait := failures.wait(address):
        raise _admin_wait(wait)
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(errors="surrogateescape"), f"Bearer {token}".encode()):
        if wait := failures.failed(address):
            log.warning(
                "wrong admin token from %s (%d in a row): it waits %.0f s", address, failures.count(address), wait
            )
        raise web.HTTPUnauthorized(text="admin token missing or wrong (Authorization: Bearer ...)")
    failures.succeeded(address)


def _admin_wait(seconds: float) -> web.HTTPTooManyRequests:
    retry_after = str(math.ceil(seconds))
    return web.HTTPTooManyRequests(
        text=f"too many wrong admin tokens from this address: try again in {retry_after} s",
        headers={"Retry-After": retry_after},
    )


def status_of(error: Exception) -> int:
    """A typed error's status (STATUS_OF), else 500."""
    return next((s for kind, s in STATUS_OF.items() if isinstance(error, kind)), 500)


def _answer_to(request: web.Request, error: Exception) -> tuple[int, str, dict | None]:
    """(status, message, headers) for an error a handler raised: an HTTP exception's status and
    text, a typed error's status and message, anything else a 500 with no details (logged). A
    non-error HTTP exception (a redirect) is raised again."""
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error
        headers = {k: v for k, v in error.headers.items() if k.lower() not in ("content-type", "content-length")}
        default_text = error.text is None or error.text.startswith(f"{error.status}:")  # aiohttp's default text
        message = error.reason if default_text else error.text
        return error.status, message, headers
    return status_of(error), public_message(error, f"handling {request.method} {request.path}"), None


def error_response(request: web.Request, error: Exception, respond=None) -> web.StreamResponse:
    """The answer to an error a handler raised, built by `respond(status, message, headers)`
    (`json_error` by default)."""
    return (respond or json_error)(*_answer_to(request, error))


async def write_stream_error(request: web.Request, response: web.StreamResponse, error: Exception, frame) -> None:
    """An error met once a stream's headers are out (its status can no longer change), written
    into the stream as `frame(status, message)` gives it, in the stream's format: the status and
    message `errors_middleware` would have answered with, never a traceback."""
    status, message, _ = _answer_to(request, error)
    await response.write(frame(status, message))


ARRIVED = web.RequestKey("arrived", float)  # _now() when the request came in (set by metrics_middleware)
_FIRST_TOKEN_SEEN = web.RequestKey("first_token_seen", bool)


def first_token(request: web.Request, metrics) -> None:
    """Time to first token (`bot_time_to_first_token_seconds`), measured here and only here: from
    when the request arrived, so the wait a client sees is all in it (reading its body, the
    checks, borrowing the model, rendering the prompt, the engine's queue), to its reply's first
    text. Every route that generates calls it as that text comes; once per request."""
    if request.get(_FIRST_TOKEN_SEEN):
        return
    request[_FIRST_TOKEN_SEEN] = True
    metrics.first_token.observe(_now() - request[ARRIVED])


def _now() -> float:
    """The clock of time to first token (a test sets it)."""
    return time.monotonic()


def errors_middleware():
    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except Exception as e:
            return error_response(request, e)

    return errors


def cors_middleware(allowed_origins: list[str]):
    """Answers CORS preflights; `cors_headers` marks the responses themselves."""
    allowed = set(allowed_origins)

    @web.middleware
    async def cors(request: web.Request, handler):
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin and "Access-Control-Request-Method" in request.headers:
            if origin not in allowed:
                return json_error(
                    403, f"origin {origin} is not allowed: add it to cors.allow_origins in endpoints.yml"
                )
            response = web.Response(status=204)
            response.headers.update(
                {
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": "Content-Type, Authorization",
                    "Access-Control-Max-Age": "600",
                }
            )
            return response
        return await handler(request)

    return cors


def cors_headers(allowed_origins: list[str]):
    """An `on_response_prepare` handler: `Access-Control-Allow-Origin` for an allowed origin on
    every response, set as its headers go out, so streamed replies (whose headers are sent
    before their handler returns) carry it too."""
    allowed = set(allowed_origins)

    async def allow_origin(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin and origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    return allow_origin


def metrics_middleware(metrics):
    @web.middleware
    async def measure(request: web.Request, handler):
        request[ARRIVED] = started = _now()
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            metrics.requests.labels(route, str(status)).inc()
            metrics.latency.labels(route).observe(_now() - started)

    return measure
